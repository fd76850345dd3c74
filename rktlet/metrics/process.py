"""The daemon's own process: memory, CPU, file descriptors, threads, and
how late the reactor runs what is due."""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds late: a healthy reactor is well under a millisecond late.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: How often the reactor's lag is probed, in seconds.
LAG_INTERVAL = 1.0


def register_process_collectors(registry: CollectorRegistry, proc: str = "/proc") -> None:
    """``rktlet_process_*``: resident and virtual memory, CPU seconds, open
    and maximum file descriptors, start time (prometheus_client's process
    collector), and the thread count."""
    ProcessCollector(namespace="rktlet", proc=proc, registry=registry)
    registry.register(ThreadsCollector(proc))


class ThreadsCollector(Collector):
    """``rktlet_process_threads``: the process's threads as the kernel
    counts them (gRPC's and the thread pools' as well as Python's)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._status = f"{proc}/self/status"

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            with open(self._status, "rb") as f:
                for line in f:
                    if line.startswith(b"Threads:"):
                        yield GaugeMetricFamily("rktlet_process_threads", "Threads of the daemon process.",
                                                value=int(line.split()[1]))
                        return
        except (OSError, ValueError, IndexError):
            return


class ReactorLag:
    """``rktlet_reactor_lag_seconds``: every :data:`LAG_INTERVAL` seconds a
    timer is set, and how late it runs is observed — the time anything the
    reactor is to do waits behind the work in front of it.

    :param reactor: the reactor probed (``callLater``, ``seconds``).
    """

    def __init__(self, reactor: Any, registry: CollectorRegistry, interval: float = LAG_INTERVAL) -> None:
        self._reactor = reactor
        self._interval = interval
        self._histogram = Histogram(
            "rktlet_reactor_lag_seconds",
            "How late the reactor thread ran a timer that was due (probed every second).",
            buckets=LAG_BUCKETS, registry=registry,
        )
        self._call: Any = None

    def start(self) -> None:
        """Probe from now on."""
        if self._call is None:
            self._schedule()

    def stop(self) -> None:
        """Stop probing."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        due = self._reactor.seconds() + self._interval
        self._call = self._reactor.callLater(self._interval, self._fired, due)

    def _fired(self, due: float) -> None:
        self._histogram.observe(max(0.0, self._reactor.seconds() - due))
        self._schedule()
