"""Pinned pod namespaces on the real kernel.

Proves what rktlet.oci.namespaces relies on: unshare in a throw-away thread
makes namespaces without moving the daemon (this test process) out of the
host's; sysctls written from that thread land in the new namespaces and not
in the host's; the bind mounts keep the namespaces after the thread ends,
and other programs (nsenter) can join them by path.  Every mount made here is
unmounted and every file removed, pass or fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci.namespaces import (
    KINDS,
    create_pinned,
    is_pinned,
    read_net_dev,
    remove_pinned,
    run_in_namespace,
)

pytestmark = pytest.mark.root

PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _own_namespaces() -> dict[str, str]:
    """This process's and this thread's namespaces, as the kernel names them."""
    return {
        f"{where}/{kind}": os.readlink(f"/proc/{where}/ns/{kind}")
        for where in ("self", "thread-self")
        for kind in KINDS
    }


def _mount_points_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _nsenter(*args: str) -> str:
    result = subprocess.run(["nsenter", *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def nsdir(tmp_path):
    """A directory for namespace files; whatever is mounted there is
    detached and removed afterwards, even if the code under test failed."""
    directory = tmp_path / "ns"
    directory.mkdir()
    try:
        yield directory
    finally:
        for mount_point in reversed(_mount_points_under(directory)):
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
        for entry in directory.iterdir():
            entry.unlink()
        assert _mount_points_under(directory) == []


def _paths(directory: Path, kinds=KINDS) -> dict[str, str]:
    return {kind: str(directory / kind) for kind in kinds}


def test_create_pinned_net_ipc_uts(nsdir):
    paths = _paths(nsdir)
    host_hostname = os.uname().nodename
    host_port_start = _read(PORT_START)
    host_shmmax = _read("/proc/sys/kernel/shmmax")
    host_queues_max = _read("/proc/sys/fs/mqueue/queues_max")
    host_domainname = _read("/proc/sys/kernel/domainname")
    before = _own_namespaces()
    shmmax = "268435456" if host_shmmax != "268435456" else "268435457"

    create_pinned(
        paths,
        hostname="pod-host-1",
        sysctls={
            "net.ipv4.ip_unprivileged_port_start": "80",
            "kernel.shmmax": shmmax,
            "fs/mqueue/queues_max": "123",
            "kernel.domainname": "pods.test",
        },
    )

    for kind in KINDS:
        assert is_pinned(paths[kind]), kind
        # The file is the namespace: nsenter joins it and sees its inode.
        inode = os.stat(paths[kind]).st_ino
        assert _nsenter(f"--{kind}={paths[kind]}", "readlink", f"/proc/self/ns/{kind}") == f"{kind}:[{inode}]"
        # ... and it is a new one, not the host's.
        assert before[f"self/{kind}"] != f"{kind}:[{inode}]"

    assert _nsenter(f"--net={paths['net']}", f"--uts={paths['uts']}", "hostname") == "pod-host-1"
    assert _nsenter(f"--uts={paths['uts']}", "cat", "/proc/sys/kernel/domainname") == "pods.test"
    assert _nsenter(f"--net={paths['net']}", "cat", PORT_START) == "80"
    assert _nsenter(f"--ipc={paths['ipc']}", "cat", "/proc/sys/kernel/shmmax") == shmmax
    assert _nsenter(f"--ipc={paths['ipc']}", "cat", "/proc/sys/fs/mqueue/queues_max") == "123"

    # The host (and this process, its threads included) did not move or change.
    assert _own_namespaces() == before
    assert os.uname().nodename == host_hostname
    assert _read(PORT_START) == host_port_start
    assert _read("/proc/sys/kernel/shmmax") == host_shmmax
    assert _read("/proc/sys/fs/mqueue/queues_max") == host_queues_max
    assert _read("/proc/sys/kernel/domainname") == host_domainname

    remove_pinned(paths.values())
    for path in paths.values():
        assert not is_pinned(path)
        assert not os.path.exists(path)
    assert _mount_points_under(nsdir) == []
    remove_pinned(paths.values())  # idempotent
    remove_pinned([str(nsdir / "never-existed")])


def test_create_pinned_from_worker_threads_concurrently(nsdir):
    """What the daemon does: several pods at once, from a thread pool."""
    before = _own_namespaces()
    dirs = [nsdir / f"pod{i}" for i in range(4)]
    for d in dirs:
        d.mkdir()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda d: create_pinned(_paths(d), hostname=d.name), dirs))
        inodes = {os.stat(d / "net").st_ino for d in dirs}
        assert len(inodes) == 4
        for d in dirs:
            assert _nsenter(f"--uts={d / 'uts'}", "hostname") == d.name
        assert _own_namespaces() == before
    finally:
        for d in dirs:
            remove_pinned(_paths(d).values())
            d.rmdir()


def test_only_the_kinds_asked(nsdir):
    paths = _paths(nsdir, ("net",))
    host_uts = os.readlink("/proc/self/ns/uts")
    create_pinned(paths, hostname="ignored-without-uts")
    try:
        assert is_pinned(paths["net"])
        assert sorted(os.listdir(nsdir)) == ["net"]
        assert os.uname().nodename != "ignored-without-uts"
        assert os.readlink("/proc/self/ns/uts") == host_uts
    finally:
        remove_pinned(paths.values())


@pytest.mark.parametrize(
    "kinds, sysctls, message",
    [
        (KINDS, {"kernel.panic": "0"}, "kernel.panic is not namespaced"),
        (KINDS, {"net.core.rmem_max": "1"}, "net.core.rmem_max is not namespaced"),
        (("ipc", "uts"), {"net.ipv4.ip_unprivileged_port_start": "80"}, "host's network namespace"),
        (("net", "uts"), {"kernel.shmmax": "1"}, "host's IPC namespace"),
    ],
)
def test_refused_before_anything_is_created(nsdir, kinds, sysctls, message):
    host_panic = _read("/proc/sys/kernel/panic")
    with pytest.raises(InvalidArgument, match=message):
        create_pinned(_paths(nsdir, kinds), sysctls=sysctls)
    assert list(nsdir.iterdir()) == []
    assert _read("/proc/sys/kernel/panic") == host_panic


@pytest.mark.parametrize(
    "sysctls, message",
    [
        # Unknown: absent from the new namespace's /proc/sys/net.
        ({"net.ipv4.ip_forward": "1", "net.ipv4.no_such_thing": "1"}, "net.ipv4.no_such_thing: not found"),
        # A value the kernel refuses.
        ({"net.ipv4.ip_unprivileged_port_start": "not-a-number"}, "rejected by the kernel"),
    ],
)
def test_failure_in_the_middle_leaves_nothing(nsdir, sysctls, message):
    before = _own_namespaces()
    host_forward = _read("/proc/sys/net/ipv4/ip_forward")
    with pytest.raises(InvalidArgument, match=message):
        create_pinned(_paths(nsdir), hostname="h", sysctls=sysctls)
    assert list(nsdir.iterdir()) == []
    assert _mount_points_under(nsdir) == []
    assert _own_namespaces() == before
    assert _read("/proc/sys/net/ipv4/ip_forward") == host_forward


def test_existing_file_is_neither_taken_nor_removed(nsdir):
    paths = _paths(nsdir)
    Path(paths["uts"]).write_text("someone else's")
    with pytest.raises(RuntimeFailure, match=f"{paths['uts']}: File exists"):
        create_pinned(paths)
    assert sorted(os.listdir(nsdir)) == ["uts"]
    assert Path(paths["uts"]).read_text() == "someone else's"
    assert _mount_points_under(nsdir) == []


def test_is_pinned_false_for_plain_and_absent_files(nsdir):
    plain = nsdir / "plain"
    plain.write_text("")
    assert not is_pinned(str(plain))
    assert not is_pinned(str(nsdir / "absent"))


def test_read_net_dev_of_a_fresh_netns(nsdir):
    paths = _paths(nsdir, ("net",))
    create_pinned(paths)
    try:
        stats = read_net_dev(paths["net"])
        # Only the new namespace's loopback, not the host's interfaces.
        assert set(stats) == {"lo"}
        assert stats["lo"]["rx_packets"] == 0

        # Traffic on the pod's loopback shows in its counters (and proves
        # that sockets made in run_in_namespace live in the pod's netns).
        _nsenter(f"--net={paths['net']}", "ip", "link", "set", "lo", "up")

        def ping_loopback() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                rx.bind(("127.0.0.1", 0))
                rx.settimeout(5)
                tx.sendto(b"hello pod", rx.getsockname())
                return rx.recv(100)

        assert run_in_namespace(paths["net"], "net", ping_loopback) == b"hello pod"
        stats = read_net_dev(paths["net"])
        assert stats["lo"]["rx_packets"] >= 1
        assert stats["lo"]["tx_bytes"] >= len(b"hello pod")
    finally:
        remove_pinned(paths.values())


def test_run_in_namespace(nsdir):
    paths = _paths(nsdir)
    create_pinned(paths, hostname="inside")
    before = _own_namespaces()
    try:
        for kind in KINDS:
            seen = run_in_namespace(paths[kind], kind, lambda k=kind: os.readlink(f"/proc/thread-self/ns/{k}"))
            assert seen == f"{kind}:[{os.stat(paths[kind]).st_ino}]"
        assert run_in_namespace(paths["uts"], "uts", lambda: os.uname().nodename) == "inside"

        class Marker(Exception):
            pass

        error = Marker("from inside")

        def fail():
            raise error

        with pytest.raises(Marker) as info:
            run_in_namespace(paths["net"], "net", fail)
        assert info.value is error

        # The kernel checks the kind: a UTS file is not a network namespace.
        with pytest.raises(RuntimeFailure, match=f"{paths['uts']}: setns: Invalid argument"):
            run_in_namespace(paths["uts"], "net", lambda: None)
        with pytest.raises(RuntimeFailure, match="No such file"):
            run_in_namespace(str(nsdir / "absent"), "net", lambda: None)
        assert _own_namespaces() == before
    finally:
        remove_pinned(paths.values())


def test_empty_hostname_keeps_the_hosts_copy(nsdir):
    paths = _paths(nsdir, ("uts",))
    create_pinned(paths, hostname="")
    try:
        assert _nsenter(f"--uts={paths['uts']}", "hostname") == os.uname().nodename
    finally:
        remove_pinned(paths.values())
