"""The file modes rktlet asks for (README "Security notes"): directories on
the way to root filesystems, bundles, layers, pod dirs and records 0700,
records and runtime specs 0600, whatever the umask and whatever an older
daemon left. The real thing, seen by an unprivileged host user, is
tests/integration/test_file_modes.py."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest

from rktlet import config, fsutil
from rktlet.image.store import ImageStore
from rktlet.oci import mounts
from rktlet.pod import containers as containers_module
from rktlet.pod import sandboxes as sandboxes_module
from rktlet.pod.container import Container
from rktlet.pod.containers import ContainerManager
from rktlet.pod.records import Snapshots
from rktlet.pod.engine import Engine
from rktlet.pod.sandbox import Sandbox
from rktlet.pod.sandboxes import SandboxManager
from rktlet.pod.store import PodStore
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


def test_container_bundle_layer_and_spec_modes(tmp_path, monkeypatch):
    monkeypatch.setattr(containers_module.mounts, "mount", lambda *a: None)
    monkeypatch.setattr(containers_module.users, "resolve_user", lambda *a: "user")
    monkeypatch.setattr(containers_module, "build_spec", lambda *a: ({"process": {"env": ["SECRET=x"]}}, []))
    c = Container(id="c1", sandbox_id="p1", name="n", attempt=0, fingerprint="", created_at=0, image="i",
                  image_ref="i", bundle=str(tmp_path / "run" / "containers" / "c1"),
                  layer_dir=str(tmp_path / "root" / "containers" / "c1"))
    fake = SimpleNamespace(_daemon_oom=0, _host=None)
    ContainerManager._prepare_bundle(fake, c, ["/lower"], SimpleNamespace(security=None),
                                     SimpleNamespace(user=""), None)
    assert mode(c.bundle) == 0o700
    assert mode(os.path.join(c.bundle, "rootfs")) == 0o700
    assert mode(os.path.join(c.bundle, "config.json")) == 0o600
    assert mode(c.layer_dir) == 0o700
    assert mode(os.path.join(c.layer_dir, "work")) == 0o700
    assert mode(os.path.join(c.layer_dir, "upper")) == 0o755  # the container's "/"


def test_container_manager_narrows_what_an_older_daemon_made(tmp_path):
    run, root = tmp_path / "run", tmp_path / "root"
    bundle, layer = run / "containers" / "c1", root / "containers" / "c1"
    for d in (bundle, layer, run / "exits", run / "s", run / "runtime" / "runc"):
        d.mkdir(0o755, parents=True)
    (bundle / "config.json").write_text("{}")
    (bundle / "config.json").chmod(0o644)
    c = Container(id="c1", sandbox_id="p1", name="n", attempt=0, fingerprint="", created_at=0, image="i",
                  image_ref="i", bundle=str(bundle), layer_dir=str(layer), state="created")
    store = SimpleNamespace(load=lambda: iter([c]))
    runtime = SimpleNamespace(state_root=str(run / "runtime" / "runc"))
    conmon = SimpleNamespace(exits_dir=str(run / "exits"), socket_dir=str(run / "s"))
    manager = ContainerManager.__new__(ContainerManager)
    manager._bundles, manager._layers = str(run / "containers"), str(root / "containers")
    manager._store, manager._runtimes, manager._conmons = store, {"runc": runtime}, {"runc": conmon}
    manager.containers, manager._by_key, manager._locks, manager._unreconciled = {}, {}, {}, []
    manager.snapshots = Snapshots("container")
    manager._sandboxes = SimpleNamespace(find=lambda _: None)
    manager.load()
    for d in (run / "containers", root / "containers", bundle, layer, run / "exits", run / "s", run / "runtime",
              run / "runtime" / "runc"):
        assert mode(d) == 0o700, d
    assert mode(bundle / "config.json") == 0o600


def test_pod_dir_namespaces_and_shm_mount_point(tmp_path, monkeypatch):
    monkeypatch.setattr(sandboxes_module.namespaces, "create_pinned", lambda *a, **k: None)
    monkeypatch.setattr(mounts, "mount", lambda *a: None)
    pod_dir = tmp_path / "run" / "pods" / "p1"
    sb = Sandbox(id="p1", name="n", namespace="ns", uid="u", attempt=0, fingerprint="", created_at=0, handler="runc",
                 hostname="h", dir=str(pod_dir), shm=str(pod_dir / "shm"),
                 dns={"servers": [], "searches": [], "options": []})
    SandboxManager._make_files_and_namespaces(SimpleNamespace(_write_hosts=SandboxManager._write_hosts), sb, 1 << 20)
    assert [mode(pod_dir / d) for d in ("", "ns", "shm")] == [0o700] * 3
    # What containers bind-mount as /etc files stays readable inside them.
    assert [mode(pod_dir / f) for f in ("resolv.conf", "hosts", "hostname")] == [0o644] * 3


def test_record_stores_and_image_store(tmp_path):
    pods = tmp_path / "root" / "pods"
    pods.mkdir(0o755, parents=True)
    store = PodStore(str(tmp_path / "root"))
    list(store.load())
    assert mode(pods) == 0o700
    images = tmp_path / "root" / "images"
    (images / "blobs" / "sha256").mkdir(0o755, parents=True)
    (images / "layers").mkdir(0o755)
    images.chmod(0o755)
    s = ImageStore(str(tmp_path / "root"))
    s.load()
    for d in ("", "blobs", "blobs/sha256", "ingest", "layers"):
        assert mode(images / d) == 0o700, d
    layer = s.new_layer_dir()
    assert (mode(layer), mode(os.path.join(layer, "diff"))) == (0o700, 0o755)


def test_engine_leaves_a_shared_directory_it_was_given_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(0o755)
    (shared / "someone-elses").mkdir()
    c = config.load({"root": str(tmp_path / "root"), "run-dir": str(shared),
                     "cni-conf-dir": str(tmp_path / "net.d")})
    Engine(c, ImmediateReactor(), InlineThreads()).load()
    assert mode(shared) == 0o755  # like /run: not rktlet's to narrow
    assert mode(tmp_path / "root") == 0o700
