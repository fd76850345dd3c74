"""The cgroupfs driver on the real kernel: this machine's v1 hierarchies
(hybrid layout) and a cgroup2 mount the test makes itself for the pure-v2
code paths.  Every cgroup made here is removed, every process started is
killed by pid, and the cgroup2 mount is detached, pass or fail."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from rktlet.errors import RuntimeFailure
from rktlet.oci import cgroups
from rktlet.oci.cgroups import Layout, add_process, detect, ensure, procs, remove

pytestmark = pytest.mark.root


class Cleanup:
    """Processes and cgroup dirs to get rid of whatever happens."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []
        self.dirs: list[str] = []

    def sleeper(self) -> subprocess.Popen:
        process = subprocess.Popen(["sleep", "300"])
        self.processes.append(process)
        return process

    def run(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        for directory in sorted(self.dirs, key=lambda d: d.count("/"), reverse=True):
            for _ in range(50):
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    try:
        yield c
    finally:
        c.run()


def _test_path() -> str:
    return f"/rktlet-test-{uuid.uuid4().hex[:12]}/pod"


def _cgroup_lines(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().splitlines()


def test_host_layout():
    layout = detect()
    assert layout.mode == "hybrid"  # this machine: v1 + /sys/fs/cgroup/unified
    assert layout.unified == "/sys/fs/cgroup/unified"
    for controller in ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"):
        assert os.path.isdir(layout.v1[controller]), controller


def test_v1_ensure_add_remove(cleanup):
    layout = detect()
    path = _test_path()
    top = path.rsplit("/", 1)[0]
    hierarchies = list(dict.fromkeys(layout.v1.values())) + ([layout.unified] if layout.mode == "hybrid" else [])

    created = ensure(layout, path)
    cleanup.dirs += created

    assert len(created) == 2 * len(hierarchies)
    for root in hierarchies:
        assert os.path.isdir(root + path)
        # Parents come before children: removing in reverse is always safe.
        assert created.index(root + top) < created.index(root + path)

    cpuset = layout.v1["cpuset"]
    for level in (top, path):
        for name in ("cpuset.cpus", "cpuset.mems"):
            with open(cpuset + level + "/" + name) as f:
                value = f.read().strip()
            with open(cpuset + "/" + name) as f:
                assert value == f.read().strip() != "", name

    assert ensure(layout, path) == []  # already there: nothing new to own

    sleeper = cleanup.sleeper()
    add_process(layout, path, sleeper.pid)
    assert procs(layout, path) == [sleeper.pid]
    lines = _cgroup_lines(sleeper.pid)
    v1_lines = [line for line in lines if not line.startswith("0::")]
    assert v1_lines and all(line.endswith(":" + path) for line in v1_lines), lines

    remove(created)
    assert sleeper.wait(timeout=5) == -9  # killed by remove
    for directory in created:
        assert not os.path.exists(directory)
    assert procs(layout, path) == []
    remove(created)  # idempotent


def test_v1_remove_takes_leftover_child_cgroups(cleanup):
    """A container cgroup runc left under the pod cgroup, with a process in
    it, does not keep the pod cgroup from being removed."""
    layout = detect()
    path = _test_path()
    created = ensure(layout, path)
    cleanup.dirs += created
    child = path + "/container"
    cleanup.dirs += ensure(layout, child)
    sleeper = cleanup.sleeper()
    add_process(layout, child, sleeper.pid)

    remove(created)
    assert sleeper.wait(timeout=5) == -9
    for directory in created:
        assert not os.path.exists(directory)


def test_v1_remove_thaws_a_frozen_cgroup(cleanup):
    layout = detect()
    path = _test_path()
    created = ensure(layout, path)
    cleanup.dirs += created
    sleeper = cleanup.sleeper()
    add_process(layout, path, sleeper.pid)
    state = layout.v1["freezer"] + path + "/freezer.state"
    with open(state, "w") as f:
        f.write("FROZEN")
    try:
        remove(created)
    finally:
        if os.path.exists(state):
            with open(state, "w") as f:
                f.write("THAWED")
    assert sleeper.wait(timeout=5) == -9


def test_v1_remove_gives_up_naming_the_dir(cleanup, monkeypatch):
    layout = detect()
    path = _test_path()
    created = ensure(layout, path)
    cleanup.dirs += created
    sleeper = cleanup.sleeper()
    add_process(layout, path, sleeper.pid)
    monkeypatch.setattr(cgroups, "_kill_all", lambda d: None)  # a process that will not die
    with pytest.raises(RuntimeFailure, match=r"remove cgroup .*/pod: Device or resource busy; processes still in it"):
        remove(created, timeout=0.2)
    assert sleeper.poll() is None


@pytest.fixture
def cgroup2_mount(tmp_path) -> Iterator[str]:
    """A cgroup2 mount of our own (on this machine the same hierarchy as
    /sys/fs/cgroup/unified), for the pure-v2 code paths."""
    mount_point = tmp_path / "cgroup2"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "cgroup2", "none", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount cgroup2 here: {result.stderr.strip()}")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_v2_on_a_cgroup2_mount(cleanup, cgroup2_mount):
    # The real mount table still says hybrid: the first cgroup2 mount wins.
    assert detect().unified == "/sys/fs/cgroup/unified"

    layout = Layout(mode="v2", v1={}, unified=cgroup2_mount)
    path = _test_path()
    top = path.rsplit("/", 1)[0]
    created = ensure(layout, path)
    cleanup.dirs += created
    assert created == [cgroup2_mount + top, cgroup2_mount + path]
    assert not os.path.exists(detect().v1["memory"] + top)  # v2 mode: no v1 dirs

    sleeper = cleanup.sleeper()
    add_process(layout, path, sleeper.pid)
    assert procs(layout, path) == [sleeper.pid]
    assert f"0::{path}" in _cgroup_lines(sleeper.pid)

    remove(created)
    assert sleeper.wait(timeout=5) == -9
    for directory in created:
        assert not os.path.exists(directory)


def test_v2_remove_kills_in_a_frozen_cgroup(cleanup, cgroup2_mount):
    layout = Layout(mode="v2", v1={}, unified=cgroup2_mount)
    path = _test_path()
    created = ensure(layout, path)
    cleanup.dirs += created
    sleeper = cleanup.sleeper()
    add_process(layout, path, sleeper.pid)
    freeze = cgroup2_mount + path + "/cgroup.freeze"
    with open(freeze, "w") as f:
        f.write("1")
    try:
        remove(created)
    finally:
        if os.path.exists(freeze):
            with open(freeze, "w") as f:
                f.write("0")
    assert sleeper.wait(timeout=5) == -9
    for directory in created:
        assert not os.path.exists(directory)
