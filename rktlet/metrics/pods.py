"""Pods and containers by state (read from the published snapshots at
scrape time); container exits by reason and monitors re-adopted or lost at
start-up (moved by :class:`rktlet.pod.containers.ContainerManager`)."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rktlet.pod import container, sandbox

#: The reasons an exited container is given (its CRI status ``reason``).
EXIT_REASONS = ("Completed", "Error", "OOMKilled", "StartError")
POD_STATES = (sandbox.CREATING, sandbox.READY, sandbox.NOTREADY)
CONTAINER_STATES = (container.CREATED, container.RUNNING, container.EXITED)


class ContainerMetrics:
    """What the container manager reports as it happens (reactor thread)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._exits = Counter(
            "rktlet_container_exits",
            "Containers that exited (or failed to start), by reason: Completed, Error, OOMKilled, StartError.",
            ["reason"], registry=registry,
        )
        for reason in EXIT_REASONS:
            self._exits.labels(reason)
        self._readopted = Counter(
            "rktlet_monitor_readoptions",
            "Container monitors (conmon) found running at start-up and adopted again.",
            registry=registry,
        )
        self._lost = Counter(
            "rktlet_monitors_lost",
            "Containers found at start-up whose monitor (conmon) was gone without recording an exit.",
            registry=registry,
        )

    def exited(self, reason: str) -> None:
        """A container exited with *reason* (``Completed``, ``Error`` ...)."""
        self._exits.labels(reason if reason in EXIT_REASONS else "Error").inc()

    def monitor_readopted(self) -> None:
        """A running container's monitor was adopted again at start-up."""
        self._readopted.inc()

    def monitor_lost(self) -> None:
        """A running container's monitor was found gone at start-up."""
        self._lost.inc()


class PodCollector(Collector):
    """``rktlet_pods{state}`` and ``rktlet_containers{state}``, counted
    over the snapshots published when the scrape comes (any thread: the
    index of snapshots is replaced, never changed in place).

    :param sandboxes: the pod sandboxes' :class:`~rktlet.pod.records.Snapshots`.
    :param containers: the containers' :class:`~rktlet.pod.records.Snapshots`.
    """

    def __init__(self, sandboxes: Any, containers: Any) -> None:
        self._sandboxes = sandboxes
        self._containers = containers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield self._by_state("rktlet_pods", "Pod sandboxes, by state.", self._sandboxes.all(), POD_STATES)
        yield self._by_state("rktlet_containers", "Containers, by state.", self._containers.all(), CONTAINER_STATES)

    @staticmethod
    def _by_state(name: str, documentation: str, snapshots: list[Any], states: tuple[str, ...]) -> GaugeMetricFamily:
        tally = Tally(s.state for s in snapshots)
        family = GaugeMetricFamily(name, documentation, labels=["state"])
        for state in states + tuple(sorted(set(tally) - set(states))):
            family.add_metric([state], tally.get(state, 0))
        return family
