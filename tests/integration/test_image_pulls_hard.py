"""Image pulls through the real daemon when things get hard.

Authentication (Docker token protocol through :mod:`harness.registry_proxy`,
basic auth on a real ``docker-registry``), corrupted blobs, hostile layers,
whiteouts through a real overlay mount, stalled and slow downloads, a daemon
killed mid-pull, concurrent pulls, and registry mirrors.

Every test starts what it needs through the factory fixtures below, which
stop daemons, proxies and registries by PID (and unmount, and remove their
directories) even when the test fails.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import grpc
import pytest

from rktlet.cri.proto import pb
from harness.daemon import Daemon, free_port
from harness.images import (
    LAYER_MTIME,
    MULTI_LAYER_ABSENT,
    MULTI_LAYER_PRESENT,
    BuiltImage,
    File,
    Layer,
    build_image,
    busybox_image,
    busybox_layer,
    push_image,
)
from harness.registry import LocalRegistry, registry_available
from harness.registry_proxy import RegistryProxy

_unavailable = registry_available()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_unavailable is not None, reason=f"local registry unavailable: {_unavailable}"),
]


# -- factories that always clean up ----------------------------------------------------


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Daemon]]:
    """``make_daemon(extra_args)`` -> a started rktlet; all stopped and removed at teardown."""
    made: list[Daemon] = []

    def make(extra_args: Sequence[str] = ()) -> Daemon:
        d = Daemon(extra_args=extra_args)
        made.append(d)
        return d.start()

    try:
        yield make
    finally:
        for d in made:
            d.cleanup()


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., RegistryProxy]]:
    """``make_proxy(upstream_url, **options)`` -> a started :class:`RegistryProxy`."""
    made: list[RegistryProxy] = []

    def make(upstream_url: str, **options: Any) -> RegistryProxy:
        proxy = RegistryProxy(upstream_url, **options)
        made.append(proxy)
        return proxy.start()

    try:
        yield make
    finally:
        for proxy in made:
            proxy.stop()


@pytest.fixture
def make_registry() -> Iterator[Callable[..., LocalRegistry]]:
    """``make_registry(**options)`` -> a fresh started :class:`LocalRegistry`."""
    made: list[LocalRegistry] = []

    def make(**options: Any) -> LocalRegistry:
        reg = LocalRegistry(**options)
        made.append(reg)
        return reg.start()

    try:
        yield make
    finally:
        for reg in made:
            reg.stop()


# -- helpers ------------------------------------------------------------------------------


def pull(daemon: Daemon, ref: str, auth: Optional[pb.AuthConfig] = None, timeout: float = 60) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    if auth is not None:
        request.auth.CopyFrom(auth)
    return daemon.images().PullImage(request, timeout=timeout).image_ref


def pull_error(daemon: Daemon, ref: str, auth: Optional[pb.AuthConfig] = None, timeout: float = 60) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        pull(daemon, ref, auth, timeout)
    return e.value


def status(daemon: Daemon, name: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return daemon.images().ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name), verbose=verbose), timeout=10)


def listed(daemon: Daemon) -> list[pb.Image]:
    return list(daemon.images().ListImages(pb.ListImagesRequest(), timeout=10).images)


def remove(daemon: Daemon, name: str) -> None:
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=name)), timeout=10)


def store_dir(daemon: Daemon, *parts: str) -> str:
    return os.path.join(daemon.root, "images", *parts)


def ingest_files(daemon: Daemon) -> list[str]:
    return os.listdir(store_dir(daemon, "ingest"))


def tmp_layer_dirs(daemon: Daemon) -> list[str]:
    return [n for n in os.listdir(store_dir(daemon, "layers")) if n.startswith(".tmp-")]


def complete_layer_dirs(daemon: Daemon) -> list[str]:
    layers = store_dir(daemon, "layers")
    return sorted(n for n in os.listdir(layers)
                  if not n.startswith(".tmp-") and os.path.exists(os.path.join(layers, n, "layer.json")))


def incomplete_layer_dirs(daemon: Daemon) -> list[str]:
    layers = store_dir(daemon, "layers")
    return [n for n in os.listdir(layers)
            if not n.startswith(".tmp-") and not os.path.exists(os.path.join(layers, n, "layer.json"))]


def chain_ids(daemon: Daemon, name: str) -> list[str]:
    info = json.loads(status(daemon, name, verbose=True).info["info"])
    return info["chainIDs"]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def random_layer(size: int, name: str = "data/blob", compression: str = "gzip") -> Layer:
    """A layer with one file of *size* random (incompressible) bytes."""
    return Layer([File(name, os.urandom(size))], compression=compression)


class RawLayer(Layer):
    """A layer from tar bytes written verbatim: entries :class:`Layer` would
    normalise away (``..``, absolute names) survive as written."""

    def __init__(self, tar: bytes, created_by: str = "hostile layer") -> None:
        self.entries = ()
        self.compression = "gzip"
        self.format = "docker"
        self.created_by = created_by
        self.tar = tar
        self.blob = gzip.compress(tar, compresslevel=6, mtime=0)
        self.digest = "sha256:" + hashlib.sha256(self.blob).hexdigest()
        self.diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()


def raw_tar(*members: tuple[str, bytes, Any]) -> bytes:
    """A tar archive of ``(kind, name, data_or_linkname)`` members, names as given.

    ``kind`` is ``"file"``, ``"dir"``, ``"symlink"`` or ``"hardlink"``.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = LAYER_MTIME
            info.uname = info.gname = ""
            if kind == "file":
                info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, len(extra)
                tar.addfile(info, io.BytesIO(extra))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, extra
            elif kind == "hardlink":
                info.type, info.mode, info.linkname = tarfile.LNKTYPE, 0o644, extra
            else:
                raise ValueError(kind)
            tar.addfile(info)
    data = buf.getvalue()
    # tarfile must not have "fixed" the names on the way.
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [m.name for m in tar.getmembers()] == [name for _, name, _ in members]
    return data


