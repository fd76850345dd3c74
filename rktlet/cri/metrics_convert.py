"""The cAdvisor-named metrics of ListMetricDescriptors and
ListPodSandboxMetrics.

The kubelet (with ``PodAndContainerStatsFromCRI``) serves these on its
``/metrics/cadvisor`` endpoint instead of asking cAdvisor; names, label keys
and units follow cAdvisor's, which is what dashboards and critest expect.
Every metric has the base labels ``container id image name namespace pod``
and may add its own (``interface``, ``device``, ``failure_type``, ``scope``
…). Values are unsigned integers on the wire: seconds are whole seconds.

Not reported: hugetlb usage, pressure stall figures, the soft ulimits — the
same ones containerd does not report yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rktlet.cri.proto import pb
from rktlet.pod.stats import ContainerMetricFigures, PodMetricFigures

BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")

# (extra label values, value) pairs a metric has for one container.
Points = Iterator[tuple[tuple[str, ...], int]]


@dataclass(frozen=True)
class ContainerMetric:
    """One container metric: its descriptor and how to read its points."""

    name: str
    help: str
    kind: int
    extra_labels: tuple[str, ...]
    points: Callable[[ContainerMetricFigures], Points]

    def descriptor(self) -> pb.MetricDescriptor:
        return pb.MetricDescriptor(name=self.name, help=self.help, label_keys=[*BASE_LABELS, *self.extra_labels])


def _cgroup(key: str) -> Callable[[ContainerMetricFigures], Points]:
    def points(f: ContainerMetricFigures) -> Points:
        if f.cgroup is not None and key in f.cgroup.values:
            yield (), f.cgroup.values[key]
    return points


def _sample(read: Callable[..., int | None]) -> Callable[[ContainerMetricFigures], Points]:
    def points(f: ContainerMetricFigures) -> Points:
        if f.sample is not None and (value := read(f.sample)) is not None:
            yield (), value
    return points


def _filesystem(key: str) -> Callable[[ContainerMetricFigures], Points]:
    def points(f: ContainerMetricFigures) -> Points:
        if f.filesystem is not None:
            yield (f.device,), f.filesystem[key]
    return points


def _fs_usage(f: ContainerMetricFigures) -> Points:
    if f.writable_layer is not None:
        yield (f.device,), f.writable_layer[0]


def _failures(f: ContainerMetricFigures) -> Points:
    if f.cgroup is None:
        return
    for failure_type in ("pgfault", "pgmajfault"):
        for scope in ("container", "hierarchy"):
            value = f.cgroup.values.get(f"memory_{failure_type}_{scope}")
            if value is not None:
                yield (failure_type, scope), value


def _blkio(f: ContainerMetricFigures) -> Points:
    for d in f.cgroup.devices if f.cgroup else ():
        for operation, value in sorted(d.bytes.items()):
            yield (d.name, str(d.major), str(d.minor), operation), value


def _device_total(table: str, operation: str) -> Callable[[ContainerMetricFigures], Points]:
    def points(f: ContainerMetricFigures) -> Points:
        for d in f.cgroup.devices if f.cgroup else ():
            counts = d.bytes if table == "bytes" else d.operations
            if operation in counts:
                yield (d.name,), counts[operation]
    return points


def _last_seen(f: ContainerMetricFigures) -> Points:
    yield (), f.timestamp_ns // 1_000_000_000


def _start_time(f: ContainerMetricFigures) -> Points:
    if f.container.started_at:
        yield (), f.container.started_at // 1_000_000_000


_C, _G = pb.COUNTER, pb.GAUGE
CONTAINER_METRICS: tuple[ContainerMetric, ...] = (
    ContainerMetric("container_blkio_device_usage_total", "Blkio device bytes usage", _C,
                    ("device", "major", "minor", "operation"), _blkio),
    ContainerMetric("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", _C, (),
                    _cgroup("cpu_cfs_periods")),
    ContainerMetric("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", _C, (),
                    _cgroup("cpu_cfs_throttled_periods")),
    ContainerMetric("container_cpu_cfs_throttled_seconds_total",
                    "Total time duration the container has been throttled.", _C, (),
                    _cgroup("cpu_cfs_throttled_seconds")),
    ContainerMetric("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", _C, (),
                    _cgroup("cpu_system_seconds")),
    ContainerMetric("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", _C, (),
                    _sample(lambda s: s.cpu_usage_ns // 1_000_000_000)),
    ContainerMetric("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", _C, (),
                    _cgroup("cpu_user_seconds")),
    ContainerMetric("container_file_descriptors", "Number of open file descriptors for the container.", _G, (),
                    _cgroup("file_descriptors")),
    ContainerMetric("container_fs_inodes_free", "Number of available Inodes", _G, ("device",),
                    _filesystem("inodes_free")),
    ContainerMetric("container_fs_inodes_total", "Number of Inodes", _G, ("device",), _filesystem("inodes_total")),
    ContainerMetric("container_fs_limit_bytes",
                    "Number of bytes that can be consumed by the container on this filesystem.", _G, ("device",),
                    _filesystem("limit_bytes")),
    ContainerMetric("container_fs_reads_bytes_total", "Cumulative count of bytes read", _C, ("device",),
                    _device_total("bytes", "Read")),
    ContainerMetric("container_fs_reads_total", "Cumulative count of reads completed", _C, ("device",),
                    _device_total("operations", "Read")),
    ContainerMetric("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.",
                    _G, ("device",), _fs_usage),
    ContainerMetric("container_fs_writes_bytes_total", "Cumulative count of bytes written", _C, ("device",),
                    _device_total("bytes", "Write")),
    ContainerMetric("container_fs_writes_total", "Cumulative count of writes completed", _C, ("device",),
                    _device_total("operations", "Write")),
    ContainerMetric("container_last_seen", "Last time a container was seen by the exporter", _G, (), _last_seen),
    ContainerMetric("container_memory_cache", "Number of bytes of page cache memory.", _G, (),
                    _cgroup("memory_cache")),
    ContainerMetric("container_memory_failcnt", "Number of memory usage hits limits", _C, (),
                    _cgroup("memory_failcnt")),
    ContainerMetric("container_memory_failures_total", "Cumulative count of memory allocation failures.", _C,
                    ("failure_type", "scope"), _failures),
    ContainerMetric("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", _G, (),
                    _cgroup("memory_kernel_usage")),
    ContainerMetric("container_memory_mapped_file", "Size of memory mapped files in bytes.", _G, (),
                    _cgroup("memory_mapped_file")),
    ContainerMetric("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", _G, (),
                    _cgroup("memory_max_usage_bytes")),
    ContainerMetric("container_memory_rss", "Size of RSS in bytes.", _G, (), _cgroup("memory_rss")),
    ContainerMetric("container_memory_swap", "Container swap usage in bytes.", _G, (), _cgroup("memory_swap")),
    ContainerMetric("container_memory_usage_bytes",
                    "Current memory usage in bytes, including all memory regardless of when it was accessed", _G, (),
                    _sample(lambda s: s.memory_usage_bytes)),
    ContainerMetric("container_memory_working_set_bytes", "Current working set in bytes.", _G, (),
                    _sample(lambda s: s.memory_working_set_bytes)),
    ContainerMetric("container_oom_events_total", "Count of out of memory events observed for the container", _C, (),
                    _cgroup("oom_events")),
    ContainerMetric("container_processes", "Number of processes running inside the container.", _G, (),
                    _cgroup("processes")),
    ContainerMetric("container_sockets", "Number of open sockets for the container.", _G, (), _cgroup("sockets")),
    ContainerMetric("container_spec_cpu_period", "CPU period of the container.", _G, (),
                    _cgroup("spec_cpu_period")),
    ContainerMetric("container_spec_cpu_quota", "CPU quota of the container.", _G, (), _cgroup("spec_cpu_quota")),
    ContainerMetric("container_spec_cpu_shares", "CPU share of the container.", _G, (), _cgroup("spec_cpu_shares")),
    ContainerMetric("container_spec_memory_limit_bytes", "Memory limit for the container.", _G, (),
                    _cgroup("spec_memory_limit_bytes")),
    ContainerMetric("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.",
                    _G, (), _cgroup("spec_memory_reservation_limit_bytes")),
    ContainerMetric("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", _G, (),
                    _cgroup("spec_memory_swap_limit_bytes")),
    ContainerMetric("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", _G,
                    (), _start_time),
    ContainerMetric("container_threads", "Number of threads running inside the container", _G, (),
                    _cgroup("threads")),
    ContainerMetric("container_threads_max", "Maximum number of threads allowed inside the container, infinity if "
                    "value is zero", _G, (), _cgroup("threads_max")),
)

# Pod network metrics: name → (help, /proc/net/dev counter). cAdvisor
# reports them for the pod's infra container; rktlet's pods have none, so
# they carry the container label "POD" as the kubelet expects.
NETWORK_METRICS: tuple[tuple[str, str, str], ...] = (
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", "rx_bytes"),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", "rx_errors"),
    ("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving",
     "rx_drop"),
    ("container_network_receive_packets_total", "Cumulative count of packets received", "rx_packets"),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", "tx_bytes"),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting",
     "tx_errors"),
    ("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting",
     "tx_drop"),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted", "tx_packets"),
)
NETWORK_LABELS = (*BASE_LABELS, "interface")

DESCRIPTORS: tuple[pb.MetricDescriptor, ...] = tuple(
    sorted(
        [m.descriptor() for m in CONTAINER_METRICS]
        + [pb.MetricDescriptor(name=n, help=h, label_keys=NETWORK_LABELS) for n, h, _ in NETWORK_METRICS],
        key=lambda d: d.name,
    )
)


def _metric(name: str, timestamp: int, kind: int, labels: list[str], value: int) -> pb.Metric:
    return pb.Metric(name=name, timestamp=timestamp, metric_type=kind, label_values=labels,
                     value=pb.UInt64Value(value=max(int(value), 0)))


def pod_metrics(f: PodMetricFigures) -> pb.PodSandboxMetrics:
    """The metrics of one pod: network per interface, then every container
    metric the host can give for each running container."""
    sb = f.sandbox
    out = pb.PodSandboxMetrics(pod_sandbox_id=sb.id)
    for interface, counters in sorted(f.network.items()):
        if interface == "lo":
            continue
        labels = ["POD", sb.id, "", sb.id, sb.namespace, sb.name, interface]
        for name, _, key in NETWORK_METRICS:
            out.metrics.append(_metric(name, f.timestamp_ns, pb.COUNTER, labels, counters.get(key, 0)))
    for cf in f.containers:
        c = cf.container
        base = [c.name, c.id, c.image_name or c.image, c.id, sb.namespace, sb.name]
        cm = pb.ContainerMetrics(container_id=c.id)
        for m in CONTAINER_METRICS:
            for extra, value in m.points(cf):
                cm.metrics.append(_metric(m.name, cf.timestamp_ns, m.kind, [*base, *extra], value))
        out.container_metrics.append(cm)
    return out
