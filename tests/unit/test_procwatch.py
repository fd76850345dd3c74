"""ProcessWatch on the real reactor: it fires at the exit of a process it
did not spawn through Twisted and reaps it when it is our child, with a
pidfd and by polling /proc."""

from __future__ import annotations

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from rktlet.oci import procwatch
from rktlet.oci.procwatch import ProcessEnd, ProcessWatch, alive, proc_state
from harness.waiting import sleep, within


def _child(script: str) -> int:
    return os.posix_spawn("/bin/sh", ["sh", "-c", script], {"PATH": "/usr/bin:/bin"})


async def _watched_end(pid: int, **kwargs) -> ProcessEnd | None:
    d: Deferred = Deferred()
    ProcessWatch(reactor, pid, d.callback, interval=0.02, **kwargs)
    return await within(d, 10)


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.fixture(params=["pidfd", "poll"])
def mode(request, monkeypatch):
    if request.param == "poll":
        def no_pidfd(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(procwatch.os, "pidfd_open", no_pidfd)
    return request.param


@pytest_twisted.ensureDeferred
async def test_an_exit_code_is_reported_and_the_child_reaped(mode):
    pid = _child("sleep 0.1; exit 3")
    assert await _watched_end(pid) == ProcessEnd(3, None)
    assert _reaped(pid) and proc_state(pid) is None


@pytest_twisted.ensureDeferred
async def test_a_signal_is_reported(mode):
    pid = _child("sleep 30")
    reactor.callLater(0.1, os.kill, pid, signal.SIGKILL)
    end = await _watched_end(pid)
    assert end == ProcessEnd(None, signal.SIGKILL) and end.describe() == "signal 9"
    assert _reaped(pid)


@pytest_twisted.ensureDeferred
async def test_an_ended_child_fires_at_once():
    pid = _child("exit 0")
    while alive(pid):
        await sleep(0.01)
    assert await _watched_end(pid) == ProcessEnd(0, None)


@pytest_twisted.ensureDeferred
async def test_a_process_that_is_not_ours_is_watched_not_reaped(mode):
    # Our parent runs on: a watch that stops reports nothing.
    calls = []
    watch = ProcessWatch(reactor, os.getppid(), calls.append, interval=0.02)
    await sleep(0.1)
    watch.stop()
    assert calls == []


@pytest_twisted.ensureDeferred
async def test_a_reused_pid_with_another_name_counts_as_gone():
    # This test process is not named "conmon": the watch fires at once.
    assert await _watched_end(os.getpid(), comm="conmon") is None
