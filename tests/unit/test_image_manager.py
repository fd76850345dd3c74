"""rktlet.image.manager on fakes: a fake registry serving images built by
``harness/images.py``, a fake unpacker (or the real one where the
limits are the point), a Clock for the watchdog, and "threads" that run at
once or when the test says.

Covers pulls racing image removal and garbage collection, layer jobs that
fail at once, the caps on image content, bounded download concurrency and
the watchdog over unpacking.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any, Callable

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from rktlet.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from rktlet.image.manager import ImageLimits, ImageManager
from rktlet.image.registry import Manifest
from rktlet.image.store import ImageStore
from rktlet.image.unpack import Limits, UnpackCancelled, UnpackResult, unpack_layer
from harness.images import BuiltImage, File, Layer, build_image

REGISTRY = "registry.test"


def result_of(d: Deferred) -> Any:
    """The result of a fired Deferred (raising its failure)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d: Deferred) -> BaseException:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    assert isinstance(box[0], Failure), f"expected a failure, got {box[0]!r}"
    return box[0].value


class FakeRegistry:
    """Serves pushed images; blob downloads can be held (``hold``) or fail
    at once, synchronously (``fail_once``)."""

    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {}
        self.blobs: dict[str, bytes] = {}
        self.held: dict[str, list[tuple[Deferred, Callable[[], int], Any]]] = {}
        self.hold_digests: set[str] = set()
        self.fail_once: set[str] = set()
        self.calls: Counter[str] = Counter()

    def push(self, name: str, image: BuiltImage) -> str:
        ref = f"{REGISTRY}/{name}:latest"
        self.manifests[ref] = Manifest(image.manifest_media_type, image.manifest, image.manifest_digest,
                                       f"https://{REGISTRY}/v2/{name}/manifests/latest")
        for digest, data in image.blobs():
            self.blobs[digest] = data
        return ref

    def get_manifest(self, ref: Any, accept: Any, credentials: Any = None, reference: Any = None) -> Deferred:
        return succeed(self.manifests[str(ref)])

    def get_blob(self, ref: Any, digest: str, dest: str, credentials: Any = None, progress: Any = None,
                 expected_size: Any = None) -> Deferred:
        self.calls[digest] += 1
        if digest in self.fail_once:
            self.fail_once.discard(digest)
            return fail(Unavailable(f"blob {digest}: registry unavailable"))

        def write() -> int:
            with open(dest, "wb") as f:
                f.write(self.blobs[digest])
            return len(self.blobs[digest])

        if digest in self.hold_digests:
            d: Deferred = Deferred()
            self.held.setdefault(digest, []).append((d, write, progress))
            return d
        return succeed(write())

    def release(self, digest: str) -> None:
        for d, write, _ in self.held.pop(digest):
            d.callback(write())

    def downloading(self) -> int:
        return sum(len(v) for v in self.held.values())

    def close(self) -> Deferred:
        return succeed(None)


def fake_unpack(blob: str, target: str, compression: Any = None, *, limits: Limits | None = None,
                control: Any = None, name: str | None = None) -> UnpackResult:
    """Uncompressed layers only: the blob is the tar, its digest the diff_id."""
    with open(blob, "rb") as f:
        data = f.read()
    with open(os.path.join(target, "content"), "wb") as f:
        f.write(data)
    return UnpackResult("sha256:" + hashlib.sha256(data).hexdigest(), len(data), 2)


class Env:
    def __init__(self, tmp_path: Any, unpack: Callable[..., Any] = fake_unpack, limits: ImageLimits | None = None,
                 timeout: float = 60.0) -> None:
        self.clock = Clock()
        self.registry = FakeRegistry()
        self.store = ImageStore(str(tmp_path / "root"))
        self.store.load()
        self.manager = ImageManager(self.clock, self.store, self.registry, None, pull_progress_timeout=timeout,  # type: ignore[arg-type]
                                    unpack=unpack, limits=limits)
        #: "threads" that are held: (function name, Deferred) in start order.
        self.held_threads: list[tuple[str, Deferred, tuple]] = []
        self.hold_unpacks = False
        self.manager._in_thread = self._in_thread  # type: ignore[method-assign]

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        if self.hold_unpacks and getattr(fn, "__name__", "") == "_unpack_one":
            d: Deferred = Deferred()
            self.held_threads.append((fn.__name__, d, args))
            return d
        return maybeDeferred(fn, *args)

    def image(self, name: str, *contents: str) -> tuple[str, BuiltImage]:
        layers = [Layer([File(f"{name}/{i}", text)], compression="none", format="oci") for i, text in enumerate(contents)]
        image = build_image(layers, format="oci")
        return self.registry.push(name, image), image

    def chain(self, image: BuiltImage) -> list[str]:
        from rktlet.image.manifest import chain_ids

        return chain_ids([layer.diff_id for layer in image.layers])

    def assert_complete(self, image: BuiltImage) -> None:
        """The image's record, layers and config are in the store, and a
        fresh load of the store keeps it."""
        record = self.store.images[image.image_id]
        for chain_id in record.chain_ids:
            assert self.store.layer(chain_id) is not None, chain_id
            assert os.path.isdir(self.store.layer_diff_dir(chain_id)), chain_id
        assert self.store.has_blob(image.image_id)
        assert self.store.has_blob(image.manifest_digest)
        fresh = ImageStore(os.path.dirname(self.store.dir))
        fresh.load()
        assert image.image_id in fresh.images


