"""Resource statistics for the CRI stats RPCs: cgroup CPU, memory and pid
counters, CPU rates, disk usage of writable layers, network totals.

What lives here, and on which thread it may run:

* :func:`read_cgroup` / :func:`read_cgroups` read a cgroup's counters into a
  :class:`CgroupSample`.  They block on small reads of kernel files (no
  process is spawned, nothing is cached): call them from a worker thread.
  ``read_cgroups`` reads a whole batch (every container of a
  ListContainerStats) so the caller needs one thread handoff, not one per
  container.
* :class:`CpuRates` turns two cumulative CPU samples into
  ``usage_nano_cores``.  Pure logic, guarded by a lock: any thread.
* :class:`UsageCache` measures disk usage (bytes, inodes) of directories in
  a thread pool and caches it.  It belongs to the reactor thread.
* :func:`net_dev_totals` sums interface counters (from
  :func:`rktlet.oci.namespaces.read_net_dev`).  Pure logic.

Cgroup file formats are those of the kernel's cgroup-v1 (``memory.rst``,
``cpuacct.rst``, ``pids.rst``) and cgroup-v2 (``cgroup-v2.rst``)
documentation.  In "v1" and "hybrid" layouts the counters come from the
cpuacct, memory and pids v1 hierarchies (a hybrid host's unified tree holds
none of those controllers); in "v2" from the unified hierarchy.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.cgroups import Layout

__all__ = [
    "CgroupSample",
    "read_cgroup",
    "read_cgroups",
    "CpuRates",
    "UsageCache",
    "disk_usage",
    "net_dev_totals",
]

log = logger("rktlet.oci.stats")


# ---------------------------------------------------------------------------
# Cgroup samples
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CgroupSample:
    """A cgroup's counters at one moment.

    :ivar timestamp_ns: wall-clock time of the sample (ns since the epoch,
        what CRI stats carry), taken just before the CPU counter is read.
    :ivar cpu_usage_ns: cumulative CPU time of every task in the cgroup and
        its descendants (v1 ``cpuacct.usage``; v2 ``cpu.stat`` usage_usec ×
        1000).  0 when the cgroup has no CPU accounting.
    :ivar memory_usage_bytes: v1 ``memory.usage_in_bytes``, v2
        ``memory.current``; 0 without a memory controller.
    :ivar memory_working_set_bytes: usage minus inactive file pages (v1
        ``total_inactive_file``, v2 ``inactive_file`` of memory.stat),
        floored at 0: what the kubelet evicts on.
    :ivar memory_rss_bytes: anonymous memory (v1 ``total_rss``, v2 ``anon``).
    :ivar memory_limit_bytes: the cgroup's own limit (v1
        ``memory.limit_in_bytes``, v2 ``memory.max``); None when unlimited.
    :ivar memory_available_bytes: limit minus working set (floored at 0),
        None when unlimited.
    :ivar page_faults: v1 ``total_pgfault``, v2 ``pgfault``.
    :ivar major_page_faults: v1 ``total_pgmajfault``, v2 ``pgmajfault``.
    :ivar swap_usage_bytes: v1 ``memory.memsw.usage_in_bytes`` minus usage
        (floored at 0), v2 ``memory.swap.current``; None when the kernel
        does not account swap for this cgroup.
    :ivar pids: ``pids.current`` when the pids controller is there (it
        counts tasks, i.e. threads too, like the limit it enforces), else
        the number of processes in ``cgroup.procs`` (this cgroup only).
    """

    timestamp_ns: int
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_rss_bytes: int
    memory_limit_bytes: int | None
    memory_available_bytes: int | None
    page_faults: int
    major_page_faults: int
    swap_usage_bytes: int | None
    pids: int


# A memory limit this large means "no limit".  v1 shows an unlimited cgroup
# as PAGE_COUNTER_MAX pages in bytes (LONG_MAX rounded down to the page size:
# 9223372036854771712 with 4 KiB pages, a different number with 16 or 64 KiB
# pages), so compare against a threshold rather than one constant; no
# machine has 4 EiB of memory.
_UNLIMITED = 1 << 62

_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC
# Larger than any cgroup control file read here (a v2 memory.stat is ~2 KB):
# one read(2) returns all of it, since the kernel's seq_file fills the whole
# user buffer when it can.
_BUFSIZE = 1 << 16


def read_control_file(path: str) -> bytes | None:
    """The content of the control file *path*; None when it does not exist
    (no such controller here, or the cgroup is gone: ENODEV is what a read
    on a file of a just-removed cgroup gets).  Other errors raise
    RuntimeFailure naming the file."""
    try:
        fd = os.open(path, _O_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RuntimeFailure(f"read {path}: {os.strerror(e.errno or 0)}") from e
    try:
        data = os.read(fd, _BUFSIZE)
        if len(data) == _BUFSIZE:  # never for these files; be correct anyway
            chunks = [data]
            while chunk := os.read(fd, _BUFSIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        raise RuntimeFailure(f"read {path}: {os.strerror(e.errno or 0)}") from e
    finally:
        os.close(fd)


def _int(data: bytes | None) -> int | None:
    return None if data is None else int(data)


def _needles(*keys: str) -> tuple[bytes, ...]:
    return tuple(b"\n" + key.encode() + b" " for key in keys)


# The memory.stat and cpu.stat entries used, as searched for by _fields.
_V1_MEMORY_STAT = _needles("total_inactive_file", "total_rss", "total_pgfault", "total_pgmajfault")
_V2_MEMORY_STAT = _needles("inactive_file", "anon", "pgfault", "pgmajfault")
_V2_CPU_STAT = _needles("usage_usec")


def _fields(data: bytes | None, needles: tuple[bytes, ...]) -> list[int]:
    """The values of some keys of a "flat keyed" file (``key value`` per
    line: memory.stat, cpu.stat), 0 for a key not there.

    Searching for the few keys used is several times faster than splitting
    the ~40 lines of a memory.stat into a dict, and this runs for every
    container at every stats call.
    """
    if data is None:
        return [0] * len(needles)
    text = b"\n" + data  # so that the first line starts with "\n" too
    values = []
    for needle in needles:
        start = text.find(needle)
        if start < 0:
            values.append(0)
            continue
        start += len(needle)
        end = text.find(b"\n", start)
        values.append(int(text[start:end] if end >= 0 else text[start:]))
    return values


def _limit(data: bytes | None) -> int | None:
    """A memory limit file's value; None for "max" (v2) or a huge value."""
    if data is None:
        return None
    data = data.strip()
    if data == b"max":
        return None
    value = int(data)
    return None if value >= _UNLIMITED else value


