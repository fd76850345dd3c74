"""The fuller set of cgroup figures behind the cAdvisor-named metrics of
ListPodSandboxMetrics: CPU throttling and user/system time, the memory
breakdown, block I/O, the resource settings, and the cgroup's processes,
threads, open files and sockets.

The hot statistics path (:mod:`rktlet.oci.stats`) reads a handful of files
per container; this reader reads a few dozen and walks ``/proc`` for the
cgroup's processes, so it runs only for the metrics RPCs, in a worker thread.

Every function returns plain names → integers (:class:`CgroupMetrics`); a
figure the host cannot give (a controller not mounted, swap accounting off)
is simply absent, and the caller reports what is there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rktlet import logs
from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci.cgroups import Layout
from rktlet.oci.stats import cgroup_dir, check_cgroup_path, read_control_file

log = logs.logger("rktlet.oci.cgroup_metrics")

# USER_HZ: the unit of cpuacct.stat (always 100 on Linux, whatever CONFIG_HZ).
_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Processes walked per cgroup at most: a fork bomb must not make a metrics
# call walk /proc without end.
MAX_PROCESSES = 4096


@dataclass(frozen=True)
class BlockDevice:
    """Bytes and operations of one block device, by operation (Read, Write,
    Sync, Async, Discard, Total)."""

    major: int
    minor: int
    name: str
    bytes: Mapping[str, int]
    operations: Mapping[str, int]


@dataclass(frozen=True)
class CgroupMetrics:
    """Figures of one cgroup (see the module doc).

    :ivar values: cAdvisor-ish names without the ``container_`` prefix
        (``cpu_user_seconds``, ``memory_cache``, ``spec_cpu_shares`` …) →
        integer values; absent when the host cannot tell.
    :ivar devices: block I/O per device.
    """

    values: Mapping[str, int]
    devices: tuple[BlockDevice, ...] = ()


@dataclass
class _Builder:
    values: dict[str, int] = field(default_factory=dict)

    def put(self, name: str, value: int | None) -> None:
        if value is not None:
            self.values[name] = max(int(value), 0)


def _flat(data: bytes | None) -> dict[str, int]:
    """A flat keyed file (``key value`` lines) as a dict."""
    out: dict[str, int] = {}
    if data is None:
        return out
    for line in data.decode("ascii", "replace").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _number(data: bytes | None) -> int | None:
    """A single-number file; None when absent, "max" or not a number."""
    if data is None:
        return None
    text = data.strip()
    if text == b"max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _device_name(major: int, minor: int) -> str:
    try:
        with open(f"/sys/dev/block/{major}:{minor}/uevent", encoding="ascii") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return "/dev/" + line.strip().partition("=")[2]
    except OSError:
        pass
    return f"{major}:{minor}"


def _blkio_v1(data: bytes | None) -> dict[tuple[int, int], dict[str, int]]:
    """``blkio.throttle.io_service*``: ``MAJ:MIN Op value`` lines."""
    out: dict[tuple[int, int], dict[str, int]] = {}
    if data is None:
        return out
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        try:
            out.setdefault((int(major), int(minor)), {})[parts[1]] = int(parts[2])
        except ValueError:
            continue
    return out


def _io_v2(data: bytes | None) -> tuple[dict[tuple[int, int], dict[str, int]], dict[tuple[int, int], dict[str, int]]]:
    """``io.stat``: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`` lines."""
    nbytes: dict[tuple[int, int], dict[str, int]] = {}
    ops: dict[tuple[int, int], dict[str, int]] = {}
    if data is None:
        return nbytes, ops
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        try:
            major, _, minor = parts[0].partition(":")
            key = (int(major), int(minor))
            kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            nbytes[key] = {"Read": int(kv.get("rbytes", 0)), "Write": int(kv.get("wbytes", 0))}
            ops[key] = {"Read": int(kv.get("rios", 0)), "Write": int(kv.get("wios", 0))}
        except ValueError:
            continue
    return nbytes, ops


def _devices(nbytes: Mapping[tuple[int, int], Mapping[str, int]],
             ops: Mapping[tuple[int, int], Mapping[str, int]]) -> tuple[BlockDevice, ...]:
    return tuple(
        BlockDevice(major, minor, _device_name(major, minor), dict(nbytes.get((major, minor), {})),
                    dict(ops.get((major, minor), {})))
        for major, minor in sorted(set(nbytes) | set(ops))
    )


def _processes(procs_file: str, b: _Builder) -> None:
    """Processes, threads, open files and sockets of the cgroup's processes."""
    data = read_control_file(procs_file)
    if data is None:
        return
    pids = data.split()[:MAX_PROCESSES]
    threads = fds = sockets = 0
    for pid in pids:
        base = f"/proc/{pid.decode()}"
        try:
            threads += len(os.listdir(base + "/task"))
        except OSError:
            continue  # gone meanwhile
        try:
            names = os.listdir(base + "/fd")
        except OSError:
            continue
        fds += len(names)
        for name in names:
            try:
                if os.readlink(f"{base}/fd/{name}").startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
    b.put("processes", len(pids))
    b.put("threads", threads)
    b.put("file_descriptors", fds)
    b.put("sockets", sockets)


