"""Pods with their own user namespace (the kubelet's ``hostUsers: false``),
with the real runc that makes idmapped mounts (1.2+; the cached 1.5.3 of
``tests/tools/build-clients runc``, offered as the ``runc-idmap`` handler).

What is checked: the mapping seen inside, the pod's namespaces (network,
IPC, UTS and the infra process's PID namespace) owned by its user
namespace, the root filesystem's files owned as in the image (idmapped
lower layers, no chown of layers), what the container writes owned by the
pod's host ids, idmapped volumes, /dev/shm and /etc files owned by the
pod's root, IPC and network sysctls, exec, and the refusals.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

import grpc
import pytest

from rktlet.cri.proto import pb
from harness.containers import container_config, create, log_text, run_to_exit, start, status
from harness.daemon import Daemon, serve
from harness.pods import pod_config, pod_status, run_pod
from harness.runc import IDMAP_HANDLER, has_idmap, idmap_runc, test_runc

pytestmark = pytest.mark.root

#: A range like the kubelet's (a multiple of 65536, 65536 long).
HOST_ID = 7 * 65536
LENGTH = 65536
_NS_GET_USERNS = 0xB701  # <linux/nsfs.h>


@pytest.fixture
def daemon():
    """A daemon with the idmap-capable runc as handler ``runc-idmap``."""
    runc = idmap_runc()
    if runc is None:
        pytest.skip("no runc with idmapped mounts (tests/tools/build-clients runc, or $RKTLET_IDMAP_RUNC)")
    yield from serve(Daemon(extra_args=["--runtime-handler", f"{IDMAP_HANDLER}={runc}"]))


@pytest.fixture
def image(daemon, test_network, pushed_images):
    refs = {}
    for name in ("busybox", "named-user"):
        refs[name] = pushed_images[name].ref
        daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=refs[name])), timeout=60)
    return refs


def mapping(container_id: int = 0, host_id: int = HOST_ID, length: int = LENGTH) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


def userns_pod(tmp_path, pid: int = pb.POD, **fields) -> pb.PodSandboxConfig:
    config = pod_config(log_directory=str(tmp_path / "logs"), pid=pid, **fields)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(
        pb.UserNamespace(mode=pb.POD, uids=[mapping()], gids=[mapping()]))
    return config


def with_userns(config: pb.ContainerConfig, pod: pb.PodSandboxConfig) -> pb.ContainerConfig:
    """What the kubelet sends: the pod's namespace options, and the pod's
    mappings on every mount."""
    config.linux.security_context.namespace_options.CopyFrom(pod.linux.security_context.namespace_options)
    return config


def owner_userns(path: str) -> tuple[int, int]:
    """(device, inode) of the user namespace owning the namespace at *path*."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, _NS_GET_USERNS)
        try:
            st = os.fstat(owner)
            return st.st_dev, st.st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


def test_status_advertises_user_namespaces_per_handler(daemon):
    handlers = daemon.runtime().Status(pb.StatusRequest(), timeout=10).runtime_handlers
    default = has_idmap(test_runc())
    assert {h.name: h.features.user_namespaces for h in handlers} == {
        "": default, "runc": default, IDMAP_HANDLER: True}


