"""Image operations: pull, list, status, remove, file-system usage.

A pull resolves the reference, fetches the manifest (choosing this host's
platform from an index), the config and every missing layer — downloads run
concurrently, each verified against its digest, then unpacked in a thread —
and records the image only when all of it is in place. Pulls of the same
reference, and downloads of the same layer, in flight at once are done once.
A pull whose downloads (or unpacking) make no progress for
``pull_progress_timeout`` seconds is cancelled; one that keeps moving,
however slowly, is not.

Every chain id and blob digest a pull has found or made is pinned until its
image record is written, so an image removal or garbage collection running
meanwhile never takes them away.

Images are bounded (:class:`ImageLimits`): layers, config size, bytes and
inodes of the unpacked layers (each layer, and all of them together, are
charged as they unpack); layer downloads across all pulls are limited to a
few at once.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, DeferredSemaphore
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool

from rktlet import logs
from rktlet.deferutil import Shared, all_or_nothing, finished
from rktlet.errors import DeadlineExceeded, DigestMismatch, NotFound, ResourceExhausted, RktletError
from rktlet.image import manifest as manifests
from rktlet.image import reference as references
from rktlet.image.registry import Credentials, RegistryClient
from rktlet.image.settings import PullSettings
from rktlet.image.store import ImageRecord, ImageStore, LayerInfo, delete_paths, usage
from rktlet.image.unpack import Budget, Control, Limits, unpack_layer

log = logs.logger("rktlet.image")

# How often a running pull logs its progress at info level.
PROGRESS_LOG_INTERVAL = 10.0
# How long a measured store usage is reused for ImageFsInfo.
USAGE_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class ImageLimits:
    """What one image may hold (see the ``max-*`` options).

    :ivar max_bytes: bytes of files its unpacked layers hold (each layer, and
        all of them together).
    :ivar max_inodes: inodes likewise (a layer's tar entries too).
    :ivar max_layers: layers in its manifest.
    :ivar max_config_size: bytes of its config blob (parsed in memory).
    :ivar max_concurrent_downloads: layer downloads at once, all pulls together.
    """

    max_bytes: int = 32 << 30
    max_inodes: int = 2_000_000
    max_layers: int = 128
    max_config_size: int = 4 << 20
    max_concurrent_downloads: int = 3


@dataclass
class LayerProgress:
    """One layer of a pull: bytes done of total, and what is happening."""

    digest: str
    total: int
    done: int = 0
    state: str = "waiting"  # waiting, queued, downloading, unpacking, done, present
    changed: float = 0.0


@dataclass
class PullProgress:
    """A pull in flight, as ``Status`` verbose shows it."""

    image: str
    started: float
    changed: float
    phase: str = "resolving"
    layers: dict[str, LayerProgress] = field(default_factory=dict)

    def touch(self, now: float) -> None:
        self.changed = now

    def last_activity(self) -> float:
        times = [self.changed] + [layer.changed for layer in self.layers.values()]
        return max(times)

    def queued(self) -> bool:
        return any(layer.state == "queued" for layer in self.layers.values())

    def summary(self) -> str:
        done = sum(layer.done for layer in self.layers.values())
        total = sum(layer.total for layer in self.layers.values())
        finished_layers = sum(layer.state in ("done", "present") for layer in self.layers.values())
        busy = Counter(layer.state for layer in self.layers.values() if layer.state not in ("done", "present"))
        states = f" ({', '.join(f'{n} {state}' for state, n in sorted(busy.items()))})" if busy else ""
        return f"{self.phase}, {finished_layers}/{len(self.layers)} layers{states}, {_mib(done)} of {_mib(total)}"

    def as_info(self, now: float) -> dict[str, Any]:
        return {
            "image": self.image,
            "phase": self.phase,
            "seconds": round(now - self.started, 1),
            "idleSeconds": round(now - self.last_activity(), 1),
            "layers": [
                {"digest": layer.digest, "state": layer.state, "bytesDone": layer.done, "bytesTotal": layer.total}
                for layer in self.layers.values()
            ],
        }


@dataclass(frozen=True)
class _PullSetup:
    """What a pull uses from start to end: the settings, and the registry
    client made for them. Replaced whole (one assignment) on reload."""

    settings: PullSettings
    registry: RegistryClient


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


class PullReports(Protocol):
    """Where the image manager reports what metrics count
    (``rktlet.metrics.images.ImageMetrics``)."""

    def pull_started(self) -> None:
        """A pull began (one per image, however many callers wait for it)."""

    def pull_ended(self, seconds: float, error: BaseException | None = None) -> None:
        """A pull ended after *seconds*: successfully, or with *error*."""

    def bytes_fetched(self, count: int) -> None:
        """*count* more bytes of a layer blob arrived."""


class ImageManager:
    """The image side of the runtime.

    :param reactor: provides ``callLater``/``seconds`` and the thread handoff.
    :param store: the on-disk store (loaded by :meth:`load`).
    :param registry: the registry client.
    :param threadpool: where unpacking and tree removal run.
    :param pull_progress_timeout: seconds without progress before a pull is cancelled.
    :param platform: the platform chosen from multi-platform indexes.
    :param unpack: the layer unpacker (``unpack_layer``), replaceable in tests.
    :param limits: the caps on an image's content.
    :param settings: the reloadable settings *registry* was made with (its
        mirrors and insecure registries), for :meth:`configure`; default:
        none of those, and *pull_progress_timeout*.
    """

    def __init__(
        self,
        reactor: Any,
        store: ImageStore,
        registry: RegistryClient,
        threadpool: Any,
        pull_progress_timeout: float = 300.0,
        platform: manifests.Platform | None = None,
        unpack: Callable[..., Any] = unpack_layer,
        limits: ImageLimits | None = None,
        settings: PullSettings | None = None,
    ) -> None:
        self._reactor = reactor
        self.store = store
        self._threadpool = threadpool
        if settings is None:
            settings = PullSettings(progress_timeout=pull_progress_timeout)
        # New pulls take this (immutable) pair; configure() replaces it.
        self._setup = _PullSetup(settings, registry)
        self._platform = platform or manifests.host_platform()
        self._unpack = unpack
        # Who else uses layers (containers): see keep_layers_used_by.
        self._layer_users: list[Callable[[], Iterable[str]]] = []
        self._pulls: dict[str, Shared] = {}
        self._progress: dict[str, PullProgress] = {}
        self._layer_jobs: dict[str, Shared] = {}
        self._layer_progress: dict[str, list[LayerProgress]] = {}
        self._configs: dict[str, manifests.ImageConfig] = {}
        self._usage: tuple[float, int, int] | None = None
        self.limits = limits or ImageLimits()
        self._downloads = DeferredSemaphore(self.limits.max_concurrent_downloads)
        # When any layer download last received data (queued layers wait for it).
        self._download_activity = 0.0
        # Chain ids and blob digests pulls in flight have found or made.
        self._pinned_layers: Counter[str] = Counter()
        self._pinned_blobs: Counter[str] = Counter()
        # The unpacks running, by chain id: their control and the offset last seen.
        self._unpacks: dict[str, list[Any]] = {}
        # Writes of the image records, one at a time (see _save_records).
        self._records_lock = DeferredLock()
        #: Where pulls are reported (rktlet.metrics.images.ImageMetrics), or None.
        self.metrics: PullReports | None = None

    def keep_layers_used_by(self, user: Callable[[], Iterable[str]]) -> None:
        """Garbage collection and image removal keep the layers (chain ids)
        *user* returns, e.g. the container manager's: its containers'
        root filesystems are overlays of them."""
        self._layer_users.append(user)

    def _layers_in_use(self) -> list[str]:
        return [chain for user in self._layer_users for chain in user()]

    def close(self) -> Deferred:
        """Close the registry client's pooled connections (at shutdown)."""
        return self._setup.registry.close()

    @property
    def settings(self) -> PullSettings:
        """The settings new pulls use."""
        return self._setup.settings

    def configure(self, settings: PullSettings) -> None:
        """New pulls use *settings* (mirrors, insecure registries, progress
        timeout); pulls in flight keep what they started with. On the
        reactor thread."""
        old = self._setup
        if settings == old.settings:
            return
        insecure_changed = settings.insecure_registries != old.settings.insecure_registries
        mirrors_changed = settings.mirrors != old.settings.mirrors
        registry = old.registry
        if insecure_changed or mirrors_changed:
            registry = registry.reconfigured(
                is_insecure=settings.is_insecure if insecure_changed else None,
                mirrors=settings.mirror_map() if mirrors_changed else None,
            )
        self._setup = _PullSetup(settings, registry)
        if not registry.shares_connections_with(old.registry):
            # Idle connections only: those of pulls in flight stay theirs
            # (and are dropped by the pool's idle timeout afterwards).
            old.registry.close()

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def load(self) -> tuple[list[str], list[str]]:
        """Load the store (blocking: at start-up, before serving).

        :returns: ``(directories, files)`` that interrupted pulls or removals
            left behind, for :meth:`delete_leftovers`.
        """
        trash = self.store.load()
        dirs, files = self.store.garbage(self._layers_in_use())
        return trash + dirs, files

    def delete_leftovers(self, leftovers: tuple[list[str], list[str]]) -> Deferred:
        """Delete what :meth:`load` found, in a thread."""
        dirs, files = leftovers
        return self._in_thread(delete_paths, dirs, files)

    # -- queries --------------------------------------------------------------

    def list(self) -> list[ImageRecord]:
        """Every image."""
        return sorted(self.store.images.values(), key=lambda r: r.id)

    def find(self, name: str) -> ImageRecord | None:
        """The image *name* (id, tag or digest reference) refers to."""
        return self.store.find(name)

    def config(self, record: ImageRecord) -> manifests.ImageConfig:
        """The parsed config of *record* (read once, then cached)."""
        cached = self._configs.get(record.id)
        if cached is None:
            cached = manifests.parse_config(self.store.read_blob(record.id), record.id)
            self._configs[record.id] = cached
        return cached

    def pulls_info(self) -> list[dict[str, Any]]:
        """The pulls in flight with per-layer bytes, for ``Status`` verbose."""
        now = self._reactor.seconds()
        return [p.as_info(now) for p in self._progress.values()]

    # -- pull -----------------------------------------------------------------

    def pull(self, image: str, credentials: Credentials | None = None) -> Deferred:
        """Pull *image*; fires with its :class:`ImageRecord`.

        Concurrent pulls of the same reference share one pull; cancelling one
        caller's Deferred leaves the others' pull running.
        """
        ref = references.parse(image)
        key = str(ref)
        shared = self._pulls.get(key)
        if shared is None:
            operation = Deferred.fromCoroutine(self._pull(ref, credentials))
            shared = Shared(operation)
            self._pulls[key] = shared
            # Attached after storing: a pull that fails at once must not stay.
            operation.addBoth(self._forget_job, self._pulls, key, shared)
        return shared.wait()

    @staticmethod
    def _forget_job(result: Any, jobs: dict[str, Shared], key: str, job: Shared) -> Any:
        if jobs.get(key) is job:
            del jobs[key]
        return result

    async def _pull(self, ref: references.Reference, credentials: Credentials | None) -> ImageRecord:
        now = self._reactor.seconds()
        progress = PullProgress(str(ref), now, now)
        key = str(ref)
        self._progress[key] = progress
        setup = self._setup  # this pull's settings, whatever a reload does meanwhile
        timeout = setup.settings.progress_timeout
        work = Deferred.fromCoroutine(self._pull_steps(setup.registry, ref, credentials, progress))
        stalled: list[str] = []

        def watch() -> None:
            now = self._reactor.seconds()
            for chain_id, layer in progress.layers.items():
                if layer.state == "unpacking":
                    self._poll_unpack(chain_id)
            activity = progress.last_activity()
            if progress.queued():
                # Waiting for a download slot is progress while the downloads
                # holding the slots receive data.
                activity = max(activity, self._download_activity)
            idle = now - activity
            if idle >= timeout:
                stalled.append(f"pull of {ref} made no progress for {idle:.0f}s ({progress.summary()}); cancelled")
                work.cancel()

        def report() -> None:
            log.info("pulling {image}: {summary}", image=key, summary=progress.summary())

        watchdog = LoopingCall(watch)
        watchdog.clock = self._reactor
        watchdog.start(min(timeout / 4, 5.0), now=False)
        reporter = LoopingCall(report)
        reporter.clock = self._reactor
        reporter.start(PROGRESS_LOG_INTERVAL, now=False)
        started = self._reactor.seconds()
        if self.metrics is not None:
            self.metrics.pull_started()
        error: BaseException | None = None
        try:
            record = await work
        except CancelledError:
            if stalled:
                log.warn("{error}", error=stalled[0], image=key)
                error = DeadlineExceeded(stalled[0])
                raise logs.mark_logged(error) from None
            error = CancelledError()
            raise
        except RktletError as e:
            error = e
            log.warn("pull of {image} failed: {error}", image=key, error=str(e))
            raise logs.mark_logged(e)
        except BaseException as e:
            error = e
            raise
        finally:
            watchdog.stop()
            reporter.stop()
            del self._progress[key]
            if self.metrics is not None:
                self.metrics.pull_ended(self._reactor.seconds() - started, error)
        log.info("pulled {image} as {image_id} in {seconds:.2f}s ({summary})",
                 image=key, image_id=record.id, seconds=self._reactor.seconds() - started, summary=progress.summary())
        return record

    async def _pull_steps(self, registry: RegistryClient, ref: references.Reference, credentials: Credentials | None,
                          progress: PullProgress) -> ImageRecord:
        pins: tuple[list[str], list[str]] = ([], [])
        try:
            return await self._pull_pinned(registry, ref, credentials, progress, pins)
        finally:
            layers, blobs = pins
            self._pinned_layers.subtract(layers)
            self._pinned_blobs.subtract(blobs)
            self._pinned_layers += Counter()  # drops the zero counts
            self._pinned_blobs += Counter()

    def _pin(self, pins: tuple[list[str], list[str]], layers: Sequence[str] = (), blobs: Sequence[str] = ()) -> None:
        pins[0].extend(layers)
        pins[1].extend(blobs)
        self._pinned_layers.update(layers)
        self._pinned_blobs.update(blobs)

    async def _pull_pinned(
        self,
        registry: RegistryClient,
        ref: references.Reference,
        credentials: Credentials | None,
        progress: PullProgress,
        pins: tuple[list[str], list[str]],
    ) -> ImageRecord:
        limits = self.limits
        top = await registry.get_manifest(ref, manifests.ACCEPT, credentials)
        progress.touch(self._reactor.seconds())
        where = top.source
        parsed = manifests.parse_manifest(top.media_type, top.body, where)
        index_digest = ""
        platform_manifest = top
        if isinstance(parsed, manifests.ImageIndex):
            index_digest = top.digest
            chosen = manifests.select_platform(parsed, self._platform, where)
            platform_manifest = await registry.get_manifest(
                ref, manifests.MANIFEST_TYPES, credentials, reference=chosen.digest
            )
            parsed = manifests.parse_manifest(platform_manifest.media_type, platform_manifest.body, platform_manifest.source)
            if not isinstance(parsed, manifests.ImageManifest):
                raise NotFound(f"{where}: index entry {chosen.digest} is not an image manifest")
        assert isinstance(parsed, manifests.ImageManifest)
        if len(parsed.layers) > limits.max_layers:
            raise ResourceExhausted(
                f"{where}: the image has {len(parsed.layers)} layers, over the limit of {limits.max_layers} "
                f"(max-image-layers)")
        config_digest = parsed.config.digest
        if parsed.config.size > limits.max_config_size:
            raise ResourceExhausted(
                f"{where}: config {config_digest} is {parsed.config.size} bytes, over the limit of "
                f"{limits.max_config_size} (max-image-config-size)")
        layer_limits = Limits(max_bytes=limits.max_bytes, max_inodes=limits.max_inodes)
        for layer in parsed.layers:
            if layer.size > (layer_limits.max_stream or 0):
                raise ResourceExhausted(
                    f"{where}: layer {layer.digest} is {layer.size} bytes compressed, more than an image of at most "
                    f"{limits.max_bytes} bytes of files can hold (max-image-bytes)")
        self._pin(pins, blobs=[top.digest, platform_manifest.digest, config_digest])
        progress.phase = "config"
        progress.touch(self._reactor.seconds())
        if not self.store.has_blob(config_digest):
            path = self.store.ingest_path()
            try:
                await registry.get_blob(ref, config_digest, path, credentials, expected_size=parsed.config.size)
                await self._in_thread(self.store.commit_blob, path, config_digest)
            finally:
                if os.path.exists(path):
                    os.unlink(path)
        config = await self._in_thread(self._read_config, config_digest, f"{where} config {config_digest}")
        if len(config.diff_ids) != len(parsed.layers):
            raise DigestMismatch(
                f"{where}: manifest lists {len(parsed.layers)} layers but its config {config_digest} "
                f"lists {len(config.diff_ids)} diff ids"
            )
        chain = manifests.chain_ids(config.diff_ids)
        self._pin(pins, layers=chain)
        progress.phase = "layers"
        # The image's budget: what its present layers hold, then what its new ones add as they unpack.
        budget = Budget(limits.max_bytes, limits.max_inodes)
        for chain_id in chain:
            if (info := self.store.layer(chain_id)) is not None:
                budget.bytes += info.size
                budget.inodes += info.inodes
        jobs = []
        for i, layer in enumerate(parsed.layers):
            lp = LayerProgress(layer.digest, layer.size, changed=self._reactor.seconds())
            progress.layers[chain[i]] = lp
            if self.store.layer(chain[i]) is not None:
                lp.state, lp.done = "present", layer.size
                continue
            jobs.append(self._layer(registry, ref, credentials, layer, config.diff_ids[i], chain[i], chain[i - 1] if i else "",
                                    lp, Limits(limits.max_bytes, limits.max_inodes, budget)))
        if jobs:
            await all_or_nothing(jobs)
        self._check_totals(ref, parsed.layers, chain)
        progress.phase = "recording"
        for digest, body in ((top.digest, top.body), (platform_manifest.digest, platform_manifest.body)):
            await self._in_thread(self.store.put_blob, digest, body)
        size = sum(info.size for c in chain if (info := self.store.layer(c)) is not None) + parsed.config.size
        record = ImageRecord(
            id=config_digest,
            repo_tags=[ref.repo_tag] if ref.repo_tag else [],
            repo_digests=[f"{ref.name}@{top.digest}"],
            chain_ids=list(chain),
            size=size,
            user=config.user,
            manifest_digest=platform_manifest.digest,
            index_digest=index_digest,
            source=platform_manifest.source,
            pulled_at=self._reactor.seconds(),
        )
        self._configs[record.id] = config
        self._usage = None
        return await self._change_records(lambda: self.store.with_image(record))

    async def _change_records(self, change: Callable[[], tuple[dict[str, ImageRecord], Any] | None]) -> Any:
        """Change the image records: *change* builds the next index (and a
        result) from the current one; it is written in a thread, then made
        current — persisted before anyone sees it. Changes run one at a
        time, so none is built from an index another is replacing."""
        await self._records_lock.acquire()
        try:
            changed = change()
            if changed is None:
                return None
            images, result = changed
            await self._in_thread(self.store.write_records, self.store.records_doc(images))
            self.store.images = images
            return result
        finally:
            self._records_lock.release()

    def _read_config(self, digest: str, what: str) -> manifests.ImageConfig:
        # In a thread: the config may be megabytes of JSON.
        return manifests.parse_config(self.store.read_blob(digest), what)

    def _check_totals(self, ref: references.Reference, layers: Sequence[manifests.Descriptor], chain: Sequence[str]) -> None:
        """Refuse an image whose layers, together, are over the limits (layers
        another pull unpacked were charged to that pull's image)."""
        size = inodes = 0
        for layer, chain_id in zip(layers, chain):
            info = self.store.layer(chain_id)
            if info is None:
                raise NotFound(f"layer {layer.digest} of {ref} vanished before the image was recorded")
            size += info.size
            inodes += info.inodes
            if size > self.limits.max_bytes or inodes > self.limits.max_inodes:
                what = (f"more than {self.limits.max_bytes} bytes of files (max-image-bytes)"
                        if size > self.limits.max_bytes else f"more than {self.limits.max_inodes} inodes (max-image-inodes)")
                raise ResourceExhausted(f"layer {layer.digest} of {ref}: with it the image holds {what}")

    def _layer(
        self,
        registry: RegistryClient,
        ref: references.Reference,
        credentials: Credentials | None,
        layer: manifests.Descriptor,
        diff_id: str,
        chain_id: str,
        parent: str,
        progress: LayerProgress,
        limits: Limits,
    ) -> Deferred:
        """Fetch and unpack one layer, shared with any pull already doing it."""
        watchers = self._layer_progress.setdefault(chain_id, [])
        watchers.append(progress)
        job = self._layer_jobs.get(chain_id)
        if job is None:
            operation = Deferred.fromCoroutine(
                self._fetch_layer(registry, ref, credentials, layer, diff_id, chain_id, parent, limits))
            job = Shared(operation)
            self._layer_jobs[chain_id] = job

            # Attached only now: a job that fails at once (before any await)
            # must not stay stored as failed, or no later pull would retry it.
            def forget(result: Any) -> Any:
                if self._layer_jobs.get(chain_id) is job:
                    del self._layer_jobs[chain_id]
                    self._layer_progress.pop(chain_id, None)
                return result

            operation.addBoth(forget)

        def detach(result: Any) -> Any:
            if progress in self._layer_progress.get(chain_id, []):
                self._layer_progress[chain_id].remove(progress)
            return result

        return job.wait().addBoth(detach)

    def _set_layer(self, chain_id: str, state: str | None = None, done: int | None = None) -> None:
        now = self._reactor.seconds()
        for lp in self._layer_progress.get(chain_id, []):
            if state is not None:
                lp.state = state
            if done is not None:
                lp.done = done
            lp.changed = now

    def _poll_unpack(self, chain_id: str) -> None:
        """Count an unpack that moved since the last look as progress."""
        watched = self._unpacks.get(chain_id)
        if watched is not None and watched[0].offset != watched[1]:
            watched[1] = watched[0].offset
            self._set_layer(chain_id)

    def _download_progress(self, chain_id: str, done: int) -> None:
        self._download_activity = self._reactor.seconds()
        self._set_layer(chain_id, done=done)

    async def _fetch_layer(
        self,
        registry: RegistryClient,
        ref: references.Reference,
        credentials: Credentials | None,
        layer: manifests.Descriptor,
        diff_id: str,
        chain_id: str,
        parent: str,
        limits: Limits,
    ) -> None:
        blob = self.store.ingest_path()
        self._set_layer(chain_id, "queued")
        try:
            await self._downloads.acquire()
            try:
                self._set_layer(chain_id, "downloading")
                fetched = [0]  # bytes of this blob reported to the metrics

                def progress(done: int, total: int) -> None:
                    if self.metrics is not None:
                        if done < fetched[0]:
                            fetched[0] = 0  # fetched again (another mirror): those bytes came too
                        if done > fetched[0]:
                            self.metrics.bytes_fetched(done - fetched[0])
                            fetched[0] = done
                    self._download_progress(chain_id, done)

                await registry.get_blob(
                    ref, layer.digest, blob, credentials,
                    progress=progress,
                    expected_size=layer.size,
                )  # fmt: skip
            finally:
                self._downloads.release()
            self._set_layer(chain_id, "unpacking")
            tmp_dir = self.store.new_layer_dir()
            control = Control()
            self._unpacks[chain_id] = [control, 0]
            unpacking = Shared(
                # The compression is told by the blob's magic bytes, not the
                # media type: registries do mislabel layers.
                self._in_thread(self._unpack_one, blob, os.path.join(tmp_dir, "diff"), limits, control,
                                f"layer {layer.digest} of {ref}"),
                cancel_when_abandoned=False,
            )
            try:
                try:
                    result = await unpacking.wait()
                except ResourceExhausted as e:
                    if "no space left" in str(e):
                        raise
                    raise ResourceExhausted(f"{e} (limits: max-image-bytes, max-image-inodes)") from None
                if result.diff_id != diff_id:
                    raise DigestMismatch(
                        f"layer {layer.digest} of {ref} unpacks to {result.diff_id}, but the image config says {diff_id}"
                    )
                info = LayerInfo(chain_id, diff_id, parent, result.size, result.inodes)
                await self._in_thread(self.store.write_layer, tmp_dir, info)
                self.store.add_layer(info)
            except BaseException:
                control.cancel()  # the thread stops at its next chunk or entry
                await finished(unpacking)  # let it end before cleaning up
                await self._in_thread(delete_paths, [tmp_dir])
                raise
            finally:
                self._unpacks.pop(chain_id, None)
            self._set_layer(chain_id, "done")
            log.info("layer {digest} of {image} unpacked ({size})", digest=layer.digest, image=str(ref), size=_mib(result.size))
        finally:
            if os.path.exists(blob):
                os.unlink(blob)

    def _unpack_one(self, blob: str, target: str, limits: Limits, control: Control, name: str) -> Any:
        # In a thread. The compression is told by the blob's magic bytes.
        return self._unpack(blob, target, None, limits=limits, control=control, name=name)

    # -- removal and usage ------------------------------------------------------

    async def remove(self, name: str) -> ImageRecord | None:
        """Remove the image *name* refers to, then whatever only it used.
        Absent images are not an error (the CRI asks for that)."""
        record = self.store.find(name)
        if record is None:
            return None
        def without() -> tuple[dict[str, ImageRecord], None] | None:
            images = self.store.without_image(record)
            return None if images is None else (images, None)

        await self._change_records(without)
        self._configs.pop(record.id, None)
        await self.collect_garbage()
        log.info("removed image {image_id} ({tags})", image_id=record.id, tags=", ".join(record.repo_tags) or "untagged")
        return record

    async def collect_garbage(self) -> None:
        """Delete layers and blobs that no image or container uses."""
        # Pulls in flight keep what they found or made until their image is
        # recorded (a layer job that ended is no longer in _layer_jobs).
        in_flight = set(self._layer_jobs) | set(self._pinned_layers)
        dirs, files = self.store.garbage(list(self._layers_in_use()) + list(in_flight), set(self._pinned_blobs))
        self._usage = None
        if dirs or files:
            await self._in_thread(delete_paths, dirs, files)

    async def fs_usage(self) -> tuple[float, str, int, int]:
        """``(timestamp, mountpoint, bytes, inodes)`` of the image store;
        measured in a thread, reused for a few seconds."""
        now = self._reactor.seconds()
        if self._usage is None or now - self._usage[0] > USAGE_CACHE_SECONDS:
            used, inodes = await self._in_thread(usage, self.store.dir)
            self._usage = (now, used, inodes)
        _, used, inodes = self._usage
        return now, self.store.dir, used, inodes
