"""Image pulls (moved by :class:`rktlet.image.manager.ImageManager`) and
the image store's size (read at scrape time)."""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import CancelledError

from rktlet import errors

# Seconds: a small image from a local registry to a large one over a slow link.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# A failed pull's reason: the error's kind, most specific first. The set is
# closed, so the label cannot grow without bound.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (errors.DigestMismatch, "digest_mismatch"),
    (errors.HostileContent, "hostile_content"),
    (errors.InvalidArgument, "invalid"),
    (errors.NotFound, "not_found"),
    (errors.PermissionDenied, "denied"),
    (errors.DeadlineExceeded, "stalled"),
    (errors.ResourceExhausted, "limit"),
    (errors.Unavailable, "unavailable"),
    (errors.FailedPrecondition, "failed_precondition"),
    (errors.RuntimeFailure, "registry_error"),
    (CancelledError, "cancelled"),
)


def failure_reason(error: BaseException) -> str:
    """The ``reason`` label of a pull that failed with *error*."""
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "other"


class ImageMetrics:
    """What the image manager reports as pulls happen (reactor thread)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._in_flight = Gauge("rktlet_image_pulls_in_flight", "Image pulls under way.", registry=registry)
        self._bytes = Counter(
            "rktlet_image_pull_bytes", "Bytes of layer blobs downloaded from registries.", registry=registry
        )
        self._duration = Histogram(
            "rktlet_image_pull_duration_seconds", "Time taken by image pulls that succeeded.",
            buckets=BUCKETS, registry=registry,
        )
        self._failures = Counter(
            "rktlet_image_pull_failures", "Image pulls that failed, by reason.", ["reason"], registry=registry
        )
        for _, reason in _REASONS:
            self._failures.labels(reason)  # every reason shows, at 0 until it happens

    def pull_started(self) -> None:
        """A pull began (one per image, however many callers wait for it)."""
        self._in_flight.inc()

    def pull_ended(self, seconds: float, error: BaseException | None = None) -> None:
        """A pull ended after *seconds*: successfully, or with *error*."""
        self._in_flight.dec()
        if error is None:
            self._duration.observe(seconds)
        else:
            self._failures.labels(failure_reason(error)).inc()

    def bytes_fetched(self, count: int) -> None:
        """*count* more bytes of a layer blob arrived."""
        self._bytes.inc(count)


class ImageStoreCollector(Collector):
    """``rktlet_images``, ``rktlet_image_layers`` and
    ``rktlet_image_store_bytes``, from the image records as they are at
    scrape time (the store's index of records is replaced, never changed in
    place, so any thread may read it).

    :param store: the :class:`~rktlet.image.store.ImageStore`.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        images = list(self._store.images.values())  # one version throughout
        chains = {chain for record in images for chain in record.chain_ids}
        layer_bytes = 0
        for chain in chains:
            info = self._store.layer(chain)
            if info is not None:
                layer_bytes += info.size
        yield GaugeMetricFamily("rktlet_images", "Images in the store.", value=len(images))
        yield GaugeMetricFamily("rktlet_image_layers", "Unpacked layers the store's images use.", value=len(chains))
        yield GaugeMetricFamily(
            "rktlet_image_store_bytes",
            "Bytes of files in the unpacked layers the store's images use, each layer counted once.",
            value=layer_bytes,
        )