# -- pulls racing removal and garbage collection ----------------------------------------


def test_remove_and_gc_during_a_pull_keep_what_the_pull_made(tmp_path) -> None:
    env = Env(tmp_path)
    ref_a, image_a = env.image("a", "only in a")
    ref_b, image_b = env.image("b", "first of b", "second of b")
    result_of(env.manager.pull(ref_a))
    slow = image_b.layers[1].digest
    env.registry.hold_digests.add(slow)
    pulling = env.manager.pull(ref_b)
    first_chain = env.chain(image_b)[0]
    assert env.store.layer(first_chain) is not None  # the first layer is committed
    # The kubelet removes another image, and its image GC runs, meanwhile.
    assert result_of(Deferred.fromCoroutine(env.manager.remove(ref_a))) is not None
    result_of(Deferred.fromCoroutine(env.manager.collect_garbage()))
    assert env.store.layer(first_chain) is not None
    assert env.store.has_blob(image_b.image_id)
    env.registry.release(slow)
    record = result_of(pulling)
    assert record.id == image_b.image_id
    env.assert_complete(image_b)
    # Once recorded, the image keeps its own; image a is gone for good.
    result_of(Deferred.fromCoroutine(env.manager.collect_garbage()))
    env.assert_complete(image_b)
    assert image_a.image_id not in env.store.images
    assert env.store.layer(env.chain(image_a)[0]) is None
    assert not env.store.has_blob(image_a.image_id)


def test_gc_during_a_pull_of_an_image_whose_layers_are_present(tmp_path) -> None:
    """A pull that finds a layer already there (left by a removed image)
    keeps it although nothing else refers to it."""
    env = Env(tmp_path)
    shared = "shared layer"
    ref_a, image_a = env.image("a", shared)
    ref_b, image_b = env.image("b", shared, "own layer of b")
    result_of(env.manager.pull(ref_a))
    env.store.remove_image(env.store.images[image_a.image_id])  # removed, not yet collected
    env.registry.hold_digests.add(image_b.layers[1].digest)
    pulling = env.manager.pull(ref_b)
    result_of(Deferred.fromCoroutine(env.manager.collect_garbage()))
    assert env.store.layer(env.chain(image_b)[0]) is not None
    env.registry.release(image_b.layers[1].digest)
    result_of(pulling)
    env.assert_complete(image_b)
    assert env.registry.calls[image_b.layers[0].digest] == 1  # found, not fetched again


def test_pins_are_released_when_a_pull_fails(tmp_path) -> None:
    env = Env(tmp_path)
    ref, image = env.image("a", "one", "two")
    env.registry.fail_once.add(image.layers[1].digest)
    assert isinstance(failure_of(env.manager.pull(ref)), Unavailable)
    result_of(Deferred.fromCoroutine(env.manager.collect_garbage()))
    assert env.store.layer(env.chain(image)[0]) is None
    assert not env.store.has_blob(image.image_id)
    assert not env.manager._pinned_layers and not env.manager._pinned_blobs


# -- jobs that fail at once ------------------------------------------------------------------


def test_layer_job_failing_at_once_is_retried_by_the_next_pull(tmp_path) -> None:
    env = Env(tmp_path)
    ref, image = env.image("a", "one")
    digest = image.layers[0].digest
    env.registry.fail_once.add(digest)
    assert isinstance(failure_of(env.manager.pull(ref)), Unavailable)
    assert env.manager._layer_jobs == {}
    assert result_of(env.manager.pull(ref)).id == image.image_id
    assert env.registry.calls[digest] == 2
    env.assert_complete(image)


