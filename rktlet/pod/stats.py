"""Container and pod statistics, for the kubelet's summary API and eviction.

Figures come from the cgroups (one worker-thread hop per call, whatever the
number of containers), CPU rates from two samples kept in memory, writable
layer usage from a cache refreshed in the background, pod network counters
from ``/proc/net/dev`` read inside the pod's network namespace. No process is
spawned for any of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.threads import deferToThreadPool

from rktlet import logs
from rktlet.oci import cgroup_metrics, cgroups, namespaces
from rktlet.oci.cgroup_metrics import CgroupMetrics
from rktlet.oci.stats import CgroupSample, CpuRates, UsageCache, read_cgroups
from rktlet.pod.container import RUNNING, Container
from rktlet.pod.sandbox import READY, Sandbox

if TYPE_CHECKING:
    from rktlet.pod.containers import ContainerManager
    from rktlet.pod.sandboxes import SandboxManager

log = logs.logger("rktlet.pod.stats")


@dataclass(frozen=True)
class ContainerFigures:
    """One container's statistics at one moment."""

    container: Container
    timestamp_ns: int
    sample: CgroupSample | None
    nano_cores: int | None
    writable_layer: tuple[int, int] | None  # (bytes, inodes) of its upper dir
    writable_layer_path: str


@dataclass(frozen=True)
class PodFigures:
    """One pod's statistics at one moment."""

    sandbox: Sandbox
    timestamp_ns: int
    sample: CgroupSample | None
    nano_cores: int | None
    network: dict[str, dict[str, int]] = field(default_factory=dict)  # interface → counters
    containers: tuple[ContainerFigures, ...] = ()


@dataclass(frozen=True)
class ContainerMetricFigures:
    """One container's figures for the cAdvisor-named metrics."""

    container: Container
    timestamp_ns: int
    sample: CgroupSample | None
    cgroup: CgroupMetrics | None
    writable_layer: tuple[int, int] | None  # (bytes, inodes) of its upper dir
    filesystem: dict[str, int] | None  # limit_bytes, inodes_total, inodes_free
    device: str  # the block device holding the writable layer


@dataclass(frozen=True)
class PodMetricFigures:
    """One pod's figures for ListPodSandboxMetrics."""

    sandbox: Sandbox
    timestamp_ns: int
    network: dict[str, dict[str, int]]
    containers: tuple[ContainerMetricFigures, ...] = ()


def _read_networks(netns: dict[str, str]) -> dict[str, dict[str, dict[str, int]]]:
    """Blocking: interface counters of each pod (id → pinned netns path); a
    namespace that cannot be read (the pod going away) gives no counters."""
    networks = {}
    for pod_id, path in netns.items():
        try:
            networks[pod_id] = namespaces.read_net_dev(path)
        except Exception:
            networks[pod_id] = {}
    return networks


