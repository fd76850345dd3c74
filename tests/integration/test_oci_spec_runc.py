"""Specs from rktlet.oci.spec run under the real runc (1.1.5 here).

A busybox root file system (the test image's layer, unpacked with
rktlet.image.unpack) runs in the foreground with ``runc run`` for each case,
and what the container sees proves the spec: its user, capability sets,
seccomp filter (a blocked call fails, ordinary programs work), read-only
root, masked /proc paths, the clamped oom_score_adj, its cgroup and limits,
the pod's namespaces, files, mounts and devices.

Everything is put back, pass or fail: every container is ``runc delete -f``'d
from a runc state dir of our own (checked empty at the end), the test cgroup
parent is removed from every hierarchy, pinned namespaces are unmounted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rktlet.image.unpack import unpack_layer
from rktlet.oci import cgroups
from rktlet.oci.container_config import (
    ContainerConfig,
    Device,
    ImageDefaults,
    Mount,
    PodContext,
    Profile,
    ResolvedUser,
    Resources,
    Security,
)
from rktlet.oci.namespaces import create_pinned, remove_pinned
from rktlet.oci.spec import CAPABILITIES, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, HostInfo, build_spec
from rktlet.oci.users import resolve_user
from harness.images import busybox_layer
from harness.runc import test_runc

pytestmark = pytest.mark.root

RUNC = test_runc()
ROOT = ResolvedUser(uid=0, gid=0, additional_gids=())


def _mask(names) -> int:
    return sum(1 << CAPABILITIES.index(name) for name in names)


def _daemon_oom_score_adj() -> int:
    with open("/proc/self/oom_score_adj") as f:
        return int(f.read())


def _status_field(text: str, field: str) -> str:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{field} not in {text!r}")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> str:
    """busybox, unpacked once, plus a passwd/group naming user ``app``."""
    base = tmp_path_factory.mktemp("busybox")
    blob = base / "layer.tar.gz"
    blob.write_bytes(busybox_layer().blob)
    root = base / "rootfs"
    root.mkdir()
    unpack_layer(str(blob), str(root))
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nwheel:x:10:app\napp:x:1234:\n")
    return str(root)


class Runc:
    """Runs containers in the foreground under one runc state dir and one
    test cgroup parent; :meth:`cleanup` removes every trace."""

    def __init__(self, base: Path, rootfs: str) -> None:
        self.base = base
        self.rootfs = rootfs
        self.state = str(base / "runc-state")
        self.cgroup_parent = f"/rktlet-spec-test-{uuid.uuid4().hex[:8]}"
        self.ids: list[str] = []
        self.host = HostInfo.probe()

    def pod(self, **changes) -> PodContext:
        """A pod in the host's network and IPC namespaces with a PID and UTS
        namespace of the container's own (nothing pinned, no infra)."""
        context = PodContext(
            namespaces={}, host=frozenset({"net", "ipc"}), pid_mode="container", infra_pid=0,
            hostname="spec-test", files={}, shm="", cgroup_parent=self.cgroup_parent,
        )
        return replace(context, **changes)

    def spec(self, config: ContainerConfig, user: ResolvedUser = ROOT, pod: PodContext | None = None,
             image: ImageDefaults = ImageDefaults()) -> tuple[str, dict, list[str]]:
        container_id = f"spec-{uuid.uuid4().hex[:12]}"
        spec, notes = build_spec(container_id, config, image, pod or self.pod(), self.rootfs, user,
                                 _daemon_oom_score_adj(), self.host)
        return container_id, spec, notes

    def run_spec(self, container_id: str, spec: dict) -> subprocess.CompletedProcess:
        bundle = self.base / container_id
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec))
        self.ids.append(container_id)
        try:
            return subprocess.run(
                [RUNC, "--root", self.state, "run", "--bundle", str(bundle), container_id],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
            )
        finally:
            subprocess.run([RUNC, "--root", self.state, "delete", "-f", container_id], capture_output=True)

    def run(self, command: str, config: ContainerConfig | None = None, **kw) -> subprocess.CompletedProcess:
        """``sh -c command`` in a container made from *config*."""
        config = replace(config or ContainerConfig(name="t"), command=("sh", "-c", command))
        container_id, spec, _ = self.spec(config, **kw)
        return self.run_spec(container_id, spec)

    def ok(self, command: str, config: ContainerConfig | None = None, **kw) -> str:
        result = self.run(command, config, **kw)
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result.stdout

    def cleanup(self) -> None:
        for container_id in self.ids:
            subprocess.run([RUNC, "--root", self.state, "delete", "-f", container_id], capture_output=True)
        layout = self.host.cgroups
        roots = set(layout.v1.values()) | ({layout.unified} if layout.unified else set())
        cgroups.remove([os.path.join(root, self.cgroup_parent.lstrip("/")) for root in roots])
        leftover = [root for root in roots if os.path.exists(os.path.join(root, self.cgroup_parent.lstrip("/")))]
        assert leftover == [], leftover
        if os.path.isdir(self.state):
            listed = subprocess.run([RUNC, "--root", self.state, "list", "-q"], capture_output=True, text=True)
            assert listed.stdout.strip() == "", listed.stdout