def cgroup_dir(root: str, path: str) -> str:
    # *path* is absolute, so plain concatenation joins it (and "/" gives the
    # root itself); faster than os.path.join on this hot path.
    return root.rstrip("/") + path if path != "/" else root


def check_cgroup_path(path: str) -> None:
    """A cheap guard (the full check, cgroups.validate_path, is done when
    the cgroup is made): absolute, no ``..``, no NUL."""
    if not path.startswith("/") or "\0" in path or ("/.." in path and ".." in path.split("/")):
        raise InvalidArgument(f"cgroup path {path!r}: must be absolute, without '..'")


def _count_procs(directory: str) -> int:
    data = read_control_file(directory + "/cgroup.procs")
    return 0 if data is None else data.count(b"\n")


def _sample(
    now_ns: int,
    cpu_ns: int,
    usage: int,
    inactive_file: int,
    rss: int,
    limit: int | None,
    faults: int,
    major: int,
    swap: int | None,
    pids: int,
) -> CgroupSample:
    working_set = max(usage - inactive_file, 0)
    return CgroupSample(
        timestamp_ns=now_ns,
        cpu_usage_ns=cpu_ns,
        memory_usage_bytes=usage,
        memory_working_set_bytes=working_set,
        memory_rss_bytes=rss,
        memory_limit_bytes=limit,
        memory_available_bytes=None if limit is None else max(limit - working_set, 0),
        page_faults=faults,
        major_page_faults=major,
        swap_usage_bytes=swap,
        pids=pids,
    )


