"""rktlet.oci.stats on the real kernel: a cgroup of our own with real
processes in it — one holding 64 MiB, one spinning on a CPU — read through
this host's v1 hierarchies, then through a cgroup2 mount the test makes (the
pure-v2 code paths).  Every process started is killed by pid and every
cgroup made is removed (in the v1 hierarchies and the unified tree), and the
cgroup2 mount detached, pass or fail."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from rktlet.oci import cgroups
from rktlet.oci.cgroups import Layout
from rktlet.oci.stats import CpuRates, read_cgroup, read_cgroups

pytestmark = pytest.mark.root

MiB = 1 << 20

# Waits for a line on stdin (sent once it is in the cgroup, so that the
# memory is charged there, not where it started), then touches every page of
# 64 MiB and holds it.
HOLD_64M = (
    "import sys, time\n"
    "sys.stdin.readline()\n"
    "x = bytearray(64 << 20)\n"
    "[x.__setitem__(i, 1) for i in range(0, len(x), 4096)]\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)
BUSY = "while True: pass"


class Scope:
    """A test cgroup and the processes put in it; :meth:`close` kills the
    processes (by pid) and removes the cgroup everywhere it exists."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.path = f"/rktlet-stats-test-{uuid.uuid4().hex[:12]}"
        self.created: list[str] = []
        self.processes: list[subprocess.Popen] = []

    def make(self, path: str | None = None) -> str:
        path = path or self.path
        self.created += cgroups.ensure(self.layout, path)
        return path

    def start(self, code: str, path: str | None = None, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", code], **kwargs)
        self.processes.append(process)
        cgroups.add_process(self.layout, path or self.path, process.pid)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        # The unified-tree counterpart on a hybrid host is among what ensure
        # made; existing() catches anything made but not recorded.
        leftovers = cgroups.existing(self.layout, self.path)
        cgroups.remove(self.created + leftovers)


@pytest.fixture
def v1_scope() -> Iterator[Scope]:
    layout = cgroups.detect()
    if layout.mode == "v2":
        pytest.skip("this host has no cgroup v1 hierarchies")
    scope = Scope(layout)
    try:
        yield scope
    finally:
        scope.close()


def _process_cpu_ns(pid: int) -> int:
    """The time *pid* has spent on a CPU (first field of its schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _measure_rate(layout: Layout, path: str, busy_pid: int) -> tuple[int, int]:
    """(rate from CpuRates over ~1 s, the busy process's own rate)."""
    rates = CpuRates()
    first = read_cgroup(layout, path)
    own_before = _process_cpu_ns(busy_pid)
    assert rates.observe("c", first) is None
    time.sleep(1.0)
    second = read_cgroup(layout, path)
    own_after = _process_cpu_ns(busy_pid)
    rate = rates.observe("c", second)
    assert rate is not None
    own = (own_after - own_before) * 1_000_000_000 // (second.timestamp_ns - first.timestamp_ns)
    return rate, own


def test_v1_memory_cpu_and_pids(v1_scope):
    layout, path = v1_scope.layout, v1_scope.make()
    limit = 512 * MiB
    with open(layout.v1["memory"] + path + "/memory.limit_in_bytes", "w") as f:
        f.write(str(limit))

    holder = v1_scope.start(HOLD_64M, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    holder.stdin.write(b"go\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == b"ready\n"
    busy = v1_scope.start(BUSY)

    sample = read_cgroup(layout, path)
    assert sample is not None
    assert sample.memory_working_set_bytes >= 64 * MiB, sample
    assert sample.memory_usage_bytes >= sample.memory_working_set_bytes
    assert sample.memory_rss_bytes >= 64 * MiB
    assert sample.memory_limit_bytes == limit
    assert sample.memory_available_bytes == limit - sample.memory_working_set_bytes
    assert sample.page_faults > 0
    if os.path.exists(layout.v1["memory"] + path + "/memory.memsw.usage_in_bytes"):
        assert sample.swap_usage_bytes is not None and sample.swap_usage_bytes >= 0
    assert sample.pids == 2 == len(cgroups.procs(layout, path))
    assert abs(sample.timestamp_ns - time.time_ns()) < 5_000_000_000

    rate, own = _measure_rate(layout, path, busy.pid)
    # The cgroup's rate is its processes' rate: the spinning one, plus a
    # sleeping one that costs nothing.
    assert abs(rate - own) < 50_000_000, (rate, own)
    assert 700_000_000 <= rate <= 1_300_000_000, (rate, own)

    # Cheap enough to run for 200 containers per ListContainerStats.
    timings = []
    for _ in range(200):
        t = time.perf_counter_ns()
        read_cgroup(layout, path)
        timings.append(time.perf_counter_ns() - t)
    assert statistics.median(timings) < 1_000_000  # 1 ms: ~30 µs here

    gone = path + "/not-there"
    batch = read_cgroups(layout, [path, gone])
    assert batch[gone] is None and batch[path].pids == 2

    holder.kill()
    busy.kill()
    holder.wait(timeout=10)
    busy.wait(timeout=10)
    assert read_cgroup(layout, path).pids == 0


def test_v1_missing_cgroup_is_none():
    layout = cgroups.detect()
    if layout.mode == "v2":
        pytest.skip("this host has no cgroup v1 hierarchies")
    assert read_cgroup(layout, f"/rktlet-stats-test-{uuid.uuid4().hex[:12]}") is None


# ---------------------------------------------------------------------------
# cgroup v2, on a mount of our own
# ---------------------------------------------------------------------------

@pytest.fixture
def v2_scope(tmp_path) -> Iterator[Scope]:
    """A cgroup2 mount (on a hybrid host: the same hierarchy as its unified
    mount) and a scope in it, read as a pure-v2 host would be."""
    mount_point = tmp_path / "cgroup2"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "cgroup2", "none", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount cgroup2 here: {result.stderr.strip()}")
    try:
        scope = Scope(Layout(mode="v2", v1={}, unified=str(mount_point)))
        try:
            yield scope
        finally:
            scope.close()
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _controllers(directory: str) -> set[str]:
    with open(directory + "/cgroup.controllers") as f:
        return set(f.read().split())


def test_v2_cpu_and_pids(v2_scope):
    """cpu.stat's usage_usec is kept by the cgroup core, so CPU rates and
    process counts work whatever controllers the host gives cgroup2."""
    layout, path = v2_scope.layout, v2_scope.make()
    busy = v2_scope.start(BUSY)
    sample = read_cgroup(layout, path)
    assert sample is not None
    assert sample.pids == 1
    if "memory" not in _controllers(layout.unified):
        # The memory files are absent: zeros and None, not an error.
        assert (sample.memory_usage_bytes, sample.memory_limit_bytes, sample.swap_usage_bytes) == (0, None, None)

    rate, own = _measure_rate(layout, path, busy.pid)
    assert abs(rate - own) < 50_000_000, (rate, own)
    assert 700_000_000 <= rate <= 1_300_000_000, (rate, own)
    assert read_cgroup(layout, path + "/not-there") is None


def test_v2_memory(v2_scope):
    layout = v2_scope.layout
    root = layout.unified
    wanted = {"memory", "pids"}
    if not wanted <= _controllers(root):
        pytest.skip(
            f"cgroup2 here offers {sorted(_controllers(root)) or 'no controllers'}: memory and pids are "
            "bound to the v1 hierarchies (hybrid host), so memory.current etc. cannot exist in cgroup2"
        )
    with open(root + "/cgroup.subtree_control") as f:
        if not wanted <= set(f.read().split()):
            pytest.skip("the cgroup2 root does not delegate memory and pids to its children; not changing that")
    # v2's "no internal processes": the processes go in a leaf, the level
    # above it hands the controllers down.
    top = v2_scope.make()
    with open(root + top + "/cgroup.subtree_control", "w") as f:
        f.write("+memory +pids")
    leaf = v2_scope.make(top + "/ctr")
    with open(root + leaf + "/memory.max", "w") as f:
        f.write(str(512 * MiB))
    holder = v2_scope.start(HOLD_64M, path=leaf, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    holder.stdin.write(b"go\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == b"ready\n"

    sample = read_cgroup(layout, leaf)
    assert sample.memory_working_set_bytes >= 64 * MiB, sample
    assert sample.memory_rss_bytes >= 64 * MiB
    assert sample.memory_limit_bytes == 512 * MiB
    assert sample.memory_available_bytes == 512 * MiB - sample.memory_working_set_bytes
    assert sample.pids == 1