def test_pod_in_its_own_user_namespace(daemon, image, tmp_path):
    config = userns_pod(tmp_path)
    config.linux.sysctls.update({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "80"})
    pod_id = run_pod(daemon, config, handler=IDMAP_HANDLER)
    info = json.loads(pod_status(daemon, pod_id, verbose=True).info["info"])
    ns = info["namespaces"]
    assert set(ns) == {"user", "net", "ipc", "uts"}
    user = os.stat(ns["user"])
    # Its network, IPC and UTS namespaces, and the infra process's PID namespace, are the user namespace's.
    for kind in ("net", "ipc", "uts"):
        assert owner_userns(ns[kind]) == (user.st_dev, user.st_ino), kind
    assert owner_userns(f"/proc/{info['pid']}/ns/pid") == (user.st_dev, user.st_ino)
    with open(f"/proc/{info['pid']}/status") as f:
        uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
    assert uids == [str(HOST_ID)] * 4  # catatonit runs as the pod's root: an unprivileged host uid
    userns = pod_status(daemon, pod_id).status.linux.namespaces.options.userns_options
    assert (userns.mode, list(userns.uids), list(userns.gids)) == (pb.POD, [mapping()], [mapping()])

    volume = tmp_path / "vol"
    volume.mkdir()
    (volume / "root-file").write_text("r")
    (volume / "user-file").write_text("u")
    os.chown(volume / "user-file", 1000, 1000)
    plain = tmp_path / "plain"
    plain.mkdir()
    script = ("id; cat /proc/self/uid_map /proc/self/gid_map; stat -c '%n %u:%g' / /bin/busybox /etc/hosts "
              "/etc/resolv.conf /etc/hostname /dev/shm /vol/root-file /vol/user-file /plain; "
              "touch /new /vol/written /dev/shm/x && echo wrote; "
              "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start")
    c = with_userns(container_config("check", image["busybox"], command=["sh", "-c", script]), config)
    c.mounts.add(container_path="/vol", host_path=str(volume), uidMappings=[mapping()], gidMappings=[mapping()])
    c.mounts.add(container_path="/plain", host_path=str(plain))
    s = run_to_exit(daemon, pod_id, config, c)
    out = log_text(s.log_path).decode()
    assert s.exit_code == 0, out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["uid=0", "gid=0"]
    assert lines[1].split() == ["0", str(HOST_ID), str(LENGTH)] and lines[2].split() == ["0", str(HOST_ID), str(LENGTH)]
    owners = dict(line.split() for line in lines[3:12])
    assert owners == {
        "/": "0:0", "/bin/busybox": "0:0",  # the image's owners, through idmapped lower layers
        "/etc/hosts": "0:0", "/etc/resolv.conf": "0:0", "/etc/hostname": "0:0", "/dev/shm": "0:0",
        "/vol/root-file": "0:0", "/vol/user-file": "1000:1000",  # an idmapped volume: host ids as they are
        "/plain": "65534:65534",  # no mappings given: host root is no one in there
    }
    assert lines[12:] == ["wrote", "1", "80"]
    # What it wrote: in its upper layer under its host ids; in the idmapped volume, as root's.
    cid = s.id
    upper = os.path.join(daemon.root, "containers", cid, "upper")
    assert (os.stat(os.path.join(upper, "new")).st_uid, os.stat(upper).st_uid) == (HOST_ID, HOST_ID)
    assert os.stat(volume / "written").st_uid == 0
    # The image's layers were not touched.
    layer_owners = {os.stat(os.path.join(root, name)).st_uid
                    for root, dirs, files in os.walk(os.path.join(daemon.root, "images", "layers")) for name in files}
    assert layer_owners and layer_owners <= {0, 1234}

    # A non-root image user: resolved from the image, runs as its host id.
    named = with_userns(container_config("named", image["named-user"],
                                         command=["sh", "-c", "id -u; stat -c %u /home/app; sleep 30"]), config)
    named_id = create(daemon, pod_id, config, named)
    start(daemon, named_id)
    container_pid = json.loads(status(daemon, named_id, verbose=True).info["info"])["pid"]
    with open(f"/proc/{container_pid}/status") as f:
        assert [line.split()[1] for line in f if line.startswith("Uid:")] == [str(HOST_ID + 1234)]
    response = daemon.runtime().ExecSync(pb.ExecSyncRequest(container_id=named_id, cmd=["cat", "/proc/self/uid_map"],
                                                            timeout=10), timeout=20)
    assert response.exit_code == 0 and response.stdout.split() == [b"0", str(HOST_ID).encode(), str(LENGTH).encode()]
    # Statistics read the pod's network namespace (owned by its user namespace).
    stats = daemon.runtime().PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=30).stats
    assert stats.linux.network.default_interface.name == "eth0"
    daemon.runtime().StopContainer(pb.StopContainerRequest(container_id=named_id, timeout=0), timeout=30)

    daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def left() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line for line in f if daemon.base in line]

    deadline = time.monotonic() + 30  # a removed container's files go in the background
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == []  # namespaces unpinned, overlays and their idmapped scratch mounts gone


def test_own_pid_namespaces_per_container(daemon, image, tmp_path):
    config = userns_pod(tmp_path, pid=pb.CONTAINER)
    pod_id = run_pod(daemon, config, handler=IDMAP_HANDLER)
    c = with_userns(container_config("pid", image["busybox"], command=["sh", "-c", "echo $$; cat /proc/self/uid_map"]),
                    config)
    s = run_to_exit(daemon, pod_id, config, c)
    assert log_text(s.log_path).split() == [b"1", b"0", str(HOST_ID).encode(), str(LENGTH).encode()]


