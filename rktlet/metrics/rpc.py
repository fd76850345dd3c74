"""CRI calls: one latency histogram and one counter by status code, moved
by the dispatcher (:mod:`rktlet.cri.dispatch`), the one place every RPC
passes."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

# Seconds: from a snapshot read (well under a millisecond) to a pull or a
# StopContainer that waits out a grace period.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class RpcMetrics:
    """``rktlet_cri_request_duration_seconds{service,method}`` and
    ``rktlet_cri_requests_total{service,method,code}``.

    :meth:`observe` is called from the gRPC worker threads; the children of
    each label set are looked up once and kept (a dict read afterwards).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "rktlet_cri_request_duration_seconds", "Time taken to answer a CRI call, by method.",
            ["service", "method"], buckets=BUCKETS, registry=registry,
        )
        self._requests = Counter(
            "rktlet_cri_requests", "CRI calls answered, by method and gRPC status code.",
            ["service", "method", "code"], registry=registry,
        )
        self._children: dict[tuple[str, str], Any] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}

    def observe(self, full_name: str, code: str, seconds: float) -> None:
        """One call of *full_name* (``runtime.v1.RuntimeService/Version``)
        answered with *code* (``OK``, ``NOT_FOUND`` ...) after *seconds*."""
        service, _, method = full_name.rpartition("/")
        service = service.rpartition(".")[2]
        key = (service, method)
        duration = self._children.get(key)
        if duration is None:
            duration = self._children[key] = self._duration.labels(service, method)
        duration.observe(seconds)
        counter_key = (service, method, code)
        counter = self._counters.get(counter_key)
        if counter is None:
            counter = self._counters[counter_key] = self._requests.labels(service, method, code)
        counter.inc()
