"""CNI ADD and DEL: latency and failures, measured around the network
driver (:class:`MeteredNetwork` wraps it at wiring time); DELs waiting for
a retry, counted at scrape time."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

# Seconds: a bridge ADD takes tens of milliseconds; a plugin may time out at 60.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

ADD = "add"
DEL = "del"


class NetworkMetrics:
    """``rktlet_cni_operation_duration_seconds{operation}`` and
    ``rktlet_cni_operation_failures_total{operation}``.

    :param clock: what durations are measured with (``seconds()``).
    """

    def __init__(self, registry: CollectorRegistry, clock: Any) -> None:
        self._clock = clock
        self._duration = Histogram(
            "rktlet_cni_operation_duration_seconds",
            "Time taken by CNI ADD and DEL of pod networks (the whole plugin chain), failures included.",
            ["operation"], buckets=BUCKETS, registry=registry,
        )
        self._failures = Counter(
            "rktlet_cni_operation_failures", "CNI ADD and DEL that failed.", ["operation"], registry=registry
        )
        for operation in (ADD, DEL):
            self._duration.labels(operation)
            self._failures.labels(operation)

    def wrap(self, network: Any) -> "MeteredNetwork":
        """*network* (:class:`rktlet.network.cni.CNI`), its ADD and DEL measured."""
        return MeteredNetwork(network, self)

    def measure(self, operation: str, call: Callable[[], Deferred]) -> Deferred:
        """Run *call* (an ADD or DEL) and record how long it took and whether it failed."""
        started = self._clock.seconds()

        def ended(result: Any) -> Any:
            self._duration.labels(operation).observe(self._clock.seconds() - started)
            if isinstance(result, Failure):
                self._failures.labels(operation).inc()
            return result

        return call().addBoth(ended)


class MeteredNetwork:
    """A pod network driver whose ADD and DEL are measured; everything else
    is the driver's own."""

    def __init__(self, network: Any, metrics: NetworkMetrics) -> None:
        self._network = network
        self._metrics = metrics

    def add(self, attachment: Any) -> Deferred:
        """The driver's ``add``, measured."""
        return self._metrics.measure(ADD, lambda: self._network.add(attachment))

    def delete(self, attachment: Any) -> Deferred:
        """The driver's ``delete``, measured."""
        return self._metrics.measure(DEL, lambda: self._network.delete(attachment))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._network, name)


class PendingDeletesCollector(Collector):
    """``rktlet_cni_pending_deletes``: removed pods whose CNI DEL failed and
    is retried (``--cni-del-retry-interval``): a cached ADD whose pod has no
    published snapshot any more.

    :param network: the CNI driver (``cached_ids()`` lists its cache directory).
    :param sandboxes: the pod sandboxes' :class:`~rktlet.pod.records.Snapshots`.
    """

    def __init__(self, network: Any, sandboxes: Any) -> None:
        self._network = network
        self._sandboxes = sandboxes

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pending = sum(1 for i in self._network.cached_ids() if self._sandboxes.current(i) is None)
        yield GaugeMetricFamily(
            "rktlet_cni_pending_deletes", "Removed pods whose CNI DEL failed and waits for a retry.", value=pending
        )