def _read_v1(v1: Mapping[str, str], path: str, now_ns: int | None) -> CgroupSample | None:
    memory_root = v1.get("memory")
    cpuacct_root = v1.get("cpuacct")
    pids_root = v1.get("pids")
    memory = cgroup_dir(memory_root, path) if memory_root else None
    cpuacct = cgroup_dir(cpuacct_root, path) if cpuacct_root else None
    pids_dir = cgroup_dir(pids_root, path) if pids_root else None
    # Whether the cgroup exists is decided in one hierarchy, the memory one
    # when there is one; a hierarchy where the cgroup is missing otherwise
    # just contributes zeros (no accounting there).
    primary = memory or cpuacct or pids_dir
    if primary is None:
        raise RuntimeFailure("no cpuacct, memory or pids cgroup v1 hierarchy is mounted")

    ts = time.time_ns() if now_ns is None else now_ns
    cpu = _int(read_control_file(cpuacct + "/cpuacct.usage")) if cpuacct else None
    if cpuacct is not None and cpu is None and primary == cpuacct and not os.path.isdir(cpuacct):
        return None

    usage: int | None = None
    limit: int | None = None
    swap: int | None = None
    mstat = [0, 0, 0, 0]  # inactive_file, rss, pgfault, pgmajfault
    if memory is not None:
        usage = _int(read_control_file(memory + "/memory.usage_in_bytes"))
        if usage is None and not os.path.isdir(memory):
            return None
        limit = _limit(read_control_file(memory + "/memory.limit_in_bytes"))
        mstat = _fields(read_control_file(memory + "/memory.stat"), _V1_MEMORY_STAT)
        # memsw files exist only with swap accounting on (swapaccount=1).
        memsw = _int(read_control_file(memory + "/memory.memsw.usage_in_bytes"))
        if memsw is not None and usage is not None:
            # Two reads, two moments: never report a negative difference.
            swap = max(memsw - usage, 0)

    pids: int | None = None
    if pids_dir is not None:
        # The root cgroup has no pids.current; count processes instead.
        pids = _int(read_control_file(pids_dir + "/pids.current"))
        if pids is None and primary == pids_dir and not os.path.isdir(pids_dir):
            return None
    if pids is None:
        pids = _count_procs(primary)

    return _sample(
        ts,
        cpu or 0,
        usage or 0,
        mstat[0],
        mstat[1],
        limit,
        mstat[2],
        mstat[3],
        swap,
        pids,
    )


def _read_v2(unified: str | None, path: str, now_ns: int | None) -> CgroupSample | None:
    if not unified:
        raise RuntimeFailure("cgroup layout is v2 but has no unified mount point")
    directory = cgroup_dir(unified, path)
    ts = time.time_ns() if now_ns is None else now_ns
    # cpu.stat is there in every v2 cgroup (the core keeps usage_usec even
    # without the cpu controller), so its absence means the cgroup is gone.
    cpu_stat = read_control_file(directory + "/cpu.stat")
    if cpu_stat is None and not os.path.isdir(directory):
        return None
    (cpu_usec,) = _fields(cpu_stat, _V2_CPU_STAT)
    # Without the memory controller enabled for this cgroup (parent's
    # cgroup.subtree_control) these files are absent: zeros and None.
    usage = _int(read_control_file(directory + "/memory.current"))
    limit = _limit(read_control_file(directory + "/memory.max")) if usage is not None else None
    mstat = _fields(read_control_file(directory + "/memory.stat") if usage is not None else None, _V2_MEMORY_STAT)
    swap = _int(read_control_file(directory + "/memory.swap.current")) if usage is not None else None
    pids = _int(read_control_file(directory + "/pids.current"))
    if pids is None:
        pids = _count_procs(directory)
    return _sample(
        ts,
        cpu_usec * 1000,
        usage or 0,
        mstat[0],
        mstat[1],
        limit,
        mstat[2],
        mstat[3],
        swap,
        pids,
    )


def read_cgroup(layout: Layout, path: str, now_ns: int | None = None) -> CgroupSample | None:
    """The counters of cgroup *path* (absolute inside the hierarchies, e.g.
    ``/kubepods/pod<uid>/<container id>``).

    Blocking (a handful of small reads, each file read once): call it from a
    worker thread.  Returns None when the cgroup does not exist (in the
    memory hierarchy for v1, else cpuacct, else pids; the unified one for
    v2).  Counters a controller would provide but the host lacks are 0
    (None for the optional ones).  *now_ns* replaces the wall-clock
    timestamp (tests).  Raises InvalidArgument for a relative path or one
    with ``..``, RuntimeFailure for a file that cannot be read (other than
    missing).
    """
    check_cgroup_path(path)
    if layout.mode == "v2":
        return _read_v2(layout.unified, path, now_ns)
    return _read_v1(layout.v1, path, now_ns)


def read_cgroups(layout: Layout, paths: Iterable[str]) -> dict[str, CgroupSample | None]:
    """:func:`read_cgroup` for each of *paths*, in one go: what a caller
    runs in a single worker thread for a ListContainerStats.

    A path whose cgroup is gone maps to None; so does one whose files cannot
    be read, which is logged, so that one bad cgroup does not cost the
    stats of all the others.
    """
    result: dict[str, CgroupSample | None] = {}
    for path in paths:
        try:
            result[path] = read_cgroup(layout, path)
        except (RuntimeFailure, InvalidArgument, ValueError) as e:
            # ValueError: a control file with unexpected content.
            log.warn("cgroup stats of {path}: {error}", path=path, error=str(e))
            result[path] = None
    return result