@pytest.fixture
def runc(tmp_path, rootfs) -> Iterator[Runc]:
    r = Runc(tmp_path, rootfs)
    try:
        yield r
    finally:
        r.cleanup()


def sec(**kw) -> ContainerConfig:
    return ContainerConfig(name="t", security=Security(**kw))


# -- user ---------------------------------------------------------------------------------------


def test_user_from_the_image(runc, rootfs):
    user = resolve_user(rootfs, "app", Security(supplemental_groups=(4000,)))
    assert user == ResolvedUser(1234, 1234, (10, 4000), "app", "/home/app")
    out = runc.ok("id", user=user)
    assert out.startswith("uid=1234(app) gid=1234(app)"), out
    assert "10(wheel)" in out and "4000" in out
    assert runc.ok("id", user=ResolvedUser(4321, 77, ())).startswith("uid=4321 gid=77")


# -- capabilities -------------------------------------------------------------------------------


def test_default_capabilities(runc):
    status = runc.ok("cat /proc/self/status")
    expected = f"{_mask(DEFAULT_CAPABILITIES):016x}"
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert _status_field(status, field) == expected
    assert _status_field(status, "CapInh") == "0" * 16
    assert _status_field(status, "CapAmb") == "0" * 16


def test_privileged_has_every_capability_rktlet_has(runc):
    status = runc.ok("cat /proc/self/status", sec(privileged=True))
    own = {n for n in runc.host.bounding if n <= runc.host.cap_last_cap and n < len(CAPABILITIES)}
    assert int(_status_field(status, "CapEff"), 16) == sum(1 << n for n in own)
    assert _status_field(status, "Seccomp") == "0"


def test_drop_all(runc):
    status = runc.ok("cat /proc/self/status", sec(capabilities_drop=("ALL",)))
    assert _status_field(status, "CapEff") == "0" * 16
    assert _status_field(status, "CapBnd") == "0" * 16
    out = runc.run("touch /root/x", sec(capabilities_drop=("ALL",)), user=ResolvedUser(1000, 1000, ()))
    assert out.returncode != 0  # /root is 0700 and nothing overrides that


# -- seccomp ------------------------------------------------------------------------------------


def test_runtime_default_seccomp_blocks_mount_even_with_sys_admin(runc):
    # The same container without the filter can mount: CAP_SYS_ADMIN is there.
    unconfined = sec(capabilities_add=("SYS_ADMIN",), seccomp=Profile("unconfined"))
    assert "mounted" in runc.ok("mount -t tmpfs none /tmp && echo mounted", unconfined)
    confined = sec(capabilities_add=("SYS_ADMIN",), seccomp=Profile("runtime_default"))
    result = runc.run("mount -t tmpfs none /tmp; echo rc=$?", confined)
    assert result.returncode == 0, result.stderr
    assert "rc=1" in result.stdout
    assert "permission denied" in result.stderr.lower()  # EPERM from the filter