def pushed_ref(reg: LocalRegistry, repo: str, image: BuiltImage, tag: str = "latest") -> str:
    push_image(reg, repo, tag, image)
    return reg.ref(repo, tag)


# -- authentication -----------------------------------------------------------------------


def test_token_auth_through_proxy(make_daemon, make_proxy, registry, pushed_images):
    busybox = pushed_images["busybox"]
    proxy = make_proxy(registry.url, token_auth=("alice", "s3cret"))
    daemon = make_daemon()
    ref = f"{proxy.host}/{busybox.repo}:{busybox.tag}"

    error = pull_error(daemon, ref)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert proxy.host in error.details()

    error = pull_error(daemon, ref, pb.AuthConfig(username="alice", password="not-the-password-7f3a"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert proxy.host in error.details()
    assert "not-the-password-7f3a" not in error.details()  # never the secret
    assert listed(daemon) == []

    assert pull(daemon, ref, pb.AuthConfig(username="alice", password="s3cret")) == busybox.image_id
    assert [i.repo_tags for i in listed(daemon)] == [[ref]]
    # The docker-config form of the same credentials, with the layers fetched again.
    remove(daemon, ref)
    auth = base64.b64encode(b"alice:s3cret").decode()
    assert pull(daemon, ref, pb.AuthConfig(auth=auth)) == busybox.image_id
    assert proxy.requests(contains="/token 200"), proxy.log()
    assert len(proxy.requests(contains=f"/blobs/{busybox.image.layers[0].digest} 200")) == 2, proxy.log()


def test_basic_auth(make_daemon, make_registry):
    reg = make_registry(auth=("user", "pass"))
    image = busybox_image()
    ref = pushed_ref(reg, "private/busybox", image)
    daemon = make_daemon()

    error = pull_error(daemon, ref)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert reg.host in error.details()

    assert pull(daemon, ref, pb.AuthConfig(username="user", password="pass")) == image.image_id
    remove(daemon, ref)
    assert listed(daemon) == []
    auth = base64.b64encode(b"user:pass").decode()
    assert pull(daemon, ref, pb.AuthConfig(auth=auth)) == image.image_id
    remove(daemon, ref)

    error = pull_error(daemon, ref, pb.AuthConfig(username="user", password="wrong"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert reg.host in error.details()
    error = pull_error(daemon, ref, pb.AuthConfig(auth=base64.b64encode(b"user:nope").decode()))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert listed(daemon) == []


# -- bad content ------------------------------------------------------------------------------


def test_corrupted_blob_is_data_loss(make_daemon, make_registry):
    reg = make_registry()
    image = build_image([busybox_layer(), Layer([File("etc/marker", unique("corrupt"))])], cmd=["sh"])
    ref = pushed_ref(reg, "corrupt", image)
    victim = image.layers[0].digest
    hexpart = victim.split(":", 1)[1]
    data = os.path.join(reg.storage_dir, "docker/registry/v2/blobs/sha256", hexpart[:2], hexpart, "data")
    size = os.path.getsize(data)
    with open(data, "r+b") as f:  # same size, different bytes
        f.seek(size // 2)
        chunk = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))
    assert os.path.getsize(data) == size

    daemon = make_daemon()
    error = pull_error(daemon, ref)
    assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
    assert victim in error.details()
    assert listed(daemon) == []
    assert not status(daemon, ref).HasField("image")
    assert ingest_files(daemon) == []
    assert tmp_layer_dirs(daemon) == []
    assert incomplete_layer_dirs(daemon) == []


def test_hostile_layers_are_refused(make_daemon, registry, pushed_images):
    busybox = pushed_images["busybox"]
    daemon = make_daemon()
    pull(daemon, busybox.ref)  # another image's layers must survive all this
    kept = complete_layer_dirs(daemon)
    assert kept == sorted(c.split(":", 1)[1] for c in chain_ids(daemon, busybox.ref))

    token = uuid.uuid4().hex[:12]
    escape = f"rktlet-escape-{token}"
    passwd_before = os.stat("/etc/passwd")
    cases = {
        "dotdot": ([("file", "ok.txt", b"fine\n"), ("file", f"../../../../tmp/{escape}/x", b"x\n")],
                   f"../../../../tmp/{escape}/x"),
        "dotdot-deep": ([("file", "../" * 16 + f"tmp/{escape}/x", b"x\n")], "../" * 16 + f"tmp/{escape}/x"),
        "absolute": ([("file", f"/tmp/{escape}/y", b"y\n")], f"/tmp/{escape}/y"),
        "symlink": ([("symlink", "evil", f"/tmp/{escape}"), ("file", "evil/z", b"z\n")], "evil/z"),
        "symlink-dir": ([("symlink", "evil", f"/tmp/{escape}"), ("dir", "evil/sub", None)], "evil/sub/"),
        "hardlink": ([("file", "etc/ok", b"ok\n"), ("hardlink", "passwd", "../../../etc/passwd")], "passwd"),
    }
    failures = []
    for case, (members, entry) in cases.items():
        image = build_image([RawLayer(raw_tar(*members))], cmd=["sh"])
        ref = pushed_ref(registry, f"hostile/{case}-{token}", image)
        error = pull_error(daemon, ref)
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT or repr(entry) not in error.details():
            failures.append(f"{case}: {error.code()} {error.details()}")
        if case == "hardlink" and "../../../etc/passwd" not in error.details():
            failures.append(f"{case}: the message does not name the link target: {error.details()}")
        assert not os.path.exists(f"/tmp/{escape}"), case
        assert ingest_files(daemon) == [], case
        assert tmp_layer_dirs(daemon) == [], case
        assert complete_layer_dirs(daemon) == kept, case
        assert incomplete_layer_dirs(daemon) == [], case
    assert not failures, "\n".join(failures)

    # Nothing escaped anywhere: not in /tmp, not around the store.
    for top in ("/tmp", daemon.base):
        for dirpath, dirnames, filenames in os.walk(top):
            assert not any(token in n for n in dirnames + filenames), dirpath
            if top == "/tmp" and dirpath != "/tmp":
                dirnames[:] = []  # one level is enough in /tmp
    after = os.stat("/etc/passwd")
    assert (after.st_ino, after.st_nlink, after.st_size, after.st_mtime_ns) == (
        passwd_before.st_ino, passwd_before.st_nlink, passwd_before.st_size, passwd_before.st_mtime_ns)
    assert [i.id for i in listed(daemon)] == [busybox.image_id]


# -- whiteouts through overlayfs -----------------------------------------------------------------


def _umount(path: str) -> None:
    if os.path.ismount(path):
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", path], check=True, capture_output=True)


@pytest.mark.parametrize("name", ["multi-layer", "multi-layer-zstd"])
def test_whiteouts_and_opaque_dirs_through_overlay(daemon, pushed_images, name):
    image = pushed_images[name]
    assert pull(daemon, image.ref) == image.image_id
    chain = chain_ids(daemon, image.ref)
    assert len(chain) == 3
    lowers = [store_dir(daemon, "layers", c.split(":", 1)[1], "diff") for c in reversed(chain)]
    for lower in lowers:
        assert os.path.isdir(lower), lower
    base = tempfile.mkdtemp(prefix="rktlet-overlay-")
    merged = os.path.join(base, "merged")
    os.mkdir(merged)
    try:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(lowers), merged],
                       check=True, capture_output=True)
        for path, content in MULTI_LAYER_PRESENT.items():
            with open(os.path.join(merged, path), "rb") as f:
                assert f.read() == content, path
        for path in MULTI_LAYER_ABSENT:
            assert not os.path.lexists(os.path.join(merged, path)), path
        assert sorted(os.listdir(os.path.join(merged, "data/olddir"))) == ["new.txt"]
        assert os.access(os.path.join(merged, "bin/busybox"), os.X_OK)
    finally:
        _umount(merged)
        shutil.rmtree(base, ignore_errors=True)


# -- stalled, slow and interrupted downloads --------------------------------------------------------


def test_stalled_download_is_cancelled(make_daemon, make_proxy, registry, pushed_images):
    busybox = pushed_images["busybox"]
    proxy = make_proxy(registry.url, stall_after=1000)
    daemon = make_daemon(["--pull-progress-timeout", "2"])
    started = time.monotonic()
    error = pull_error(daemon, f"{proxy.host}/{busybox.repo}:{busybox.tag}", timeout=30)
    elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert "no progress" in error.details()
    assert 1.5 < elapsed < 10, elapsed
    assert "stalled" in proxy.log()
    assert ingest_files(daemon) == []
    assert tmp_layer_dirs(daemon) == []
    assert listed(daemon) == []
    # The same image, straight from the registry.
    assert pull(daemon, busybox.ref) == busybox.image_id
    assert ingest_files(daemon) == []


def test_slow_but_moving_download_succeeds(make_daemon, make_proxy, registry):
    image = build_image([random_layer(2_000_000)], cmd=["sh"])
    repo = unique("slow")
    pushed_ref(registry, repo, image)
    proxy = make_proxy(registry.url, rate=500_000)  # ~4 s for the one 2 MB layer
    daemon = make_daemon(["--pull-progress-timeout", "2"])
    started = time.monotonic()
    seen: list[dict] = []

    def watch_status() -> None:
        # While it runs, the pull shows in Status verbose info with its bytes.
        while not seen and time.monotonic() - started < 20:
            info = daemon.runtime().Status(pb.StatusRequest(verbose=True), timeout=10).info
            pulls = json.loads(info.get("imagePulls", "[]"))
            if pulls and any(layer["bytesDone"] > 0 for layer in pulls[0]["layers"]):
                seen.append(pulls[0])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    assert pull(daemon, f"{proxy.host}/{repo}:latest", timeout=30) == image.image_id
    elapsed = time.monotonic() - started
    watcher.join(5)
    assert seen and seen[0]["image"] == f"{proxy.host}/{repo}:latest", seen
    assert seen[0]["layers"][0]["bytesTotal"] == image.layers[0].size
    assert elapsed > 3, f"the proxy did not throttle ({elapsed:.1f}s)"
    assert ingest_files(daemon) == []


def test_daemon_killed_mid_pull(make_daemon, make_proxy, registry):
    # A small layer that lands quickly, and big ones still downloading at the kill.
    image = build_image([random_layer(64 * 1024, "data/small"), random_layer(8 << 20, "data/big1"),
                         random_layer(8 << 20, "data/big2")], cmd=["sh"])
    repo = unique("big")
    direct = pushed_ref(registry, repo, image)
    proxy = make_proxy(registry.url, rate=2_000_000)
    daemon = make_daemon()
    errors: list[BaseException] = []

    def background() -> None:
        try:
            pull(daemon, f"{proxy.host}/{repo}:latest", timeout=60)
        except BaseException as e:  # expected: the daemon dies under it
            errors.append(e)

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    try:
        ingest = store_dir(daemon, "ingest")

        def mid_pull() -> bool:
            try:
                partial = any(os.path.getsize(os.path.join(ingest, n)) > 100_000 for n in os.listdir(ingest))
            except FileNotFoundError:
                return False
            return partial and bool(complete_layer_dirs(daemon))

        wait_for(mid_pull, 15, "a committed layer and a partial download")
        pid = daemon.process.pid
        os.kill(pid, 9)
        daemon.process.wait(timeout=10)
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], grpc.RpcError), errors
    assert daemon.stop() == -9
    # What the dead daemon left behind, before the new one cleans up.
    assert os.listdir(ingest)

    daemon.start()
    assert listed(daemon) == []
    assert not status(daemon, direct).HasField("image")
    assert ingest_files(daemon) == []
    # Leftover layer trees are deleted in a thread right after start-up.
    wait_for(lambda: not tmp_layer_dirs(daemon) and not os.listdir(store_dir(daemon, "layers")),
             10, f"leftover layers to go: {os.listdir(store_dir(daemon, 'layers'))}")
    assert incomplete_layer_dirs(daemon) == []

    assert pull(daemon, direct) == image.image_id
    record = status(daemon, direct).image
    assert record.id == image.image_id
    assert record.repo_tags == [direct]
    assert len(complete_layer_dirs(daemon)) == 3
    assert ingest_files(daemon) == [] and tmp_layer_dirs(daemon) == []


