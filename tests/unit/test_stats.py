"""rktlet.oci.stats without a real cgroup file system: cgroup samples read
from fixture trees shaped like the kernel's files (``fixtures/cgroups``:
v1 hierarchies ``memory``, ``cpu,cpuacct``, ``pids``; a v2 unified tree),
CPU rates from synthetic samples, the disk-usage cache with a fake reactor
and thread pool, and network totals."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from rktlet.errors import InvalidArgument
from rktlet.oci.cgroups import Layout
from rktlet.oci.stats import CgroupSample, CpuRates, UsageCache, disk_usage, net_dev_totals, read_cgroup, read_cgroups

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "cgroups")
UNLIMITED_4K = 9223372036854771712  # how v1 shows "no limit" with 4 KiB pages
MiB = 1 << 20


def v1_layout(root: str = FIXTURES + "/v1", pids: bool = True) -> Layout:
    v1 = {
        "cpu": root + "/cpu,cpuacct",
        "cpuacct": root + "/cpu,cpuacct",
        "memory": root + "/memory",
        "name=systemd": root + "/systemd",
    }
    if pids:
        v1["pids"] = root + "/pids"
    return Layout(mode="hybrid", v1=v1, unified=root + "/unified")


def v2_layout(root: str = FIXTURES + "/v2") -> Layout:
    return Layout(mode="v2", v1={}, unified=root)


@pytest.fixture
def v1_copy(tmp_path) -> str:
    """A writable copy of the v1 fixture tree."""
    root = str(tmp_path / "v1")
    shutil.copytree(FIXTURES + "/v1", root)
    return root


@pytest.fixture
def v2_copy(tmp_path) -> str:
    root = str(tmp_path / "v2")
    shutil.copytree(FIXTURES + "/v2", root)
    return root


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------
# cgroup v1
# ---------------------------------------------------------------------------

def test_v1_unlimited_with_swap_accounting():
    sample = read_cgroup(v1_layout(), "/kubepods/besteffort/pod1/ctr1", now_ns=123)
    assert sample == CgroupSample(
        timestamp_ns=123,
        cpu_usage_ns=96786245,
        memory_usage_bytes=26214400,
        memory_working_set_bytes=26214400 - 6291456,  # minus total_inactive_file
        memory_rss_bytes=15470592,  # total_rss
        memory_limit_bytes=None,  # 9223372036854771712
        memory_available_bytes=None,
        page_faults=10954,
        major_page_faults=3,
        swap_usage_bytes=27262976 - 26214400,  # memsw.usage - usage
        pids=3,  # pids.current
    )


def test_v1_limited_without_swap_accounting_or_pids_cgroup():
    sample = read_cgroup(v1_layout(), "/kubepods/burstable/pod2/ctr2", now_ns=1)
    assert sample is not None
    assert sample.cpu_usage_ns == 5_000_000_000
    assert sample.memory_usage_bytes == 100 * MiB
    assert sample.memory_working_set_bytes == 100 * MiB - 4 * MiB
    assert sample.memory_limit_bytes == 256 * MiB
    assert sample.memory_available_bytes == 256 * MiB - 96 * MiB
    assert (sample.page_faults, sample.major_page_faults) == (40000, 12)
    assert sample.swap_usage_bytes is None  # no memory.memsw.* files
    assert sample.pids == 1  # no pids cgroup there: cgroup.procs counted


def test_v1_reads_the_total_lines_of_memory_stat_in_any_order(v1_copy):
    """total_* (this cgroup and its children) is what counts, not the
    cgroup-local rss/pgfault lines, whatever their order in the file."""
    directory = v1_copy + "/memory/kubepods/besteffort/pod1/ctr1"
    with open(directory + "/memory.stat") as f:
        lines = f.read().splitlines()
    write(directory + "/memory.stat", "\n".join(reversed(lines)))  # and no final newline
    sample = read_cgroup(v1_layout(v1_copy), "/kubepods/besteffort/pod1/ctr1")
    assert (sample.memory_rss_bytes, sample.page_faults) == (15470592, 10954)


def test_v1_key_on_the_last_line_without_newline(v1_copy):
    directory = v1_copy + "/memory/kubepods/besteffort/pod1/ctr1"
    write(directory + "/memory.stat", "rss 1\ntotal_pgmajfault 9\ntotal_rss 77")
    sample = read_cgroup(v1_layout(v1_copy), "/kubepods/besteffort/pod1/ctr1")
    assert (sample.memory_rss_bytes, sample.major_page_faults, sample.page_faults) == (77, 9, 0)
    assert sample.memory_working_set_bytes == sample.memory_usage_bytes  # no total_inactive_file


@pytest.mark.parametrize("value", [str(UNLIMITED_4K), "9223372036854710272", "9223372036854775807"])
def test_v1_huge_limits_mean_unlimited(v1_copy, value):
    """The "no limit" value depends on the page size (4 KiB: …771712,
    64 KiB: …710272): any value near LONG_MAX is unlimited."""
    write(v1_copy + "/memory/kubepods/burstable/pod2/ctr2/memory.limit_in_bytes", value + "\n")
    sample = read_cgroup(v1_layout(v1_copy), "/kubepods/burstable/pod2/ctr2")
    assert sample.memory_limit_bytes is None
    assert sample.memory_available_bytes is None


def test_v1_working_set_and_available_are_floored_at_zero(v1_copy):
    directory = v1_copy + "/memory/kubepods/burstable/pod2/ctr2"
    write(directory + "/memory.usage_in_bytes", "1000\n")  # usage read before a cache refill
    write(directory + "/memory.limit_in_bytes", "4096\n")
    with open(directory + "/memory.stat") as f:
        text = f.read().replace("total_inactive_file 4194304", "total_inactive_file 8192")
    write(directory + "/memory.stat", text)
    sample = read_cgroup(v1_layout(v1_copy), "/kubepods/burstable/pod2/ctr2")
    assert sample.memory_working_set_bytes == 0
    assert sample.memory_available_bytes == 4096
    write(directory + "/memory.usage_in_bytes", "10000\n")
    sample = read_cgroup(v1_layout(v1_copy), "/kubepods/burstable/pod2/ctr2")
    assert sample.memory_working_set_bytes == 10000 - 8192
    assert sample.memory_available_bytes == 4096 - 1808


def test_v1_swap_never_negative(v1_copy):
    # memsw.usage and usage are read at two moments; usage may have grown.
    write(v1_copy + "/memory/kubepods/besteffort/pod1/ctr1/memory.memsw.usage_in_bytes", "1000\n")
    assert read_cgroup(v1_layout(v1_copy), "/kubepods/besteffort/pod1/ctr1").swap_usage_bytes == 0


def test_v1_without_pids_hierarchy_counts_processes():
    sample = read_cgroup(v1_layout(pids=False), "/kubepods/besteffort/pod1/ctr1")
    assert sample.pids == 2  # two lines in memory's cgroup.procs


def test_v1_root_cgroup_has_no_pids_current(v1_copy):
    for name in ("memory", "cpu,cpuacct", "pids"):
        write(f"{v1_copy}/{name}/cgroup.procs", "1\n2\n3\n4\n5\n")
    write(v1_copy + "/memory/memory.usage_in_bytes", "1000000\n")
    write(v1_copy + "/cpu,cpuacct/cpuacct.usage", "77\n")
    sample = read_cgroup(v1_layout(v1_copy), "/")
    assert (sample.pids, sample.cpu_usage_ns, sample.memory_usage_bytes) == (5, 77, 1000000)
    assert sample.swap_usage_bytes is None and sample.memory_limit_bytes is None


def test_v1_missing_cgroup_is_none():
    assert read_cgroup(v1_layout(), "/kubepods/besteffort/pod1/gone") is None
    assert read_cgroup(v1_layout(), "/nothing") is None


def test_v1_missing_in_a_secondary_hierarchy_gives_zeros(v1_copy):
    """Only the memory hierarchy decides whether the cgroup exists."""
    shutil.rmtree(v1_copy + "/cpu,cpuacct/kubepods/besteffort/pod1/ctr1")
    sample = read_cgroup(v1_layout(v1_copy), "/kubepods/besteffort/pod1/ctr1")
    assert sample.cpu_usage_ns == 0
    assert sample.memory_usage_bytes == 26214400
    shutil.rmtree(v1_copy + "/memory/kubepods/besteffort/pod1/ctr1")
    assert read_cgroup(v1_layout(v1_copy), "/kubepods/besteffort/pod1/ctr1") is None


def test_v1_without_memory_hierarchy_decides_on_cpuacct():
    layout = Layout(mode="v1", v1={"cpuacct": FIXTURES + "/v1/cpu,cpuacct"})
    sample = read_cgroup(layout, "/kubepods/besteffort/pod1/ctr1")
    assert sample.cpu_usage_ns == 96786245
    assert (sample.memory_usage_bytes, sample.memory_limit_bytes, sample.pids) == (0, None, 2)
    assert read_cgroup(layout, "/kubepods/besteffort/pod1/gone") is None


# ---------------------------------------------------------------------------
# cgroup v2
# ---------------------------------------------------------------------------

def test_v2_unlimited_with_swap():
    sample = read_cgroup(v2_layout(), "/kubepods/besteffort/pod1/ctr1", now_ns=5)
    assert sample == CgroupSample(
        timestamp_ns=5,
        cpu_usage_ns=2_500_000 * 1000,  # usage_usec
        memory_usage_bytes=32 * MiB,  # memory.current
        memory_working_set_bytes=32 * MiB - 8 * MiB,  # minus inactive_file
        memory_rss_bytes=20 * MiB,  # anon (the first line of memory.stat)
        memory_limit_bytes=None,  # "max"
        memory_available_bytes=None,
        page_faults=52000,
        major_page_faults=7,
        swap_usage_bytes=2 * MiB,
        pids=4,
    )


def test_v2_limited_without_pids_controller():
    sample = read_cgroup(v2_layout(), "/kubepods/burstable/pod2/ctr2")
    assert sample.cpu_usage_ns == 1_000_000
    assert sample.memory_limit_bytes == 512 * MiB
    assert sample.memory_working_set_bytes == MiB - 131072
    assert sample.memory_available_bytes == 512 * MiB - (MiB - 131072)
    assert sample.memory_rss_bytes == 786432  # "anon", not "anon_thp"
    assert sample.swap_usage_bytes == 0
    assert sample.pids == 3  # counted in cgroup.procs


def test_v2_without_memory_controller():
    """A cgroup whose parent does not enable memory/pids (the unified tree of
    a hybrid host): only the core files are there."""
    sample = read_cgroup(v2_layout(), "/kubepods/besteffort/pod3/ctr3")
    assert sample.cpu_usage_ns == 42_000
    assert (sample.memory_usage_bytes, sample.memory_working_set_bytes, sample.memory_rss_bytes) == (0, 0, 0)
    assert (sample.memory_limit_bytes, sample.memory_available_bytes, sample.swap_usage_bytes) == (None, None, None)
    assert (sample.page_faults, sample.pids) == (0, 0)


def test_v2_missing_cgroup_is_none():
    assert read_cgroup(v2_layout(), "/kubepods/besteffort/pod1/gone") is None


def test_v2_huge_memory_max_is_unlimited(v2_copy):
    write(v2_copy + "/kubepods/burstable/pod2/ctr2/memory.max", f"{UNLIMITED_4K}\n")
    assert read_cgroup(v2_layout(v2_copy), "/kubepods/burstable/pod2/ctr2").memory_limit_bytes is None


# ---------------------------------------------------------------------------
# Both
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["kubepods/pod1", "/kubepods/../etc", "/a/..", ""])
def test_bad_paths_refused(path):
    with pytest.raises(InvalidArgument):
        read_cgroup(v1_layout(), path)


def test_dotdot_inside_a_name_is_fine():
    assert read_cgroup(v1_layout(), "/kubepods/a..b") is None


def test_timestamp_is_wall_clock_by_default():
    import time

    before = time.time_ns()
    sample = read_cgroup(v2_layout(), "/kubepods/besteffort/pod1/ctr1")
    assert before <= sample.timestamp_ns <= time.time_ns()


@pytest.mark.parametrize("layout, path", [
    (v1_layout(), "/kubepods/besteffort/pod1/ctr1"),
    (v2_layout(), "/kubepods/besteffort/pod1/ctr1"),
])
def test_each_file_read_once_and_no_process_spawned(monkeypatch, layout, path):
    opened: list[str] = []
    real_open = os.open

    def counting_open(p: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(str(p))
        return real_open(p, flags, *args, **kwargs)

    def no_spawn(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("read_cgroup spawned a process")

    monkeypatch.setattr(os, "open", counting_open)
    for name in ("fork", "posix_spawn", "posix_spawnp", "system", "execv", "execve"):
        monkeypatch.setattr(os, name, no_spawn)
    monkeypatch.setattr(subprocess, "Popen", no_spawn)
    assert read_cgroup(layout, path) is not None
    assert opened and len(opened) == len(set(opened)), opened
    assert len(opened) <= 6


def test_read_cgroups_batch(v1_copy):
    layout = v1_layout(v1_copy)
    # A control file that cannot be read (EISDIR here; EACCES, EIO on a
    # real host) costs that cgroup's stats only.
    broken = v1_copy + "/memory/kubepods/burstable/pod2/ctr2/memory.stat"
    os.unlink(broken)
    os.mkdir(broken)
    result = read_cgroups(layout, ["/kubepods/besteffort/pod1/ctr1", "/kubepods/burstable/pod2/ctr2", "/gone", "relative"])
    assert list(result) == ["/kubepods/besteffort/pod1/ctr1", "/kubepods/burstable/pod2/ctr2", "/gone", "relative"]
    assert result["/kubepods/besteffort/pod1/ctr1"].cpu_usage_ns == 96786245
    assert result["/kubepods/burstable/pod2/ctr2"] is None
    assert result["/gone"] is None
    assert result["relative"] is None


# ---------------------------------------------------------------------------
# CpuRates
# ---------------------------------------------------------------------------

S = 1_000_000_000  # one second in ns


def cpu(t_ns: int, used_ns: int) -> CgroupSample:
    return CgroupSample(
        timestamp_ns=t_ns, cpu_usage_ns=used_ns, memory_usage_bytes=0, memory_working_set_bytes=0,
        memory_rss_bytes=0, memory_limit_bytes=None, memory_available_bytes=None, page_faults=0,
        major_page_faults=0, swap_usage_bytes=None, pids=1,
    )


def test_one_busy_core_for_one_second_is_1e9_nano_cores():
    rates = CpuRates()
    assert rates.observe("c", cpu(100 * S, 5 * S)) is None  # first sample
    assert rates.observe("c", cpu(101 * S, 6 * S)) == 1_000_000_000
    assert rates.observe("c", cpu(111 * S, 6 * S + 5 * S)) == 500_000_000  # half a core over 10 s
    assert rates.observe("c", cpu(113 * S, 11 * S + 3 * S)) == 1_500_000_000  # 1.5 cores


def test_keys_are_independent_and_forgotten():
    rates = CpuRates()
    rates.observe("a", cpu(0, 0))
    rates.observe("b", cpu(0, 0))
    assert rates.observe("a", cpu(2 * S, 2 * S)) == S
    assert rates.observe("b", cpu(2 * S, S)) == S // 2
    rates.forget("a")
    rates.forget("never-seen")
    assert rates.observe("a", cpu(4 * S, 4 * S)) is None  # first again


def test_time_not_moving_gives_none():
    rates = CpuRates()
    rates.observe("c", cpu(10 * S, S))
    assert rates.observe("c", cpu(10 * S, 2 * S)) is None
    assert rates.observe("c", cpu(9 * S, 2 * S)) is None  # the wall clock stepped back


def test_counter_going_backwards_starts_over():
    """A cgroup made anew under the same key (its counter starts at 0)."""
    rates = CpuRates()
    rates.observe("c", cpu(0, 50 * S))
    assert rates.observe("c", cpu(10 * S, S)) is None
    assert rates.observe("c", cpu(20 * S, 6 * S)) == S // 2


def test_quick_second_call_uses_the_longer_window_and_does_not_move_the_baseline():
    """The kubelet polls every 10 s; crictl stats twice in a row in between
    gets sensible values and leaves the kubelet's window alone."""
    rates = CpuRates()
    rates.observe("c", cpu(0, 0))
    assert rates.observe("c", cpu(10 * S, 10 * S)) == S  # kubelet: 1 core
    # Now idle; crictl 5 s later (≥ 1 s): a new baseline, 0 cores.
    assert rates.observe("c", cpu(15 * S, 10 * S)) == 0
    # crictl again 50 ms later: the window since the older baseline (10 s).
    assert rates.observe("c", cpu(15 * S + 50_000_000, 10 * S)) == 0
    # Busy again for 0.1 s: measured over 10 s → 5.1 s, not over 50 ms.
    r = rates.observe("c", cpu(15 * S + 100_000_000, 10 * S + 100_000_000))
    assert r == 100_000_000 * S // (5 * S + 100_000_000)
    # The kubelet, 10 s after its last poll, 5 s after the last baseline.
    assert rates.observe("c", cpu(20 * S, 10 * S + 100_000_000 + 4 * S)) == (4 * S + 100_000_000) // 5


