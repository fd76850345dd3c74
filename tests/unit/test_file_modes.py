"""The file modes rktlet asks for (README "Security notes"): directories on
the way to root filesystems, bundles, layers, pod dirs and records 0700,
records and runtime specs 0600, whatever the umask and whatever an older
daemon left. The real thing, seen by an unprivileged host user, is
tests/integration/test_file_modes.py."""

from __future__ import annotations

import os
import stat

import pytest

from rktlet import config, fsutil
from rktlet.oci import mounts
from rktlet.oci.host import RealHost
from rktlet.pod.engine import Engine
from tests.unit.pod_world import PodWorld
from tests.unit.test_engine_runtime import ImmediateReactor, InlineThreads


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask():
    """A umask that would leave everything world-readable and writable:
    the modes must not depend on it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_make_dir_sets_exact_modes_and_narrows_existing_dirs(tmp_path):
    fsutil.make_dir(str(tmp_path / "a" / "b" / "c"))
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    old = tmp_path / "old"
    old.mkdir(0o755)
    fsutil.make_dir(str(old))
    assert mode(old) == 0o700
    fsutil.make_dir(str(old), 0o711)
    assert mode(old) == 0o711


def test_set_mode_skips_missing_paths_and_symlinks(tmp_path):
    fsutil.set_mode(str(tmp_path / "missing"), 0o700)
    target = tmp_path / "target"
    target.mkdir(0o755)
    (tmp_path / "link").symlink_to(target)
    fsutil.set_mode(str(tmp_path / "link"), 0o700)
    assert mode(target) == 0o755


def test_atomic_writes_are_0600_unless_asked(tmp_path):
    fsutil.write_json_atomic(str(tmp_path / "record.json"), {"a": 1})
    assert mode(tmp_path / "record.json") == 0o600
    # A leftover temp file of a crashed writer does not lend its mode.
    leftover = tmp_path / f".hosts.{os.getpid()}.tmp"
    leftover.write_bytes(b"")
    leftover.chmod(0o666)
    fsutil.write_atomic(str(tmp_path / "hosts"), b"x", 0o644)
    assert mode(tmp_path / "hosts") == 0o644


def test_engine_narrows_root_and_run_dir(tmp_path):
    root, run = tmp_path / "root", tmp_path / "run"
    root.mkdir(0o755)
    run.mkdir(0o777)
    c = config.load({"root": str(root), "run-dir": str(run), "cni-conf-dir": str(tmp_path / "net.d")})
    Engine(c, ImmediateReactor(), InlineThreads()).load()
    assert (mode(root), mode(run)) == (0o700, 0o711)


def test_container_bundle_layer_and_spec_modes(tmp_path):
    world = PodWorld(str(tmp_path)).start()
    c = world.create(world.run_pod())
    assert mode(c.bundle) == 0o700
    assert mode(os.path.join(c.bundle, "rootfs")) == 0o700
    assert mode(os.path.join(c.bundle, "config.json")) == 0o600
    assert mode(c.layer_dir) == 0o700
    assert mode(os.path.join(c.layer_dir, "work")) == 0o700
    assert mode(os.path.join(c.layer_dir, "upper")) == 0o755  # the container's "/"
    assert mode(world.container_record(c.id)) == 0o600


def test_container_manager_narrows_what_an_older_daemon_made(tmp_path):
    world = PodWorld(str(tmp_path)).start()
    c = world.create(world.run_pod())
    run, root = tmp_path / "run", tmp_path / "root"
    wide = [run / "containers", root / "containers", c.bundle, c.layer_dir, run / "exits", run / "s",
            run / "runtime", run / "runtime" / "runc"]
    for d in wide:
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
    os.chmod(os.path.join(c.bundle, "config.json"), 0o644)
    world.restarted()  # an older daemon made them so; this one narrows them
    for d in wide:
        # The bundles' dir: 0711, traversed by user-namespaced pods' roots.
        assert mode(d) == (0o711 if d == run / "containers" else 0o700), d
    assert mode(os.path.join(c.bundle, "config.json")) == 0o600


def test_pod_dir_namespaces_and_files(tmp_path):
    world = PodWorld(str(tmp_path)).start()
    sb = world.run_pod()
    assert [mode(os.path.join(sb.dir, d)) for d in ("", "ns")] == [0o700] * 2
    # What containers bind-mount as /etc files stays readable inside them.
    assert [mode(os.path.join(sb.dir, f)) for f in ("resolv.conf", "hosts", "hostname")] == [0o644] * 3


def test_the_shm_mount_point_is_private(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "mount", lambda *a: None)
    pod_dir = tmp_path / "pod"
    pod_dir.mkdir(0o700)
    RealHost(None, None).mount_shm(str(pod_dir / "shm"), 1 << 20)
    assert mode(pod_dir / "shm") == 0o700
