"""Watching processes that are not Twisted's children: conmon monitors (ours
by adoption, or an earlier daemon's) and containers whose conmon is gone.

A pidfd wakes the reactor when the process exits; where pidfds are missing,
``/proc`` is polled.  When the process turns out to be this daemon's child
(the daemon is a child subreaper, see :func:`become_subreaper`, so a conmon
that daemonized ends up here), the watch reaps it and reports its status:
nobody else would, and a zombie would stay behind.
"""

from __future__ import annotations

import ctypes
import os
import select
from typing import Any, Callable, NamedTuple

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["ProcessEnd", "ProcessWatch", "alive", "become_subreaper", "proc_state"]

_PR_SET_CHILD_SUBREAPER = 36


class ProcessEnd(NamedTuple):
    """How a reaped child ended: its exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None

    def describe(self) -> str:
        return f"signal {self.signal}" if self.signal is not None else f"status {self.exit_code}"


def become_subreaper() -> None:
    """Make this process a child subreaper: orphans among its descendants
    (a conmon whose launching parent exited, a container whose conmon was
    killed) become its children instead of PID 1's.  Their watches reap them.

    :raises OSError: prctl failed.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def proc_state(pid: int) -> tuple[str, str, int] | None:
    """``(comm, state letter, parent pid)`` of *pid*, or None if there is no
    such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: cut at the last ')'.
    left, right = stat.find(b"("), stat.rfind(b")")
    comm = stat[left + 1:right].decode("utf-8", "replace")
    fields = stat[right + 2:].split()
    if len(fields) < 2:
        return comm, fields[0].decode() if fields else "?", 0
    return comm, fields[0].decode(), int(fields[1])


def alive(pid: int, comm: str | None = None) -> bool:
    """Whether *pid* runs (zombies have ended; they only wait to be reaped)
    and, when given, is named *comm*."""
    if pid <= 0:
        return False
    state = proc_state(pid)
    if state is None or state[1] in ("Z", "X", "x"):
        return False
    return comm is None or state[0] == comm


def _end_of(status: int) -> ProcessEnd:
    if os.WIFSIGNALED(status):
        return ProcessEnd(None, os.WTERMSIG(status))
    return ProcessEnd(os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, None)


def _reap(pid: int, pidfd: int) -> ProcessEnd | None:
    """Reap *pid* if it is our ended child; its end, else None.

    With a pidfd, ``waitid(P_PIDFD)`` names exactly the watched process.
    Without, only a zombie whose parent is us is reaped: a zombie keeps its
    pid, so ``waitpid`` cannot reach a newcomer that took the number.
    """
    if pidfd >= 0 and hasattr(os, "P_PIDFD"):
        try:
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except (ChildProcessError, OSError):
            return None  # not our child (PID 1's, or another daemon's)
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return ProcessEnd(info.si_status, None)
        return ProcessEnd(None, info.si_status)
    state = proc_state(pid)
    if state is None or state[1] != "Z" or state[2] != os.getpid():
        return None
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return _end_of(status) if reaped == pid else None


def pidfd_signalled(fd: int) -> bool:
    """Whether the process of pidfd *fd* has ended (the pidfd polls
    readable, or hung up once the process was reaped)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@implementer(IReadDescriptor)
class _PidfdReader:
    """A pidfd in the reactor: it becomes readable when the process exits."""

    def __init__(self, reactor: Any, fd: int, callback: Callable[[], None]) -> None:
        self._reactor = reactor
        self.fd = fd
        self._callback = callback
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "pidfd"

    def doRead(self) -> None:
        self._callback()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor reports POLLHUP (a reaped process, on newer kernels)
        # without POLLIN this way: the process is gone all the same. But a
        # stopping reactor also lets go of every reader this way, while the
        # process lives on (containers' monitors outlive the daemon): ask
        # the pidfd itself.
        if self.fd >= 0 and not pidfd_signalled(self.fd):
            self.stop()
            return
        self._callback()

    def stop(self) -> None:
        if self.fd >= 0:
            self._reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1


class ProcessWatch:
    """Calls *callback* once when process *pid* has ended (or, with *comm*,
    is no longer the process named so: its pid was reused), with its
    :class:`ProcessEnd` when the watch reaped it (it was our child), else
    None.

    :param interval: seconds between ``/proc`` checks where pidfds are
        missing.
    """

    def __init__(self, reactor: Any, pid: int, callback: Callable[[ProcessEnd | None], None],
                 comm: str | None = None, interval: float = 0.5) -> None:
        self._reactor = reactor
        self.pid = pid
        self._callback: Callable[[ProcessEnd | None], None] | None = callback
        self._comm = comm
        self._interval = interval
        self._reader: _PidfdReader | None = None
        self._timer: Any = None
        fd = -1
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            pass  # gone already (checked below), or no pidfd support: poll
        if fd >= 0:
            # Opened after the pid was recorded: make sure it is still that
            # process and not a newcomer that got its pid.
            if alive(pid, comm):
                self._reader = _PidfdReader(reactor, fd, self._fire)
                return
            os.close(fd)
        if not alive(pid, comm):
            # Not synchronously: the caller has not finished setting up.
            self._timer = reactor.callLater(0, self._fire)
        else:
            self._timer = reactor.callLater(interval, self._poll)

    def _poll(self) -> None:
        self._timer = None
        if alive(self.pid, self._comm):
            self._timer = self._reactor.callLater(self._interval, self._poll)
        else:
            self._fire()

    def _fire(self) -> None:
        self._timer = None
        callback, self._callback = self._callback, None
        if callback is None:
            return
        end = _reap(self.pid, self._reader.fd if self._reader is not None else -1)
        self.stop()
        callback(end)

    def stop(self) -> None:
        """Stop watching; the callback is not called any more."""
        self._callback = None
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