def test_runtime_default_seccomp_lets_ordinary_programs_work(runc):
    port = _free_port()
    script = (
        "set -e; echo ok; ls / >/dev/null; sleep 0.1; "
        "mkdir -p /tmp/www; echo hello-web > /tmp/www/index.html; "
        f"httpd -f -p 127.0.0.1:{port} -h /tmp/www & pid=$!; sleep 0.3; "
        f"wget -q -O - http://127.0.0.1:{port}/; "
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port} | head -1; "
        "kill $pid; wait $pid || true; "
        "grep Seccomp: /proc/self/status"
    )
    for config in (
        sec(seccomp=Profile("runtime_default")),
        # no_new_privs: runc loads the filter at the very end, just before
        # exec, so its own init runs the last steps under the filter too
        sec(seccomp=Profile("runtime_default"), no_new_privs=True),
    ):
        out = runc.ok(script, config, user=ResolvedUser(1234, 1234, (10,)))
        lines = out.splitlines()
        assert lines[0] == "ok"
        assert "hello-web" in lines
        assert any(line.startswith("HTTP/1.") and "200" in line for line in lines), out
        assert lines[-1].split() == ["Seccomp:", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- root file system and /proc ---------------------------------------------------------------


def test_readonly_rootfs(runc):
    result = runc.run("touch /x", sec(readonly_rootfs=True))
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


def test_masked_and_readonly_proc(runc):
    masked = next(
        (p for p in DEFAULT_MASKED_PATHS if p.startswith("/proc/") and os.path.isfile(p)
         and os.access(p, os.R_OK) and open(p, "rb").read(1)),
        None,
    )
    if masked is None:
        pytest.skip("none of the default masked /proc files exists with content on this kernel")
    assert runc.ok(f"wc -c < {masked}").strip() == "0"
    assert int(runc.ok(f"wc -c < {masked}", sec(privileged=True)).strip()) > 0
    result = runc.run("echo x > /proc/sys/kernel/domainname")
    assert result.returncode != 0 and "Read-only" in result.stderr


# -- oom_score_adj ---------------------------------------------------------------------------


def test_oom_score_adj_clamped_so_runc_starts(runc):
    config = ContainerConfig(name="t", resources=Resources(oom_score_adj=-1000))
    daemon = _daemon_oom_score_adj()
    container_id, spec, notes = runc.spec(replace(config, command=("cat", "/proc/self/oom_score_adj")))
    if daemon > -1000:
        assert any("-1000" in n for n in notes)
    result = runc.run_spec(container_id, spec)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == max(-1000, daemon)

    if CAPABILITIES.index("CAP_SYS_RESOURCE") not in runc.host.bounding and daemon > -1000:
        # the reason for the clamp: unclamped, runc cannot start the container
        container_id, spec, _ = runc.spec(replace(config, command=("true",)))
        spec["process"]["oomScoreAdj"] = -1000
        result = runc.run_spec(container_id, spec)
        assert result.returncode != 0


# -- cgroups -------------------------------------------------------------------------------------


def test_cgroup_and_limits(runc):
    if runc.host.cgroups.mode == "v2":
        pytest.skip("checks the v1 controllers' files")
    config = ContainerConfig(name="t", resources=Resources(memory_limit=64 << 20, cpu_shares=256))
    container_id, spec, _ = runc.spec(replace(config, command=(
        "sh", "-c",
        "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.shares",
    )))
    result = runc.run_spec(container_id, spec)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.endswith(f":memory:{runc.cgroup_parent}/{container_id}") for line in lines), lines
    assert lines[-2:] == [str(64 << 20), "256"]


# -- namespaces, pod files, mounts, devices ------------------------------------------------------