# -- concurrency ---------------------------------------------------------------------------------------


def _pull_together(daemon: Daemon, refs: Sequence[str], timeouts: Optional[Sequence[float]] = None) -> list[Any]:
    """Pull *refs* at once, one thread each; the image ids or the errors."""
    results: list[Any] = [None] * len(refs)
    barrier = threading.Barrier(len(refs))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = pull(daemon, refs[i], timeout=timeouts[i] if timeouts else 60)
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(refs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


def _unpacked_count(daemon: Daemon, digest: str) -> int:
    return len(re.findall(rf"layer {re.escape(digest)} of \S+ unpacked", daemon.log()))


def test_concurrent_pulls_fetch_layers_once(make_daemon, make_proxy, registry):
    image = build_image([random_layer(600_000, "data/a"), random_layer(600_000, "data/b")], cmd=["sh"])
    repo = unique("together")
    pushed_ref(registry, repo, image)
    proxy = make_proxy(registry.url, rate=1_000_000)  # slow enough that the pulls overlap
    daemon = make_daemon()
    ref = f"{proxy.host}/{repo}:latest"

    assert _pull_together(daemon, [ref, ref]) == [image.image_id] * 2
    for layer in image.layers:
        assert _unpacked_count(daemon, layer.digest) == 1, daemon.log()
        assert len(proxy.requests(contains=f"/blobs/{layer.digest} 200")) == 1, proxy.log()

    # By tag and by digest at once: two pulls, still one download per layer.
    remove(daemon, ref)
    assert listed(daemon) == []
    by_digest = f"{proxy.host}/{repo}@{image.manifest_digest}"
    assert _pull_together(daemon, [ref, by_digest]) == [image.image_id] * 2
    for layer in image.layers:
        assert _unpacked_count(daemon, layer.digest) == 2, daemon.log()
        assert len(proxy.requests(contains=f"/blobs/{layer.digest} 200")) == 2, proxy.log()
    [record] = listed(daemon)
    assert record.repo_tags == [ref]
    assert record.repo_digests == [f"{proxy.host}/{repo}@{image.manifest_digest}"]

    # A caller that gives up early does not disturb the other one.
    remove(daemon, ref)
    impatient, patient = _pull_together(daemon, [ref, ref], timeouts=[0.3, 60])
    assert isinstance(impatient, grpc.RpcError) and impatient.code() == grpc.StatusCode.DEADLINE_EXCEEDED, impatient
    assert patient == image.image_id
    for layer in image.layers:
        assert _unpacked_count(daemon, layer.digest) == 3, daemon.log()
    assert [i.id for i in listed(daemon)] == [image.image_id]
    assert ingest_files(daemon) == [] and tmp_layer_dirs(daemon) == []


# -- mirrors ------------------------------------------------------------------------------------------------


def test_registry_mirror(make_daemon, registry):
    image = busybox_image()
    push_image(registry, "pause", "3.9", image)
    registry.get_manifest("pause", "3.9")
    # The image is named after a registry host that is a loopback address
    # where nothing listens (as registry.k8s.io would be for an offline node):
    # were the mirrors ever skipped, the fallback could not leave the machine.
    upstream = f"127.0.0.9:{free_port()}"
    name = f"{upstream}/pause:3.9"
    # A dead mirror first (nothing listens there): the next one is tried.
    dead = f"http://127.0.0.1:{free_port()}"
    daemon = make_daemon(["--registry-mirror", f"{upstream}={dead}",
                          "--registry-mirror", f"{upstream}={registry.url}"])
    assert pull(daemon, name) == image.image_id
    [record] = listed(daemon)
    assert record.repo_tags == [name]
    assert record.repo_digests == [f"{upstream}/pause@{image.manifest_digest}"]
    info = json.loads(status(daemon, name, verbose=True).info["info"])
    assert info["source"].startswith(f"{registry.url}/v2/pause/"), info["source"]
    assert f"mirror {dead} failed" in daemon.log()


# -- removal and garbage collection during pulls; caps on content ----------------------------------


def _chain(image: BuiltImage) -> list[str]:
    from rktlet.image.manifest import chain_ids as compute

    return [c.split(":", 1)[1] for c in compute([layer.diff_id for layer in image.layers])]


def test_remove_and_gc_during_a_pull(make_daemon, make_proxy, registry):
    """RemoveImage of another image (each runs the image GC), repeated while
    a slow pull is in flight, must not take the layers and config the pull
    has already made: the pull's image is complete, also after a restart."""
    other = build_image([random_layer(32 * 1024, "data/other")], cmd=["sh"])
    other_ref = pushed_ref(registry, unique("other"), other)
    image = build_image([random_layer(32 * 1024, "data/small"), random_layer(4 << 20, "data/big")], cmd=["sh"])
    repo = unique("racing")
    pushed_ref(registry, repo, image)
    proxy = make_proxy(registry.url, rate=1_000_000)  # ~4 s for the big layer
    daemon = make_daemon()
    ref = f"{proxy.host}/{repo}:latest"
    small_chain = _chain(image)[0]
    results: list[Any] = []

    def background() -> None:
        try:
            results.append(pull(daemon, ref, timeout=60))
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            results.append(e)

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    wait_for(lambda: small_chain in complete_layer_dirs(daemon) or results, 30, "the small layer to be unpacked")
    removals = 0
    while not results:
        pull(daemon, other_ref)
        remove(daemon, other_ref)  # the image GC runs with every removal
        removals += 1
    thread.join(10)
    assert results == [image.image_id], results
    assert removals >= 2, "the pull ended before the removals raced it"
    assert set(_chain(image)) <= set(complete_layer_dirs(daemon))
    assert os.path.exists(store_dir(daemon, "blobs", "sha256", image.image_id.split(":", 1)[1]))
    daemon.stop()
    daemon.start()
    assert [i.id for i in listed(daemon)] == [image.image_id]
    assert set(_chain(image)) == set(complete_layer_dirs(daemon))


def _zstd_bomb_layer(content: int) -> Layer:
    """A zstd layer of one file of *content* zero bytes: a few KiB, made
    (and hashed) chunk by chunk, never held whole."""
    import zstandard

    info = tarfile.TarInfo("zeros")
    info.size, info.mtime = content, LAYER_MTIME
    header = info.tobuf(tarfile.GNU_FORMAT)
    layer = RawLayer(header, "zstd bomb")
    out = io.BytesIO()
    diff = hashlib.sha256()
    writer = zstandard.ZstdCompressor(level=19).stream_writer(out, closefd=False)
    zeros = bytes(1 << 20)

    def put(data: bytes) -> None:
        diff.update(data)
        writer.write(data)

    put(header)
    for left in range(content, 0, -len(zeros)):
        put(zeros[:min(left, len(zeros))])
    put(bytes(-content % 512 + 1024))
    writer.close()
    layer.compression, layer.format = "zstd", "oci"
    layer.blob = out.getvalue()
    layer.digest = "sha256:" + hashlib.sha256(layer.blob).hexdigest()
    layer.diff_id = "sha256:" + diff.hexdigest()
    return layer


def test_decompression_bomb_is_refused_naming_the_layer(make_daemon, registry):
    bomb = _zstd_bomb_layer(512 << 20)
    assert len(bomb.blob) < 64 * 1024
    image = build_image([bomb], format="oci", cmd=["sh"])
    ref = pushed_ref(registry, unique("bomb"), image)
    daemon = make_daemon(["--max-image-bytes", "64Mi"])
    error = pull_error(daemon, ref)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert bomb.digest in error.details() and "max-image-bytes" in error.details(), error.details()
    assert listed(daemon) == []
    assert tmp_layer_dirs(daemon) == [] and complete_layer_dirs(daemon) == []
    assert ingest_files(daemon) == []


def test_image_caps(make_daemon, registry):
    layers = [Layer([File(f"f{i}/x", str(i))]) for i in range(4)]
    image = build_image(layers, cmd=["sh"])
    ref = pushed_ref(registry, unique("caps"), image)
    daemon = make_daemon(["--max-image-layers", "3", "--max-image-inodes", "1000"])
    error = pull_error(daemon, ref)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "4 layers" in error.details() and "max-image-layers" in error.details()

    many = Layer([File(f"d/f{i}", "") for i in range(600)])
    image = build_image([many, Layer([File(f"e/f{i}", "") for i in range(600)])], cmd=["sh"])
    ref = pushed_ref(registry, unique("inodes"), image)
    error = pull_error(daemon, ref)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "inodes" in error.details()
    assert any(layer.digest in error.details() for layer in image.layers), error.details()
    # The pull answers as soon as one layer is over the cap; the image's other
    # layers still unpacking are cancelled and their partial directories go
    # as their threads stop, a moment later.
    deadline = time.monotonic() + 10
    while tmp_layer_dirs(daemon) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listed(daemon) == [] and tmp_layer_dirs(daemon) == []

    small = build_image([Layer([File("ok", "ok")])], cmd=["sh"])
    assert pull(daemon, pushed_ref(registry, unique("small"), small)) == small.image_id