def test_quick_second_sample_ever_gives_the_short_window_rate():
    rates = CpuRates()
    rates.observe("c", cpu(0, 0))
    assert rates.observe("c", cpu(S // 10, S // 20)) == S // 2  # 100 ms, half a core
    # Not stored: the next rate is still measured from the first sample.
    assert rates.observe("c", cpu(2 * S, S)) == S // 2


def test_min_interval_is_configurable():
    rates = CpuRates(min_interval=0.0)
    rates.observe("c", cpu(0, 0))
    assert rates.observe("c", cpu(S // 10, S // 10)) == S
    assert rates.observe("c", cpu(S // 5, S // 10)) == 0  # baseline moved to 100 ms


# ---------------------------------------------------------------------------
# Disk usage and UsageCache
# ---------------------------------------------------------------------------

def test_disk_usage_counts_hard_links_once_and_does_not_follow_symlinks(tmp_path):
    top = tmp_path / "upper"
    (top / "etc" / "deep").mkdir(parents=True)
    (top / "etc" / "big").write_bytes(b"x" * (256 * 1024))
    os.link(top / "etc" / "big", top / "etc" / "deep" / "big-again")
    os.link(top / "etc" / "big", top / "big-third")
    (top / "small").write_bytes(b"y")
    os.symlink("/usr", top / "usr-link")  # not followed: /usr is not counted
    with open(top / "sparse", "wb") as f:
        f.truncate(1 << 30)  # 1 GiB apparent, (almost) no blocks

    used, inodes = disk_usage(str(top))
    # upper, etc, deep, big (once), small, usr-link, sparse
    assert inodes == 7
    expected = sum(
        os.lstat(p).st_blocks * 512
        for p in (top, top / "etc", top / "etc" / "deep", top / "etc" / "big", top / "small", top / "usr-link", top / "sparse")
    )
    assert used == expected
    assert 256 * 1024 <= used < 1 << 20


def test_disk_usage_of_a_file_and_of_nothing(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"z" * 10000)
    assert disk_usage(str(f)) == (os.lstat(f).st_blocks * 512, 1)
    with pytest.raises(FileNotFoundError):
        disk_usage(str(tmp_path / "missing"))


class FakeReactor(Clock):
    """Time under the test's control; thread results come back at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class FakeThreadPool:
    """Holds submitted work until the test runs it (``run_all``)."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Callable[..., Any], f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.queue.append((on_result, f, args))

    def run_all(self) -> int:
        n = 0
        while self.queue:
            on_result, f, args = self.queue.pop(0)
            try:
                result = f(*args)
            except BaseException as e:
                from twisted.python.failure import Failure

                on_result(False, Failure(e))
            else:
                on_result(True, result)
            n += 1
        return n


class Walks:
    """A walk function with scripted answers, recording its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answers: dict[str, Any] = {}

    def __call__(self, path: str) -> tuple[int, int]:
        self.calls.append(path)
        answer = self.answers[path]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def cache_parts() -> tuple[FakeReactor, FakeThreadPool, Walks, UsageCache]:
    reactor, pool, walks = FakeReactor(), FakeThreadPool(), Walks()
    return reactor, pool, walks, UsageCache(reactor, pool, max_age=10.0, walk=walks)


def test_cache_get_measures_in_the_pool_and_refreshes_when_old(cache_parts):
    reactor, pool, walks, cache = cache_parts
    walks.answers["/l"] = (4096, 3)
    assert cache.get("/l") is None  # nothing yet; a walk was queued
    assert walks.calls == []  # not run on the calling (reactor) thread
    assert cache.get("/l") is None
    assert pool.run_all() == 1  # one walk in flight, not two
    assert cache.get("/l") == (4096, 3)
    reactor.advance(9.9)
    walks.answers["/l"] = (8192, 4)
    assert cache.get("/l") == (4096, 3)
    assert pool.run_all() == 0  # still fresh
    reactor.advance(0.1)
    assert cache.get("/l") == (4096, 3)  # stale: the old value while a refresh runs
    assert cache.get("/l") == (4096, 3)
    assert pool.run_all() == 1
    assert cache.get("/l") == (8192, 4)


def test_cache_measure_forces_a_walk_that_starts_after_the_call(cache_parts):
    reactor, pool, walks, cache = cache_parts
    walks.answers["/l"] = (1, 1)
    cache.get("/l")  # a background walk is in flight
    first = Deferred.fromCoroutine(cache.measure("/l"))
    second = Deferred.fromCoroutine(cache.measure("/l"))
    assert len(pool.queue) == 1  # the follow-up waits for the running walk
    # The running walk (started before the calls) sees the old state: its
    # result goes to the cache but does not answer the callers...
    on_result, f, args = pool.queue.pop(0)
    on_result(True, f(*args))
    assert not first.called and not second.called
    assert cache.get("/l") == (1, 1)
    # ...the walk that starts after it does, once for both.
    walks.answers["/l"] = (2, 2)
    assert pool.run_all() == 1
    assert first.result == second.result == (2, 2)
    assert cache.get("/l") == (2, 2)
    assert walks.calls == ["/l", "/l"]


def test_cache_measure_when_idle_and_errors(cache_parts):
    reactor, pool, walks, cache = cache_parts
    walks.answers["/l"] = (10, 2)
    d = Deferred.fromCoroutine(cache.measure("/l"))
    pool.run_all()
    assert d.result == (10, 2)
    walks.answers["/l"] = FileNotFoundError(2, "gone")
    d = Deferred.fromCoroutine(cache.measure("/l"))
    pool.run_all()
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(FileNotFoundError)
    assert cache.get("/l") is None  # the layer is gone: no stale value
    assert pool.run_all() == 0  # and no retry before max_age


def test_cache_background_failure_keeps_the_value_and_retries_later(cache_parts):
    reactor, pool, walks, cache = cache_parts
    walks.answers["/l"] = (10, 2)
    cache.get("/l")
    pool.run_all()
    reactor.advance(10)
    walks.answers["/l"] = PermissionError(13, "denied")
    assert cache.get("/l") == (10, 2)
    pool.run_all()
    assert cache.get("/l") == (10, 2)
    assert pool.run_all() == 0
    reactor.advance(10)
    walks.answers["/l"] = (20, 3)
    cache.get("/l")
    pool.run_all()
    assert cache.get("/l") == (20, 3)


def test_cache_forget_drops_the_value_and_a_running_walk(cache_parts):
    reactor, pool, walks, cache = cache_parts
    walks.answers["/l"] = (10, 2)
    cache.get("/l")
    pool.run_all()
    reactor.advance(10)
    cache.get("/l")  # refresh in flight
    cache.forget("/l")
    pool.run_all()
    assert "/l" not in cache._entries  # the late result did not come back
    assert cache.get("/l") is None
    cache.forget("/never")


def test_cache_with_the_real_walk(tmp_path):
    reactor, pool = FakeReactor(), FakeThreadPool()
    cache = UsageCache(reactor, pool)
    top = tmp_path / "upper"
    top.mkdir()
    (top / "a").write_bytes(b"a" * 8192)
    os.link(top / "a", top / "b")
    d = Deferred.fromCoroutine(cache.measure(str(top)))
    pool.run_all()
    used, inodes = d.result
    assert inodes == 2  # upper, a (= b)
    assert used == (os.lstat(top).st_blocks + os.lstat(top / "a").st_blocks) * 512
    assert cache.get(str(top)) == (used, inodes)


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

def test_net_dev_totals():
    counters = {
        "lo": {"rx_bytes": 1000, "rx_packets": 10, "rx_errors": 0, "rx_drop": 0,
               "tx_bytes": 1000, "tx_packets": 10, "tx_errors": 0, "tx_drop": 0},
        "eth0": {"rx_bytes": 500, "rx_packets": 5, "rx_errors": 1, "rx_drop": 2,
                 "tx_bytes": 300, "tx_packets": 3, "tx_errors": 0, "tx_drop": 0},
        "net1": {"rx_bytes": 50, "rx_packets": 1, "rx_errors": 0, "rx_drop": 0,
                 "tx_bytes": 30, "tx_packets": 1, "tx_errors": 4, "tx_drop": 1},
    }
    snapshot = {name: dict(values) for name, values in counters.items()}
    totals = net_dev_totals(counters)
    assert totals == {
        "rx_bytes": 550, "rx_packets": 6, "rx_errors": 1, "rx_drop": 2,
        "tx_bytes": 330, "tx_packets": 4, "tx_errors": 4, "tx_drop": 1,
    }
    assert counters == snapshot  # per-interface figures untouched
    assert net_dev_totals(counters, exclude=("lo", "net1"))["rx_bytes"] == 500
    assert net_dev_totals(counters, exclude=())["tx_bytes"] == 1330
    assert net_dev_totals({}) == {"rx_bytes": 0, "rx_errors": 0, "tx_bytes": 0, "tx_errors": 0}
    assert net_dev_totals({"lo": counters["lo"]}) == {"rx_bytes": 0, "rx_errors": 0, "tx_bytes": 0, "tx_errors": 0}


def test_net_dev_totals_from_parsed_proc_net_dev():
    from rktlet.oci.namespaces import parse_net_dev

    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0\n"
        "  eth0:    9263      74    3    0    0     0          0         0     1146      13    1    0    0     0       0          0\n"
    )
    totals = net_dev_totals(parse_net_dev(text))
    assert (totals["rx_bytes"], totals["rx_errors"], totals["tx_bytes"], totals["tx_errors"]) == (9263, 3, 1146, 1)



def test_cache_peek_reads_without_starting_a_walk(cache_parts):
    reactor, pool, walks, cache = cache_parts
    walks.answers["/l"] = (4096, 3)
    assert cache.peek("/l") is None
    assert pool.run_all() == 0  # peeking queued nothing
    cache.get("/l")
    assert pool.run_all() == 1
    assert cache.peek("/l") == (4096, 3)