def _read_v1(v1: Mapping[str, str], path: str) -> CgroupMetrics | None:
    memory = cgroup_dir(v1["memory"], path) if "memory" in v1 else None
    cpu = cgroup_dir(v1["cpu"], path) if "cpu" in v1 else None
    cpuacct = cgroup_dir(v1["cpuacct"], path) if "cpuacct" in v1 else None
    pids = cgroup_dir(v1["pids"], path) if "pids" in v1 else None
    blkio = cgroup_dir(v1["blkio"], path) if "blkio" in v1 else None
    primary = memory or cpuacct or cpu or pids
    if primary is None or not os.path.isdir(primary):
        return None
    b = _Builder()
    if cpuacct:
        stat = _flat(read_control_file(cpuacct + "/cpuacct.stat"))
        if "user" in stat:
            b.put("cpu_user_seconds", stat["user"] // _USER_HZ)
            b.put("cpu_system_seconds", stat.get("system", 0) // _USER_HZ)
    if cpu:
        stat = _flat(read_control_file(cpu + "/cpu.stat"))
        if "nr_periods" in stat:
            b.put("cpu_cfs_periods", stat["nr_periods"])
            b.put("cpu_cfs_throttled_periods", stat.get("nr_throttled", 0))
            b.put("cpu_cfs_throttled_seconds", stat.get("throttled_time", 0) // 1_000_000_000)
        b.put("spec_cpu_period", _number(read_control_file(cpu + "/cpu.cfs_period_us")))
        quota = _number(read_control_file(cpu + "/cpu.cfs_quota_us"))
        if quota is not None and quota > 0:  # -1: no quota
            b.put("spec_cpu_quota", quota)
        b.put("spec_cpu_shares", _number(read_control_file(cpu + "/cpu.shares")))
    if memory:
        stat = _flat(read_control_file(memory + "/memory.stat"))
        b.put("memory_cache", stat.get("total_cache"))
        b.put("memory_rss", stat.get("total_rss"))
        b.put("memory_mapped_file", stat.get("total_mapped_file"))
        b.put("memory_swap", stat.get("total_swap", 0))
        b.put("memory_pgfault_container", stat.get("pgfault"))
        b.put("memory_pgmajfault_container", stat.get("pgmajfault"))
        b.put("memory_pgfault_hierarchy", stat.get("total_pgfault"))
        b.put("memory_pgmajfault_hierarchy", stat.get("total_pgmajfault"))
        b.put("memory_failcnt", _number(read_control_file(memory + "/memory.failcnt")))
        b.put("memory_max_usage_bytes", _number(read_control_file(memory + "/memory.max_usage_in_bytes")))
        b.put("memory_kernel_usage", _number(read_control_file(memory + "/memory.kmem.usage_in_bytes")))
        b.put("spec_memory_limit_bytes", _number(read_control_file(memory + "/memory.limit_in_bytes")))
        b.put("spec_memory_reservation_limit_bytes", _number(read_control_file(memory + "/memory.soft_limit_in_bytes")))
        # Without swap accounting there is no memsw file: the swap limit is
        # then the memory limit (swap cannot be charged separately).
        swap_limit = _number(read_control_file(memory + "/memory.memsw.limit_in_bytes"))
        b.put("spec_memory_swap_limit_bytes", swap_limit if swap_limit is not None
              else b.values.get("spec_memory_limit_bytes"))
        oom = _flat(read_control_file(memory + "/memory.oom_control"))
        b.put("oom_events", oom.get("oom_kill", 0))
    if pids:
        max_pids = read_control_file(pids + "/pids.max")
        b.put("threads_max", _number(max_pids) or 0)  # "max": 0, as cAdvisor reports no limit
    _processes(primary + "/cgroup.procs", b)
    devices: tuple[BlockDevice, ...] = ()
    if blkio:
        devices = _devices(_blkio_v1(read_control_file(blkio + "/blkio.throttle.io_service_bytes_recursive")),
                           _blkio_v1(read_control_file(blkio + "/blkio.throttle.io_serviced_recursive")))
    return CgroupMetrics(dict(b.values), devices)


def _read_v2(unified: str | None, path: str) -> CgroupMetrics | None:
    if not unified:
        raise RuntimeFailure("cgroup layout is v2 but has no unified mount point")
    d = cgroup_dir(unified, path)
    if not os.path.isdir(d):
        return None
    b = _Builder()
    cpu = _flat(read_control_file(d + "/cpu.stat"))
    b.put("cpu_user_seconds", cpu.get("user_usec", 0) // 1_000_000)
    b.put("cpu_system_seconds", cpu.get("system_usec", 0) // 1_000_000)
    if "nr_periods" in cpu:
        b.put("cpu_cfs_periods", cpu["nr_periods"])
        b.put("cpu_cfs_throttled_periods", cpu.get("nr_throttled", 0))
        b.put("cpu_cfs_throttled_seconds", cpu.get("throttled_usec", 0) // 1_000_000)
    cpu_max = read_control_file(d + "/cpu.max")
    if cpu_max is not None:
        quota, _, period = cpu_max.decode("ascii", "replace").strip().partition(" ")
        b.put("spec_cpu_period", int(period) if period.isdigit() else None)
        b.put("spec_cpu_quota", int(quota) if quota.isdigit() else None)
    weight = _number(read_control_file(d + "/cpu.weight"))
    if weight is not None:
        # The inverse of the kubelet's shares → weight mapping.
        b.put("spec_cpu_shares", 2 + ((weight - 1) * 262142) // 9999)
    stat = _flat(read_control_file(d + "/memory.stat"))
    if stat:
        b.put("memory_cache", stat.get("file"))
        b.put("memory_rss", stat.get("anon"))
        b.put("memory_mapped_file", stat.get("file_mapped"))
        b.put("memory_kernel_usage", stat.get("kernel", stat.get("kernel_stack", 0) + stat.get("slab", 0)))
        b.put("memory_pgfault_container", stat.get("pgfault"))
        b.put("memory_pgmajfault_container", stat.get("pgmajfault"))
        b.put("memory_pgfault_hierarchy", stat.get("pgfault"))
        b.put("memory_pgmajfault_hierarchy", stat.get("pgmajfault"))
        b.put("memory_swap", _number(read_control_file(d + "/memory.swap.current")) or 0)
        events = _flat(read_control_file(d + "/memory.events"))
        b.put("memory_failcnt", events.get("max", 0))
        b.put("oom_events", events.get("oom_kill", 0))
        b.put("memory_max_usage_bytes", _number(read_control_file(d + "/memory.peak")))
        b.put("spec_memory_limit_bytes", _number(read_control_file(d + "/memory.max")) or 0)
        b.put("spec_memory_reservation_limit_bytes", _number(read_control_file(d + "/memory.low")) or 0)
        b.put("spec_memory_swap_limit_bytes", _number(read_control_file(d + "/memory.swap.max")) or 0)
    max_pids = read_control_file(d + "/pids.max")
    if max_pids is not None:
        b.put("threads_max", _number(max_pids) or 0)
    _processes(d + "/cgroup.procs", b)
    nbytes, ops = _io_v2(read_control_file(d + "/io.stat"))
    return CgroupMetrics(dict(b.values), _devices(nbytes, ops))


def read_cgroup_metrics(layout: Layout, path: str) -> CgroupMetrics | None:
    """The figures of cgroup *path* (absolute inside the hierarchies), or
    None when it does not exist. Blocking: call it from a worker thread."""
    check_cgroup_path(path)
    if layout.mode == "v2":
        return _read_v2(layout.unified, path)
    return _read_v1(layout.v1, path)


def read_many(layout: Layout, paths: Iterable[str]) -> dict[str, CgroupMetrics | None]:
    """:func:`read_cgroup_metrics` for each path; one that cannot be read is
    logged and maps to None, so it does not cost the others their figures."""
    out: dict[str, CgroupMetrics | None] = {}
    for path in paths:
        try:
            out[path] = read_cgroup_metrics(layout, path)
        except (RuntimeFailure, InvalidArgument, ValueError) as e:
            log.warn("cgroup metrics of {path}: {error}", path=path, error=str(e))
            out[path] = None
    return out


def filesystem(path: str) -> dict[str, int] | None:
    """Size, free inodes and total inodes of the filesystem holding *path*
    (a container's writable layer), or None when it is gone."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"limit_bytes": st.f_blocks * st.f_frsize, "inodes_total": st.f_files, "inodes_free": st.f_ffree}


def filesystem_device(path: str) -> str:
    """The block device name of the filesystem holding *path* (``major:minor``
    when it has no name)."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return ""
    return _device_name(os.major(dev), os.minor(dev))
