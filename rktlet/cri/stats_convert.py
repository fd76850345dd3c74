"""Statistics into CRI messages: ContainerStats and PodSandboxStats (the
metrics of ListPodSandboxMetrics are in :mod:`rktlet.cri.metrics_convert`)."""

from __future__ import annotations

from rktlet.cri.proto import pb
from rktlet.pod.stats import ContainerFigures, PodFigures


def _u64(value: int | None) -> pb.UInt64Value | None:
    return pb.UInt64Value(value=max(value, 0)) if value is not None else None


def container_stats(f: ContainerFigures) -> pb.ContainerStats:
    c = f.container
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id, metadata=pb.ContainerMetadata(name=c.name, attempt=c.attempt),
            labels=c.labels, annotations=c.annotations,
        )
    )
    s = f.sample
    if s is not None:
        stats.cpu.timestamp = s.timestamp_ns
        stats.cpu.usage_core_nano_seconds.value = s.cpu_usage_ns
        if f.nano_cores is not None:
            stats.cpu.usage_nano_cores.value = f.nano_cores
        _memory(stats.memory, s)
        if s.swap_usage_bytes is not None:
            stats.swap.timestamp = s.timestamp_ns
            stats.swap.swap_usage_bytes.value = s.swap_usage_bytes
    stats.writable_layer.timestamp = f.timestamp_ns
    stats.writable_layer.fs_id.mountpoint = f.writable_layer_path
    if f.writable_layer is not None:
        stats.writable_layer.used_bytes.value, stats.writable_layer.inodes_used.value = f.writable_layer
    return stats


def _memory(memory: pb.MemoryUsage, s) -> None:
    memory.timestamp = s.timestamp_ns
    memory.working_set_bytes.value = s.memory_working_set_bytes
    memory.usage_bytes.value = s.memory_usage_bytes
    memory.rss_bytes.value = s.memory_rss_bytes
    memory.page_faults.value = s.page_faults
    memory.major_page_faults.value = s.major_page_faults
    if s.memory_available_bytes is not None:
        memory.available_bytes.value = max(s.memory_available_bytes, 0)


def _interface(name: str, counters: dict[str, int]) -> pb.NetworkInterfaceUsage:
    return pb.NetworkInterfaceUsage(
        name=name, rx_bytes=_u64(counters.get("rx_bytes", 0)), rx_errors=_u64(counters.get("rx_errors", 0)),
        tx_bytes=_u64(counters.get("tx_bytes", 0)), tx_errors=_u64(counters.get("tx_errors", 0)),
    )


def pod_stats(f: PodFigures) -> pb.PodSandboxStats:
    sb = f.sandbox
    stats = pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=sb.id, metadata=pb.PodSandboxMetadata(name=sb.name, uid=sb.uid, namespace=sb.namespace, attempt=sb.attempt),
            labels=sb.labels, annotations=sb.annotations,
        )
    )
    linux = stats.linux
    s = f.sample
    if s is not None:
        linux.cpu.timestamp = s.timestamp_ns
        linux.cpu.usage_core_nano_seconds.value = s.cpu_usage_ns
        if f.nano_cores is not None:
            linux.cpu.usage_nano_cores.value = f.nano_cores
        _memory(linux.memory, s)
        linux.process.timestamp = s.timestamp_ns
        linux.process.process_count.value = s.pids
    interfaces = {n: c for n, c in f.network.items() if n != "lo"}
    if interfaces:
        linux.network.timestamp = f.timestamp_ns
        default = "eth0" if "eth0" in interfaces else sorted(interfaces)[0]
        linux.network.default_interface.CopyFrom(_interface(default, interfaces[default]))
        linux.network.interfaces.extend(_interface(n, c) for n, c in sorted(interfaces.items()))
    linux.containers.extend(container_stats(c) for c in f.containers)
    return stats