class StatsCollector:
    """Collects statistics. The stats lists (:meth:`container_stats`,
    :meth:`pod_stats`) are read on the calling thread from snapshots;
    :meth:`pod_metrics` runs on the reactor thread.

    :param reactor: for the thread handoff.
    :param threadpool: where cgroup files and /proc/net/dev are read.
    :param layout: the host's cgroup layout.
    :param containers: the container manager.
    :param sandboxes: the sandbox manager.
    """

    def __init__(self, reactor: Any, threadpool: Any, layout: cgroups.Layout, containers: ContainerManager,
                 sandboxes: SandboxManager) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._layout = layout
        self._containers = containers
        self._sandboxes = sandboxes
        self._rates = CpuRates()
        self._usage = UsageCache(reactor, threadpool)
        # What is kept per container or pod (rate key → usage path or ''),
        # so that what removed ones left is dropped.
        self._kept: dict[str, str] = {}

    def _prune(self) -> None:
        """Forget the rates and usage kept for removed containers and pods
        (reactor thread)."""
        alive = set(self._containers.containers) | {f"pod:{i}" for i in self._sandboxes.sandboxes}
        for key in [k for k in self._kept if k not in alive]:
            self._rates.forget(key)
            if self._kept[key]:
                self._usage.forget(self._kept.pop(key))
            else:
                del self._kept[key]

    def _kept_after_read(self, kept: dict[str, str]) -> None:
        """What a read on another thread used (rate key → writable layer or
        ''), noted on the reactor: kept until its owner is removed, and each
        layer's disk usage refreshed in the background when it is stale."""
        self._kept.update(kept)
        self._prune()  # also what was removed while the read ran
        for key, upper in kept.items():
            if upper and key in self._kept:
                self._usage.get(upper)

    def _cgroup_of(self, c: Container) -> str | None:
        sb = self._sandboxes.snapshots.current(c.sandbox_id)
        return f"{sb.cgroup_parent.rstrip('/')}/{c.id}" if sb else None

    def _container_figures(self, selected: list[Container], kept: dict[str, str]) -> list[ContainerFigures]:
        """Blocking, any thread: figures of *selected* container snapshots
        (running ones have cgroup figures; others only their writable
        layer's usage, as last measured)."""
        paths = {c.id: self._cgroup_of(c) for c in selected}
        samples = read_cgroups(self._layout, [p for p in paths.values() if p])
        now = time.time_ns()
        out = []
        for c in selected:
            sample = samples.get(paths[c.id]) if paths[c.id] else None
            rate = self._rates.observe(c.id, sample) if sample is not None else None
            upper = f"{c.layer_dir}/upper"
            kept[c.id] = upper
            out.append(ContainerFigures(c, sample.timestamp_ns if sample else now, sample, rate,
                                        self._usage.peek(upper), upper))
        return out

    def container_stats(self, id_prefix: str = "", sandbox_prefix: str = "",
                        labels: dict[str, str] | None = None, one: bool = False) -> list[ContainerFigures]:
        """Statistics of the containers matching the filters (or of exactly
        one container, NotFound if absent, with *one*).

        Blocking, on the calling thread (a gRPC worker), from the published
        snapshots: the reactor only hears afterwards what was read."""
        if one:
            selected = [self._containers.status(id_prefix)]
        else:
            selected = self._containers.list(id_prefix, sandbox_prefix, None, labels)
        kept: dict[str, str] = {}
        try:
            return self._container_figures(selected, kept)
        finally:
            self._reactor.callFromThread(self._kept_after_read, kept)

    def pod_stats(self, id_prefix: str = "", labels: dict[str, str] | None = None,
                  one: bool = False) -> list[PodFigures]:
        """Statistics of the ready pods matching the filters (or of exactly
        one pod, NotFound if absent, with *one*), with their containers'.

        Blocking, on the calling thread, like :meth:`container_stats`."""
        if one:
            selected = [self._sandboxes.status(id_prefix)]
        else:
            selected = self._sandboxes.list(id_prefix, READY, labels)
        wanted = {sb.id for sb in selected}
        kept: dict[str, str] = {}
        try:
            container_figures = self._container_figures(
                self._containers.snapshots.select(lambda c: c.sandbox_id in wanted), kept)
            figures_by_pod: dict[str, list[ContainerFigures]] = {}
            for f in container_figures:
                figures_by_pod.setdefault(f.container.sandbox_id, []).append(f)
            samples = read_cgroups(self._layout, [sb.cgroup_parent for sb in selected])
            networks = _read_networks({sb.id: sb.netns for sb in selected if sb.state == READY and sb.netns})
            now = time.time_ns()
            out = []
            for sb in selected:
                sample = samples.get(sb.cgroup_parent)
                rate = self._rates.observe(f"pod:{sb.id}", sample) if sample is not None else None
                kept[f"pod:{sb.id}"] = ""
                out.append(PodFigures(sb, sample.timestamp_ns if sample else now, sample, rate,
                                      networks.get(sb.id, {}), tuple(figures_by_pod.get(sb.id, ()))))
            return out
        finally:
            self._reactor.callFromThread(self._kept_after_read, kept)

    async def pod_metrics(self) -> list[PodMetricFigures]:
        """Figures for the cAdvisor-named metrics of every ready pod and its
        running containers (ListPodSandboxMetrics): more files per cgroup and
        a walk of the containers' processes, all in one worker thread."""
        self._prune()
        pods = self._sandboxes.list("", READY, None)
        wanted = {sb.id for sb in pods}
        running = [c for c in self._containers.containers.values()
                   if c.sandbox_id in wanted and c.state == RUNNING]
        paths = {c.id: self._cgroup_of(c) for c in running}
        layer_dirs = {c.id: c.layer_dir for c in running}
        netns = {sb.id: sb.netns for sb in pods if sb.netns}
        layout = self._layout

        def read() -> tuple[dict, dict, dict, dict]:
            cg = [p for p in paths.values() if p]
            fs = {cid: (cgroup_metrics.filesystem(d), cgroup_metrics.filesystem_device(d))
                  for cid, d in layer_dirs.items()}
            return read_cgroups(layout, cg), cgroup_metrics.read_many(layout, cg), fs, _read_networks(netns)

        samples, extended, fs, networks = await deferToThreadPool(self._reactor, self._threadpool, read)
        # A metrics scrape wants a figure: the first walk of a layer not
        # measured yet is waited for (all at once), the cache used after.
        usage = {c.id: self._usage.get(f"{c.layer_dir}/upper") for c in running}
        unmeasured = [cid for cid, value in usage.items() if value is None]
        measured = await DeferredList(
            [ensureDeferred(self._usage.measure(f"{layer_dirs[cid]}/upper")) for cid in unmeasured],
            consumeErrors=True)
        for cid, (ok, value) in zip(unmeasured, measured):
            if not ok and not value.check(OSError):  # OSError: the layer went away meanwhile
                log.failure("measuring the writable layer of container {id} failed", failure=value, id=cid)
            usage[cid] = value if ok else None
        now = time.time_ns()
        by_pod: dict[str, list[ContainerMetricFigures]] = {}
        for c in running:
            path = paths[c.id]
            upper = f"{c.layer_dir}/upper"
            self._kept[c.id] = upper
            filesystem, device = fs[c.id]
            by_pod.setdefault(c.sandbox_id, []).append(ContainerMetricFigures(
                c, now, samples.get(path) if path else None, extended.get(path) if path else None,
                usage[c.id], filesystem, device))
        return [PodMetricFigures(sb, now, networks.get(sb.id, {}), tuple(by_pod.get(sb.id, ()))) for sb in pods]