# ---------------------------------------------------------------------------
# CPU rates
# ---------------------------------------------------------------------------

class CpuRates:
    """``usage_nano_cores`` from cumulative CPU samples, per key (a
    container or pod id), kept in memory.

    A rate over a very short window is mostly noise (scheduler ticks,
    the moment of each read), so a new *baseline* is only accepted when it
    is at least *min_interval* seconds after the previous one.  Per key two
    baselines are kept, the newest and the one before it:

    * a sample ≥ *min_interval* after the newest baseline: the rate over
      that window is returned and the sample becomes the newest baseline
      (the kubelet, polling every ~10 s, always lands here);
    * a sample sooner than that (``crictl stats`` twice in a row, or
      between two kubelet polls): the rate since the *older* baseline is
      returned — a window of at least *min_interval* that ends now — and
      nothing is stored, so quick callers cannot shrink the kubelet's
      window;
    * with no older baseline yet (the second sample ever came quickly), the
      rate over the short window is the best there is; it is returned, and
      not stored either.

    ``None`` on the first sample of a key, when time did not move forward
    (same or earlier timestamp; the timestamps are wall-clock), and when the
    counter went backwards (the cgroup was made anew under the same key:
    the sample then starts over as the only baseline).  Thread-safe.
    """

    def __init__(self, min_interval: float = 1.0) -> None:
        self._min_ns = int(min_interval * 1e9)
        # key → (older baseline or None, newest baseline)
        self._samples: dict[str, tuple[CgroupSample | None, CgroupSample]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _rate(before: CgroupSample, after: CgroupSample) -> int | None:
        dt = after.timestamp_ns - before.timestamp_ns
        if dt <= 0:
            return None
        used = after.cpu_usage_ns - before.cpu_usage_ns
        # ns of CPU per ns of time = cores; × 1e9 = nano cores.
        return used * 1_000_000_000 // dt

    def observe(self, key: str, sample: CgroupSample) -> int | None:
        """Nano cores used under *key* up to *sample* (see the class doc for
        the window), or None."""
        with self._lock:
            stored = self._samples.get(key)
            if stored is None:
                self._samples[key] = (None, sample)
                return None
            older, newest = stored
            if sample.cpu_usage_ns < newest.cpu_usage_ns:
                self._samples[key] = (None, sample)
                return None
            if sample.timestamp_ns - newest.timestamp_ns >= self._min_ns:
                self._samples[key] = (newest, sample)
                return self._rate(newest, sample)
            return self._rate(older if older is not None else newest, sample)

    def forget(self, key: str) -> None:
        """Drop what is kept for *key* (the container or pod was removed)."""
        with self._lock:
            self._samples.pop(key, None)


# ---------------------------------------------------------------------------
# Disk usage
# ---------------------------------------------------------------------------

def disk_usage(path: str) -> tuple[int, int]:
    """``(bytes, inodes)`` used by the tree at *path*, like ``du -x``:
    allocated blocks (``st_blocks`` × 512, so sparse files count what they
    occupy), every inode once (hard links are counted once), without
    following symlinks or crossing into other file systems (mounts inside).

    Blocking: run it in a thread.  Entries that vanish or cannot be read
    during the walk are skipped (a running container writes as we look);
    *path* itself missing raises FileNotFoundError.
    """
    top = os.lstat(path)
    used = top.st_blocks * 512
    inodes = 1
    if not stat.S_ISDIR(top.st_mode):
        return used, inodes
    device = top.st_dev
    # Only inodes with more than one link can be met twice: remember just
    # those, so a tree of a million plain files costs no big set.
    linked: set[int] = set()
    pending = [path]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != device:
                    continue  # a mount point: another file system's usage
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in linked:
                        continue
                    linked.add(st.st_ino)
                used += st.st_blocks * 512
                inodes += 1
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return used, inodes


@dataclass
class _Entry:
    """What :class:`UsageCache` keeps for one path."""

    value: tuple[int, int] | None = None
    measured_at: float = float("-inf")  # reactor time the stored value's walk began
    running: bool = False
    waiters: list[Deferred] = field(default_factory=list)  # for the running walk
    followers: list[Deferred] = field(default_factory=list)  # for the walk after it


class UsageCache:
    """Disk usage ``(bytes, inodes)`` of directories (containers' writable
    layers), measured in *threadpool*, never on the reactor thread, and
    cached between calls.

    Use it from the reactor thread only (but :meth:`peek`).  At most one walk per path runs at
    a time: :meth:`get` starts a background walk when the value is missing
    or older than *max_age* seconds and none is running; :meth:`measure`
    queues one walk to start after the running one (callers arriving
    meanwhile share it), so its answer never predates the call.

    :param reactor: provides ``seconds`` and ``callFromThread``.
    :param threadpool: a started ``twisted.python.threadpool.ThreadPool``.
    :param max_age: seconds after which :meth:`get` refreshes a value.
    :param walk: the measuring function, :func:`disk_usage` by default.
    """

    def __init__(
        self,
        reactor: Any,
        threadpool: Any,
        max_age: float = 10.0,
        walk: Callable[[str], tuple[int, int]] = disk_usage,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._max_age = max_age
        self._walk = walk
        self._entries: dict[str, _Entry] = {}

    def get(self, path: str) -> tuple[int, int] | None:
        """The cached ``(bytes, inodes)`` of *path*, None before the first
        measurement finished (or when the path was found missing).  Starts
        a background refresh when the value is older than *max_age*."""
        entry = self._entries.get(path)
        if entry is None:
            entry = self._entries[path] = _Entry()
        if not entry.running and self._reactor.seconds() - entry.measured_at >= self._max_age:
            self._start(path, entry)
        return entry.value

    def peek(self, path: str) -> tuple[int, int] | None:
        """The cached ``(bytes, inodes)`` of *path*, or None; any thread.
        Starts nothing (the reactor thread calls :meth:`get` for that). A
        value is an immutable tuple replaced whole, so reading it without
        the reactor is safe."""
        entry = self._entries.get(path)
        return entry.value if entry is not None else None

    async def measure(self, path: str) -> tuple[int, int]:
        """Measure *path* now (in a thread), cache and return the result.
        Raises what the walk raised (FileNotFoundError for a missing
        path)."""
        entry = self._entries.get(path)
        if entry is None:
            entry = self._entries[path] = _Entry()
        waiter: Deferred = Deferred()
        if entry.running:
            entry.followers.append(waiter)
        else:
            entry.waiters.append(waiter)
            self._start(path, entry)
        return await waiter

    def forget(self, path: str) -> None:
        """Drop *path* from the cache; a walk still running is not stored."""
        self._entries.pop(path, None)

    def _start(self, path: str, entry: _Entry) -> None:
        entry.running = True
        started = self._reactor.seconds()
        d = deferToThreadPool(self._reactor, self._threadpool, self._walk, path)
        d.addBoth(self._done, path, entry, started)

    def _done(self, result: tuple[int, int] | Failure, path: str, entry: _Entry, started: float) -> None:
        entry.running = False
        waiters, entry.waiters = entry.waiters, []
        failed = isinstance(result, Failure)
        if self._entries.get(path) is entry:  # not forgotten meanwhile
            # A failed walk also counts as an attempt: get() tries again
            # after max_age, not on every call.
            entry.measured_at = started
            if not failed:
                entry.value = result
            elif result.check(FileNotFoundError):
                entry.value = None  # the layer is gone: nothing to report
        if failed and not waiters:
            if result.check(FileNotFoundError):
                log.debug("disk usage of {path}: gone", path=path)
            else:
                log.failure("disk usage of {path}", failure=result, path=path)
        for waiter in waiters:
            if failed:
                waiter.errback(result)
            else:
                waiter.callback(result)
        if entry.followers:
            entry.waiters, entry.followers = entry.followers, []
            self._start(path, entry)


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

_NET_TOTAL_KEYS = ("rx_bytes", "rx_errors", "tx_bytes", "tx_errors")


def net_dev_totals(stats: Mapping[str, Mapping[str, int]], exclude: Iterable[str] = ("lo",)) -> dict[str, int]:
    """Counters of *stats* (interface → counters, as
    :func:`rktlet.oci.namespaces.read_net_dev` returns) summed over every
    interface except those in *exclude*.

    The result always has ``rx_bytes``, ``rx_errors``, ``tx_bytes`` and
    ``tx_errors`` (0 without interfaces), plus any other counter the
    interfaces carry (packets, drops).  *stats* is not changed: the
    per-interface figures stay available to the caller.
    """
    skip = frozenset(exclude)
    totals = dict.fromkeys(_NET_TOTAL_KEYS, 0)
    for name, counters in stats.items():
        if name in skip:
            continue
        for key, value in counters.items():
            totals[key] = totals.get(key, 0) + value
    return totals
