"""Prometheus metrics of the daemon (``--metrics-address``).

One module per concern, each owning its metric families in a private
:class:`~prometheus_client.CollectorRegistry` (never the library's global
one), and :class:`Metrics` bundling them for ``tap.py`` to wire:

* :mod:`~rktlet.metrics.rpc` — every CRI call, by method and status code;
* :mod:`~rktlet.metrics.images` — pulls, and the image store's size;
* :mod:`~rktlet.metrics.pods` — pods and containers by state, container
  exits by reason, monitors re-adopted or lost at start-up;
* :mod:`~rktlet.metrics.network` — CNI ADD/DEL, DELs waiting for a retry;
* :mod:`~rktlet.metrics.streams` — streaming sessions and their bytes;
* :mod:`~rktlet.metrics.process` — the daemon process and its reactor;
* :mod:`~rktlet.metrics.server` — the ``/metrics`` HTTP(S) listener.

Counters and histograms are moved where the event happens, through the
small objects here that the layers below are handed (they never import
this package). Gauges of state — pods and containers by state, the
store's size — are read at scrape time from the immutable snapshots the
pod layer publishes, so nothing is booked on every change.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics

from rktlet.metrics.images import ImageMetrics, ImageStoreCollector
from rktlet.metrics.network import NetworkMetrics, PendingDeletesCollector
from rktlet.metrics.pods import ContainerMetrics, PodCollector
from rktlet.metrics.process import ReactorLag, register_process_collectors
from rktlet.metrics.rpc import RpcMetrics
from rktlet.metrics.streams import StreamMetrics

__all__ = ["Metrics"]

#: The prefix of every metric rktlet exports.
NAMESPACE = "rktlet"


class Metrics:
    """All of the daemon's metrics, in one private registry.

    :param reactor: the reactor (the clock of durations, the reactor-lag probe).
    :param registry: where the families are registered (a new one by default).
    """

    def __init__(self, reactor: Any, registry: CollectorRegistry | None = None) -> None:
        # No `_created` series beside every counter and histogram: a scrape
        # carries what is measured, not when each child was first seen.
        disable_created_metrics()
        # auto_describe: the scrape-time collectors are asked their names when
        # registered, so that a scrape filtered by name (`?name[]=...`) finds them.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.rpc = RpcMetrics(self.registry)
        self.images = ImageMetrics(self.registry)
        self.containers = ContainerMetrics(self.registry)
        self.network = NetworkMetrics(self.registry, reactor)
        self.streams = StreamMetrics(self.registry)
        self.reactor_lag = ReactorLag(reactor, self.registry)
        register_process_collectors(self.registry)

    def watch_pods(self, sandboxes: Any, containers: Any) -> None:
        """Report pods and containers by state from these published
        snapshots (:class:`rktlet.pod.records.Snapshots`) at each scrape."""
        self.registry.register(PodCollector(sandboxes, containers))

    def watch_image_store(self, store: Any) -> None:
        """Report the image store's size (:class:`rktlet.image.store.ImageStore`)."""
        self.registry.register(ImageStoreCollector(store))

    def watch_cni_deletes(self, network: Any, sandboxes: Any) -> None:
        """Report the CNI DELs waiting for a retry: cached ADDs of *network*
        whose pod is no longer among the *sandboxes* snapshots."""
        self.registry.register(PendingDeletesCollector(network, sandboxes))