def test_pinned_pod_namespaces_files_mounts_and_devices(runc, tmp_path):
    nsdir = tmp_path / "ns"
    nsdir.mkdir()
    paths = {kind: str(nsdir / kind) for kind in ("net", "ipc", "uts")}
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.1.2.3 spec-pod\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("from the host\n")
    try:
        create_pinned(paths, hostname="spec-pod", sysctls={"net.ipv4.ping_group_range": "0 0"})
        pod = runc.pod(namespaces=paths, host=frozenset(), files={"/etc/hosts": str(hosts)})
        config = ContainerConfig(
            name="t",
            mounts=(Mount("/data", str(data), readonly=True),),
            devices=(Device("/dev/mynull", "/dev/null", "rw"),),
            sysctls=(("net.ipv4.ip_unprivileged_port_start", "80"),),
        )
        script = (
            "hostname; readlink /proc/self/ns/net; readlink /proc/self/ns/uts; "
            "cat /proc/sys/net/ipv4/ping_group_range /proc/sys/net/ipv4/ip_unprivileged_port_start; "
            "cat /etc/hosts /data/hello; touch /data/x 2>/dev/null && echo writable || echo read-only; "
            "echo into-null > /dev/mynull && echo device-ok"
        )
        container_id, spec, _ = runc.spec(replace(config, command=("sh", "-c", script)), pod=pod)
        assert "hostname" not in spec  # joined UTS namespace: the pod set the name
        result = runc.run_spec(container_id, spec)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "spec-pod"
        assert lines[1] == f"net:[{os.stat(paths['net']).st_ino}]"
        assert lines[2] == f"uts:[{os.stat(paths['uts']).st_ino}]"
        assert lines[3].split() == ["0", "0"] and lines[4] == "80"
        assert "10.1.2.3 spec-pod" in lines and "from the host" in lines
        assert lines[-2:] == ["read-only", "device-ok"]
        assert not (data / "x").exists()
    finally:
        remove_pinned(paths.values())


def test_uts_namespace_own_or_the_hosts(runc):
    own = runc.pod(host=frozenset({"ipc"}))  # a network (and so UTS) namespace of its own
    assert runc.ok("hostname; echo $HOSTNAME", pod=own).split() == ["spec-test", "spec-test"]
    # the host's network means the host's UTS namespace: its name is kept, not set
    assert runc.ok("hostname").strip() == socket.gethostname()


# -- clone's namespace flags, clone3 -----------------------------------------------------------

# Raw system calls from the host's Python (bind-mounted with its /usr): busybox
# cannot ask clone(2) for a namespace.  x86_64 numbers.
_CLONE_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
SYS_clone, SYS_clone3, SIGCHLD = 56, 435, 17
def clone(flags):
    pid = libc.syscall(SYS_clone, ctypes.c_ulong(flags | SIGCHLD), None, None, None, ctypes.c_ulong(0))
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        return "ok"
    return os.strerror(ctypes.get_errno())
print("plain", clone(0))
print("newuser", clone(0x10000000))
print("newnet", clone(0x40000000))
args = (ctypes.c_uint64 * 11)(0, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
pid = libc.syscall(SYS_clone3, args, ctypes.c_size_t(88))
if pid == 0:
    os._exit(0)
print("clone3", "ok" if pid > 0 else os.strerror(ctypes.get_errno()))
"""


def test_clone_namespace_flags_refused_clone3_enosys(runc):
    python = os.path.realpath("/usr/bin/python3")
    if os.uname().machine != "x86_64" or not python.startswith("/usr/") or not os.path.exists(python):
        pytest.skip("needs x86_64 and the host's /usr/bin/python3")
    mounts = (Mount("/usr", "/usr", readonly=True), Mount("/lib64", "/usr/lib64", readonly=True),
              Mount("/lib", "/usr/lib", readonly=True))
    probe = (python, "-I", "-c", _CLONE_PROBE)

    def run(security: Security) -> dict[str, str]:
        container_id, spec, _ = runc.spec(ContainerConfig(name="t", command=probe, mounts=mounts, security=security))
        result = runc.run_spec(container_id, spec)
        assert result.returncode == 0, result.stderr
        return dict(line.split(" ", 1) for line in result.stdout.splitlines())

    # Control: without the filter (CAP_SYS_ADMIN for CLONE_NEWNET) all work.
    assert run(Security(capabilities_add=("SYS_ADMIN",))) == {
        "plain": "ok", "newuser": "ok", "newnet": "ok", "clone3": "ok"}
    assert run(Security(capabilities_add=("SYS_ADMIN",), seccomp=Profile("runtime_default"))) == {
        "plain": "ok",
        "newuser": "Operation not permitted",
        "newnet": "Operation not permitted",
        "clone3": "Function not implemented",  # so that libc falls back to clone
    }