def test_pull_failing_at_once_is_retried(tmp_path) -> None:
    env = Env(tmp_path)
    ref, image = env.image("a", "one")
    manifest = env.registry.manifests.pop(ref)

    def broken(*args: Any, **kwargs: Any) -> Deferred:
        return fail(Unavailable("registry down"))

    env.registry.get_manifest = broken  # type: ignore[method-assign]
    assert isinstance(failure_of(env.manager.pull(ref)), Unavailable)
    assert env.manager._pulls == {}
    env.registry.manifests[ref] = manifest
    del env.registry.get_manifest
    assert result_of(env.manager.pull(ref)).id == image.image_id


# -- caps on image content ---------------------------------------------------------------------


def test_too_many_layers(tmp_path) -> None:
    env = Env(tmp_path, limits=ImageLimits(max_layers=2))
    ref, image = env.image("a", "1", "2", "3")
    error = failure_of(env.manager.pull(ref))
    assert isinstance(error, ResourceExhausted)
    assert "3 layers" in str(error) and "max-image-layers" in str(error)
    assert sum(env.registry.calls.values()) == 0


def test_config_too_large(tmp_path) -> None:
    env = Env(tmp_path, limits=ImageLimits(max_config_size=100))
    ref, image = env.image("a", "1")
    error = failure_of(env.manager.pull(ref))
    assert isinstance(error, ResourceExhausted)
    assert image.config_digest in str(error) and "max-image-config-size" in str(error)
    assert env.registry.calls[image.config_digest] == 0  # refused before fetching it


def test_compressed_layer_larger_than_the_image_may_be(tmp_path) -> None:
    env = Env(tmp_path, limits=ImageLimits(max_bytes=1000, max_inodes=10))
    import rktlet.image.unpack.limits as unpack_limits

    slack = unpack_limits.STREAM_SLACK
    unpack_limits.STREAM_SLACK = 0
    try:
        ref, image = env.image("a", "x" * 100_000)
        error = failure_of(env.manager.pull(ref))
    finally:
        unpack_limits.STREAM_SLACK = slack
    assert isinstance(error, ResourceExhausted)
    assert image.layers[0].digest in str(error)
    assert env.registry.calls[image.layers[0].digest] == 0


def test_unpacker_gets_the_limits_and_the_image_budget(tmp_path) -> None:
    seen: list[Limits] = []

    def unpack(blob: str, target: str, compression: Any = None, **kw: Any) -> UnpackResult:
        seen.append(kw["limits"])
        assert kw["name"].startswith("layer sha256:")
        return fake_unpack(blob, target)

    env = Env(tmp_path, unpack=unpack, limits=ImageLimits(max_bytes=100_000, max_inodes=50))
    ref, image = env.image("a", "1", "2")
    result_of(env.manager.pull(ref))
    assert len(seen) == 2
    assert {(lim.max_bytes, lim.max_inodes) for lim in seen} == {(100_000, 50)}
    assert seen[0].shared is seen[1].shared is not None


def test_layers_together_over_the_byte_cap_name_the_layer(tmp_path) -> None:
    """Layers unpacked by another pull are charged in the final check."""
    env = Env(tmp_path, limits=ImageLimits(max_bytes=15_000))  # the fake unpacker reports the tar's size
    ref_a, image_a = env.image("a", "a" * 1000)
    assert len(image_a.layers[0].blob) < 15_000
    result_of(env.manager.pull(ref_a))
    # b reuses a's layer (present) and adds another: together over the cap.
    layers = [image_a.layers[0], Layer([File("b/1", "b" * 1000)], compression="none", format="oci")]
    image_b = build_image(layers, format="oci")
    ref_b = env.registry.push("b", image_b)
    error = failure_of(env.manager.pull(ref_b))
    assert isinstance(error, ResourceExhausted), error
    assert image_b.layers[1].digest in str(error)
    assert "max-image-bytes" in str(error)
    assert image_b.image_id not in env.store.images


