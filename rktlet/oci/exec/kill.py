"""Ending an exec's command: SIGKILL its process group and every process
left in its session, found by a scan of ``/proc``."""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from rktlet.logs import logger

log = logger("rktlet.oci.exec")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(process group, session)`` of *pid* as seen from our pid namespace,
    or None when there is no such (live) process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 4 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[2]), int(fields[3])


def session_members(leader: int) -> list[int]:
    """Live processes in the session or process group led by *leader* (a host
    pid), the leader included when it still runs."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ids = _proc_stat(int(entry))
        if ids is not None and leader in ids:
            found.append(int(entry))
    return found


def kill_session(reactor: Any, threadpool: ThreadPool, leader: int) -> Deferred[None]:
    """SIGKILL the exec'd process *leader*, its process group and everything
    left in its session.

    The leader and its group are killed at once; the rest of the session is
    found by a scan of ``/proc`` (as long as the host has processes), which
    runs in *threadpool*, never on the reactor.  The Deferred fires once
    all are signalled; it never fails (a scan that fails is logged).
    """
    for target in (-leader, leader):
        _kill(target)
    scan = deferToThreadPool(reactor, threadpool, _kill_members, leader)

    def failed(reason: Failure) -> None:
        log.warn("could not kill the session of exec'd process {pid}: {error}",
                 pid=leader, error=reason.getErrorMessage())

    return scan.addErrback(failed)


def _kill_members(leader: int) -> None:
    """In a thread: SIGKILL every live process of *leader*'s session or group."""
    for pid in session_members(leader):
        _kill(pid)


def _kill(target: int) -> None:
    try:
        os.kill(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
