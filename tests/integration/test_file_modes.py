"""No host user but root reaches a container's files (containerd's
CVE-2021-41103 class): root filesystems, bundles (config.json holds the
environment), writable layers, unpacked layers, pod dirs and the pod's
/dev/shm mount point are all behind 0700 directories, so a setuid file made
inside a container (or shipped in an image) cannot be run from the host by
an unprivileged user, while non-root users inside containers still work.

The daemon's temp dir is opened to 0755 here, as /var/lib and /run are, so
that only rktlet's own modes stand between a host user and its files.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess

import pytest

from rktlet.cri.proto import pb
from harness.containers import container_config, create, start
from harness.daemon import Daemon, serve
from harness.images import File, Layer, build_image, busybox_layer, push_image
from harness.pods import pod_config, run_pod

pytestmark = pytest.mark.root

NOBODY = 65534
HOST_BUSYBOX = "/bin/busybox"


@pytest.fixture
def daemon():
    """The conftest's daemon, with its base dir world-traversable (0755)."""
    d = Daemon()
    os.chmod(d.base, 0o755)
    yield from serve(d)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    """Run ``busybox ARGV`` as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", HOST_BUSYBOX, *argv],
        capture_output=True, timeout=20, cwd="/",
    )


def not_denied(*argv: str) -> str | None:
    """None when ``busybox ARGV`` as uid 65534 fails with EACCES, else what
    happened."""
    r = as_nobody(*argv)
    if r.returncode != 0 and b"Permission denied" in r.stderr:
        return None
    return f"{' '.join(argv)}: exit {r.returncode} {(r.stdout + r.stderr)[:200]!r}"


def exec_sync(daemon, cid: str, *cmd: str) -> pb.ExecSyncResponse:
    return daemon.runtime().ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=20), timeout=40)


def reachable_violations(root: str, run_dir: str) -> list[str]:
    """Paths under *root* and *run_dir* that other users can reach (every
    directory above is o+x) and that give them any access, or that are not
    root's; the run dir itself may be 0711 (traversed to the CRI socket),
    and so may the dir of the bundles (traversed by the roots of pods with
    their own user namespace to their containers' root filesystems)."""
    bad: list[str] = []

    def walk(path: str) -> None:
        st = os.lstat(path)
        allowed = 0o001 if path in (run_dir, os.path.join(run_dir, "containers")) else 0
        if st.st_uid != 0 or (st.st_mode & 0o007 & ~allowed and not stat.S_ISLNK(st.st_mode)):
            bad.append(f"{oct(st.st_mode)} uid {st.st_uid} {path}")
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o001 and len(bad) < 20:
            for name in os.listdir(path):
                walk(os.path.join(path, name))

    walk(root)
    walk(run_dir)
    return bad


def test_container_files_are_not_reachable_by_host_users(daemon, test_network, pushed_images, registry, tmp_path):
    # A hostile image: a setuid-root copy of busybox, shipped in a layer.
    suid = File("opt/suid/id", pathlib.Path(HOST_BUSYBOX).read_bytes(), mode=0o4755)
    hostile = build_image([busybox_layer(), Layer([suid])], cmd=["sh"])
    push_image(registry, "file-modes/hostile", "1", hostile)
    image = registry.ref("file-modes/hostile", "1")
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    logs = tmp_path / "logs"
    pod = pod_config(name="modes", log_directory=str(logs))
    pod_id = run_pod(daemon, pod)
    cid = create(daemon, pod_id, pod, container_config(
        "secret", image, command=["sleep", "1000"], envs=[pb.KeyValue(key="PASSWORD", value=b"hunter2")]))
    start(daemon, cid)
    # Root in the container makes a setuid-root busybox in its writable layer
    # (named "id": busybox runs the applet its name says).
    r = exec_sync(daemon, cid, "sh", "-c", "mkdir /suid && cp /bin/busybox /suid/id && chmod 4755 /suid/id && ls -ln /suid/id")
    assert r.exit_code == 0 and r.stdout.startswith(b"-rwsr-xr-x"), (r.stdout, r.stderr)

    bundle = os.path.join(daemon.run_dir, "containers", cid)
    layer = os.path.join(daemon.root, "containers", cid)
    pod_dir = os.path.join(daemon.run_dir, "pods", pod_id)
    with open("/proc/self/mountinfo") as f:
        overlay = next(line for line in f if f" {bundle}/rootfs " in line)
    lowers = overlay.split("lowerdir=")[1].split(",")[0].split(":")  # lowers[0]: the top layer
    assert lowers and all(d.startswith(daemon.root) for d in lowers)
    # Sanity: as root, the paths are real, and nobody *could* run the files were they reachable.
    for path in (f"{bundle}/rootfs/suid/id", f"{layer}/upper/suid/id", f"{lowers[0]}/opt/suid/id"):
        assert os.stat(path).st_mode & 0o4777 == 0o4755, path
    assert b"hunter2" in pathlib.Path(bundle, "config.json").read_bytes()
    assert stat.S_IMODE(os.stat(f"{pod_dir}/shm").st_mode) == 0o1777  # the tmpfs, as containers see it
    assert as_nobody("true").returncode == 0 and as_nobody("ls", daemon.base).returncode == 0

    reached = []
    for path in (f"{bundle}/rootfs/suid/id", f"{layer}/upper/suid/id", f"{lowers[0]}/opt/suid/id",
                 f"{bundle}/rootfs/opt/suid/id", f"{bundle}/rootfs/bin/busybox"):
        reached.append(not_denied("sh", "-c", f"exec {path} -u"))
        reached.append(not_denied("cat", path))
    reached.append(not_denied("cat", f"{bundle}/config.json"))
    for path in (daemon.root, daemon.run_dir, bundle, f"{bundle}/rootfs", f"{layer}/upper", layer, lowers[0],
                 os.path.join(daemon.root, "images"), os.path.join(daemon.root, "images", "layers"),
                 os.path.join(daemon.root, "images", "blobs", "sha256"),
                 pod_dir, f"{pod_dir}/shm", os.path.join(daemon.run_dir, "containers"),
                 os.path.join(daemon.run_dir, "pods")):
        reached.append(not_denied("ls", path))
    reached.append(not_denied("touch", f"{pod_dir}/shm/from-host"))
    assert [r for r in reached if r] == []
    assert not os.path.exists(f"{pod_dir}/shm/from-host")

    # What rktlet guarantees, for every path under --root and --run-dir:
    # reachable only through directories others cannot enter.
    assert reachable_violations(daemon.root, daemon.run_dir) == []
    for path in (daemon.root, bundle, layer, os.path.dirname(lowers[0]), pod_dir, f"{pod_dir}/ns",
                 os.path.join(daemon.root, "images"), os.path.join(daemon.root, "pods"),
                 os.path.join(daemon.root, "containers"),
                 os.path.join(daemon.run_dir, "pods"), os.path.join(daemon.run_dir, "exits"),
                 os.path.join(daemon.run_dir, "s"), os.path.join(daemon.run_dir, "runtime")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    assert stat.S_IMODE(os.stat(daemon.run_dir).st_mode) == 0o711
    # Traversed (never listed) by the roots of pods with a user namespace of their own.
    assert stat.S_IMODE(os.stat(os.path.join(daemon.run_dir, "containers")).st_mode) == 0o711
    for path in (f"{bundle}/config.json", os.path.join(daemon.root, "pods", f"{pod_id}.json"),
                 os.path.join(daemon.root, "containers", f"{cid}.json"),
                 os.path.join(daemon.root, "images", "images.json")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_non_root_container_user_still_works(daemon, test_network, pushed_images, tmp_path):
    image = pushed_images["busybox"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    pod = pod_config(name="nonroot", log_directory=str(tmp_path / "logs"))
    pod_id = run_pod(daemon, pod)
    config = container_config("app", image, command=["sleep", "1000"])
    config.linux.security_context.run_as_user.value = 4321
    cid = create(daemon, pod_id, pod, config)
    start(daemon, cid)
    r = exec_sync(daemon, cid, "sh", "-c",
                  "id -u; ls / >/dev/null && cat /etc/hosts /etc/resolv.conf /etc/hostname >/dev/null"
                  " && echo x > /dev/shm/mine && cat /dev/shm/mine && stat -c %a /dev/shm /")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [b"4321", b"x", b"1777", b"755"]