@pytest.mark.skipif(os.geteuid() != 0, reason="the real unpacker restores owners: needs root")
def test_decompression_bomb_is_refused_naming_the_layer(tmp_path) -> None:
    from tests.unit.test_unpack import zstd_bomb

    env = Env(tmp_path, unpack=unpack_layer, limits=ImageLimits(max_bytes=1 << 20, max_inodes=1000))
    bomb = zstd_bomb(64 << 20)
    layer = Layer([File("small", "x")], compression="zstd", format="oci")
    image = build_image([layer], format="oci")
    # Swap in the bomb: its digest and diff_id differ, so patch the manifest and config.
    import json

    from harness import images as support

    tar = support.decompress(bomb)
    config = image.config_json
    config["rootfs"]["diff_ids"] = ["sha256:" + hashlib.sha256(tar).hexdigest()]
    config_bytes = json.dumps(config).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = image.manifest_json
    bomb_digest = "sha256:" + hashlib.sha256(bomb).hexdigest()
    manifest["layers"][0].update(digest=bomb_digest, size=len(bomb))
    manifest["config"].update(digest=config_digest, size=len(config_bytes))
    body = json.dumps(manifest).encode()
    ref = f"{REGISTRY}/bomb:latest"
    env.registry.manifests[ref] = Manifest(image.manifest_media_type, body, "sha256:" + hashlib.sha256(body).hexdigest(), ref)
    env.registry.blobs.update({bomb_digest: bomb, config_digest: config_bytes})
    assert len(bomb) < 16 << 10
    error = failure_of(env.manager.pull(ref))
    assert isinstance(error, ResourceExhausted), error
    assert bomb_digest in str(error) and "1048576 bytes" in str(error)
    assert os.listdir(env.store.layers_dir) == []  # the partial layer is gone


# -- download concurrency and the watchdog -------------------------------------------------


def test_downloads_are_bounded_across_pulls(tmp_path) -> None:
    env = Env(tmp_path, limits=ImageLimits(max_concurrent_downloads=2))
    ref_a, image_a = env.image("a", "1", "2", "3")
    ref_b, image_b = env.image("b", "4", "5")
    env.registry.hold_digests.update(layer.digest for layer in image_a.layers + image_b.layers)
    a = env.manager.pull(ref_a)
    b = env.manager.pull(ref_b)
    assert env.registry.downloading() == 2
    states = Counter(layer["state"] for pull in env.manager.pulls_info() for layer in pull["layers"])
    assert states == {"downloading": 2, "queued": 3}
    while env.registry.held:
        assert env.registry.downloading() <= 2
        env.registry.release(next(iter(env.registry.held)))
    result_of(a), result_of(b)
    env.assert_complete(image_a)
    env.assert_complete(image_b)


def test_queued_layers_are_not_stalled_while_downloads_move(tmp_path) -> None:
    env = Env(tmp_path, limits=ImageLimits(max_concurrent_downloads=1), timeout=10)
    ref, image = env.image("a", "1", "2")
    env.registry.hold_digests.update(layer.digest for layer in image.layers)
    pulling = env.manager.pull(ref)
    (_, _, progress), = env.registry.held[image.layers[0].digest]
    for i in range(12):  # 60 s of a slow download that keeps moving
        env.clock.advance(5)
        progress(i + 1, 100)
    assert not pulling.called
    env.clock.advance(15)  # then nothing
    error = failure_of(pulling)
    assert isinstance(error, DeadlineExceeded)
    assert "no progress" in str(error)


def test_stuck_unpack_is_cancelled_by_the_watchdog(tmp_path) -> None:
    env = Env(tmp_path, timeout=10)
    env.hold_unpacks = True
    ref, image = env.image("a", "1")
    pulling = env.manager.pull(ref)
    (_, thread, args), = env.held_threads
    control = args[3]
    for i in range(10):  # an unpack that moves is not stalled
        control.offset += 512
        env.clock.advance(5)
    assert not pulling.called and not control.cancelled
    env.clock.advance(15)  # stuck
    assert control.cancelled  # the thread is told to stop
    error = failure_of(pulling)
    assert isinstance(error, DeadlineExceeded) and "1 unpacking" in str(error), error
    assert os.listdir(env.store.layers_dir)  # cleaned up once the thread has ended
    thread.errback(UnpackCancelled("cancelled"))
    assert os.listdir(env.store.layers_dir) == []
    assert env.manager._layer_jobs == {} and env.manager._unpacks == {}


def test_cancelled_pull_cancels_its_unpack(tmp_path) -> None:
    env = Env(tmp_path)
    env.hold_unpacks = True
    ref, image = env.image("a", "1")
    pulling = env.manager.pull(ref)
    (_, thread, args), = env.held_threads
    pulling.cancel()
    assert args[3].cancelled
    thread.errback(UnpackCancelled("cancelled"))
    assert isinstance(failure_of(pulling), CancelledError)
    assert env.manager._layer_jobs == {} and env.manager._unpacks == {}
