"""Conmon's bookkeeping of monitors it no longer needs: a removed
container's Monitor is forgotten (its watch stopped), and at start-up a
monitor nothing will adopt is killed — only when it is really that
container's."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest_twisted
from twisted.internet import reactor

from rktlet.oci.conmon import Conmon
from rktlet.oci.procwatch import alive
from rktlet.oci.runtime import OCIRuntime
from harness.waiting import sleep

ID = "e" * 64


def _conmon(tmp_path) -> Conmon:
    # The "conmon" binary is this Python: what it spawns below looks like a
    # monitor by name (comm) and names the container on its command line.
    runtime = OCIRuntime(reactor, "runc", str(tmp_path / "state"))
    return Conmon(reactor, runtime, conmon_binary=sys.executable, exits_dir=str(tmp_path / "exits"),
                  socket_dir=str(tmp_path / "s"))


def _fake_monitor(*argv: str) -> int:
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", *argv], {})
    # Until the child has exec'd, /proc shows this process's command line.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"time.sleep(60)" in f.read():
                return pid
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not start")


def _reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


@pytest_twisted.ensureDeferred
async def test_a_forgotten_monitor_is_dropped_and_no_longer_watched(tmp_path):
    conmon = _conmon(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    pids = [_fake_monitor(ID) for _ in range(3)]
    try:
        monitors = [conmon.adopt(f"{i:064x}", str(bundle), pid, pid) for i, pid in enumerate(pids)]
        assert all(m._watches for m in monitors)
        for i, monitor in enumerate(monitors):
            conmon.forget(f"{i:064x}")
            assert conmon.monitor(f"{i:064x}") is None and monitor._watches == []
        assert conmon._monitors == {}  # nothing kept for removed containers
        os.kill(pids[0], signal.SIGKILL)
        await sleep(0.2)
        assert not monitors[0].exited.called  # forgotten: its end is nobody's business
        conmon.forget(ID)  # idempotent, unknown ids included
    finally:
        for pid in pids:
            _reap(pid)


def test_a_leftover_monitor_of_the_container_is_killed(tmp_path):
    conmon = _conmon(tmp_path)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    pid_file = conmon.paths(ID, str(bundle)).conmon_pid_file
    assert conmon.kill_leftover(ID, str(bundle)) is None  # no pid file
    mine, other = _fake_monitor("-c", ID), _fake_monitor("-c", "f" * 64)
    try:
        with open(pid_file, "w") as f:
            f.write(str(other))
        assert conmon.kill_leftover(ID, str(bundle)) is None  # another container's monitor: left alone
        assert alive(other)
        with open(pid_file, "w") as f:
            f.write(str(mine))
        assert conmon.kill_leftover(ID, str(bundle)) == mine
        assert not alive(mine)
        with open(pid_file, "w") as f:
            f.write("not a pid")
        assert conmon.kill_leftover(ID, str(bundle)) is None
    finally:
        _reap(mine)
        _reap(other)