@pytest.mark.parametrize("change, words", [
    (lambda u: setattr(u, "mode", pb.CONTAINER), "userns_options.mode: CONTAINER is not supported"),
    (lambda u: setattr(u, "mode", pb.TARGET), "userns_options.mode: TARGET is not supported"),
    (lambda u: u.uids.append(pb.IDMapping(container_id=0, host_id=2000, length=100000)),
     "userns_options.uids: exactly one mapping is supported, got 2"),
    (lambda u: (u.uids[0].__setattr__("container_id", 1), u.gids[0].__setattr__("container_id", 1)),
     "container id 0 (root) must be mapped"),
    (lambda u: u.gids.pop(), "userns_options.gids: exactly one mapping is supported, got 0"),
    (lambda u: u.uids[0].__setattr__("length", 0), "userns_options.uids[0].length: 0 must be at least 1"),
    (lambda u: u.uids[0].__setattr__("host_id", 2**32 - 10), "goes past the largest id"),
], ids=["container", "target", "two-ranges", "root-unmapped", "no-gids", "empty", "overflow"])
def test_bad_modes_and_mappings_are_refused(daemon, tmp_path, change, words):
    config = userns_pod(tmp_path)
    change(config.linux.security_context.namespace_options.userns_options)
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, config, handler=IDMAP_HANDLER)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details(), e.value.details()
    assert daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []


def test_refusals_of_the_combinations(daemon, image, tmp_path):
    host_net = userns_pod(tmp_path, network=pb.NODE)
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, host_net, handler=IDMAP_HANDLER)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "host's network namespace" in e.value.details()
    node = pod_config()
    node.linux.security_context.namespace_options.userns_options.CopyFrom(
        pb.UserNamespace(mode=pb.NODE, uids=[mapping()], gids=[mapping()]))
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, node, handler=IDMAP_HANDLER)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes no uid or gid mappings" in e.value.details()
    if not has_idmap(test_runc()):
        with pytest.raises(grpc.RpcError) as e:
            run_pod(daemon, userns_pod(tmp_path))  # the default handler: Debian's runc 1.1.5
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "runtime handler 'runc' does not support user namespaces" in e.value.details()
    # A container names its pod's user namespace, never another.
    config = userns_pod(tmp_path)
    pod_id = run_pod(daemon, config, handler=IDMAP_HANDLER)
    c = container_config("node", image["busybox"], command=["true"])
    c.linux.security_context.namespace_options.userns_options.mode = pb.NODE
    with pytest.raises(grpc.RpcError) as e:
        create(daemon, pod_id, config, c)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has a user namespace of its own" in e.value.details()


def test_host_user_namespace_mode_node_keeps_the_hosts(daemon, image, tmp_path):
    config = pod_config(log_directory=str(tmp_path / "logs"))
    config.linux.security_context.namespace_options.userns_options.mode = pb.NODE
    pod_id = run_pod(daemon, config, handler=IDMAP_HANDLER)
    s = run_to_exit(daemon, pod_id, config,
                    with_userns(container_config("n", image["busybox"], command=["cat", "/proc/self/uid_map"]), config))
    with open("/proc/self/uid_map") as f:
        assert log_text(s.log_path).split() == f.read().encode().split()
    assert "user" not in json.loads(pod_status(daemon, pod_id, verbose=True).info["info"])["namespaces"]


def test_a_restart_keeps_the_pod_and_its_container(daemon, image, tmp_path):
    """kill -9 of rktlet: the pod keeps its pinned user namespace and its
    running container, which works as before once rktlet is back."""
    import signal

    config = userns_pod(tmp_path)
    pod_id = run_pod(daemon, config, handler=IDMAP_HANDLER)
    c = with_userns(container_config("long", image["busybox"], command=["sh", "-c", "trap 'exit 0' TERM; "
                                                                        "while true; do sleep 1; done"]), config)
    cid = create(daemon, pod_id, config, c)
    start(daemon, cid)
    daemon.stop(signal.SIGKILL)
    daemon.start()
    assert pod_status(daemon, pod_id).status.state == pb.SANDBOX_READY
    assert status(daemon, cid).status.state == pb.CONTAINER_RUNNING
    response = daemon.runtime().ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["stat", "-c", "%u", "/bin/busybox"],
                                                            timeout=10), timeout=20)
    assert (response.exit_code, response.stdout) == (0, b"0\n")
    later = with_userns(container_config("later", image["busybox"], command=["cat", "/proc/self/uid_map"]), config)
    s = run_to_exit(daemon, pod_id, config, later)
    assert log_text(s.log_path).split() == [b"0", str(HOST_ID).encode(), str(LENGTH).encode()]
