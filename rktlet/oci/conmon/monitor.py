"""Watching conmon monitors, ours or an earlier daemon's (adoption).

A :class:`Monitor` stands for one conmon and its container; the
:class:`Watcher` follows conmon's end (a pidfd, else ``/proc`` polled), then
reports the exit file -- or, when conmon ended without writing one, waits
for the container process itself and reports :data:`~.paths.UNKNOWN_EXIT_CODE`.
"""

from __future__ import annotations

import os
import signal as _signal
import time
from typing import Any

from twisted.internet.defer import Deferred

from rktlet.deferutil import Shared
from rktlet.errors import RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.conmon.paths import UNKNOWN_EXIT_CODE, ExitStatus, MonitorPaths, read_exit
from rktlet.oci.procwatch import ProcessEnd, ProcessWatch, alive

__all__ = ["Monitor", "Watcher", "kill_leftover"]

log = logger("rktlet.oci.conmon")


class Monitor:
    """One running (or re-adopted) conmon and its container.

    :ivar container_id: the container.
    :ivar paths: its :class:`MonitorPaths`.
    :ivar conmon_pid: the monitor's pid (what the daemon records to re-adopt).
    :ivar container_pid: the container's init process, as seen on the host.
    :ivar adopted: made by :meth:`Conmon.adopt` (an earlier daemon's conmon).
    :ivar lost: the exit status could not be known (conmon ended without
        writing an exit file); :attr:`exited` then reports
        :data:`UNKNOWN_EXIT_CODE`.
    """

    def __init__(self, container_id: str, paths: MonitorPaths, conmon_pid: int, container_pid: int, adopted: bool) -> None:
        self.container_id = container_id
        self.paths = paths
        self.conmon_pid = conmon_pid
        self.container_pid = container_pid
        self.adopted = adopted
        self.lost = False
        self._done: Deferred[ExitStatus] = Deferred()
        self._shared = Shared(self._done, cancel_when_abandoned=False)
        self._status: ExitStatus | None = None
        self._watches: list[ProcessWatch] = []
        self._conmon_gone = False
        self._conmon_end: ProcessEnd | None = None
        self._ready = True  # false while create() still waits for runc
        self._forgotten = False

    @property
    def exited(self) -> Deferred[ExitStatus]:
        """A new Deferred, at each access, firing with ``(exit_code,
        finished_at_ns, oom_killed)`` (an :class:`ExitStatus`) once the
        container has ended.  Any number of callers may wait; cancelling
        one wait does not affect the others or the monitoring."""
        return self._shared.wait()

    @property
    def status(self) -> ExitStatus | None:
        """The :class:`ExitStatus`, once known; None while it runs."""
        return self._status

    @property
    def conmon_exited(self) -> bool:
        """Whether conmon's end has been seen (and, if it was our child, it
        has been reaped)."""
        return self._conmon_gone

    @property
    def conmon_exit_code(self) -> int | None:
        """conmon's own exit status (it mirrors the container's) once it
        has exited normally and this daemon reaped it; None otherwise."""
        end = self._conmon_end
        return None if end is None or end.signal is not None else end.exit_code

    @property
    def running(self) -> bool:
        """Whether the container's end has not been seen yet."""
        return self._status is None

    def stop_watching(self) -> None:
        """Forget this container: no more watching, :attr:`exited` never
        fires (unless it has).  conmon and the container keep running; for
        a daemon shutting down, or a test."""
        self._forgotten = True
        self._stop_watches()

    def _stop_watches(self) -> None:
        for watch in self._watches:
            watch.stop()
        self._watches.clear()

    def _finish(self, status: ExitStatus, lost: bool = False) -> None:
        if self._status is not None or self._forgotten:
            return
        self._stop_watches()
        self.lost = lost
        self._status = status
        self._done.callback(status)

    def __repr__(self) -> str:
        return (f"<Monitor {self.container_id} conmon={self.conmon_pid} container={self.container_pid} "
                f"status={self._status}>")



class Watcher:
    """Watches :class:`Monitor` processes on *reactor*.

    :param poll_interval: seconds between /proc checks of a conmon when
        pidfds are not available.
    :param comm: conmon's process name (what /proc shows), to recognise an
        adopted conmon by.
    """

    def __init__(self, reactor: Any, poll_interval: float, comm: str) -> None:
        self._reactor = reactor
        self.poll_interval = poll_interval
        self.comm = comm

    def watch_new(self, container_id: str, paths: MonitorPaths) -> Monitor | None:
        """The :class:`Monitor` of the conmon the launcher forked, watched
        from now on; None if the launcher wrote no pid file."""
        try:
            with open(paths.conmon_pid_file, "rb") as f:
                conmon_pid = int(f.read(32).strip() or b"0")
        except (OSError, ValueError):
            return None
        if conmon_pid <= 0:
            return None
        monitor = Monitor(container_id, paths, conmon_pid, 0, adopted=False)
        monitor._ready = False
        monitor._watches.append(ProcessWatch(
            self._reactor, conmon_pid, lambda end: self._conmon_ended(monitor, end), None, self.poll_interval,
        ))
        return monitor

    def ready(self, monitor: Monitor, container_pid: int) -> None:
        """*monitor*'s container was created with *container_pid*: from now
        on conmon's end is the container's."""
        monitor.container_pid = container_pid
        monitor._ready = True
        if monitor.conmon_exited:  # killed already, by someone else
            self._conmon_exited(monitor)

    def adopt(self, container_id: str, paths: MonitorPaths, conmon_pid: int, container_pid: int) -> Monitor:
        """Watch a conmon that an earlier daemon started (see :meth:`Conmon.adopt`)."""
        monitor = Monitor(container_id, paths, conmon_pid, container_pid, adopted=True)
        status = self._read_status(monitor)
        if status is not None:
            monitor._finish(status)
            return monitor
        monitor._watches.append(ProcessWatch(
            self._reactor, conmon_pid, lambda end: self._conmon_ended(monitor, end), self.comm, self.poll_interval,
        ))
        return monitor

    def _conmon_ended(self, monitor: Monitor, end: ProcessEnd | None) -> None:
        """The monitor's watch fired: *end* is its status if we reaped it."""
        monitor._conmon_gone = True
        monitor._conmon_end = end
        if monitor._ready:
            self._conmon_exited(monitor)

    def _conmon_exited(self, monitor: Monitor) -> None:
        """conmon is gone: report the exit file, or, without one, wait for
        the container process itself and report an unknown status."""
        if monitor._forgotten:
            return
        status = self._read_status(monitor)
        if status is not None:
            monitor._finish(status)
            return
        end = monitor._conmon_end
        log.warn(
            "conmon {pid} of container {container_id} ended ({how}) without writing an exit file",
            pid=monitor.conmon_pid, container_id=monitor.container_id, how=end.describe() if end else "status unknown",
        )
        # conmon's own exit code is the container's; it is only known when
        # this daemon reaped it after a normal exit.
        code = monitor.conmon_exit_code
        code = UNKNOWN_EXIT_CODE if code is None else code

        def container_gone(_: ProcessEnd | None) -> None:
            status = self._read_status(monitor)
            if status is None:
                oom = any(os.path.exists(p) for p in monitor.paths.oom_files)
                status = ExitStatus(code, self._now_ns(), oom)
            monitor._finish(status, lost=code == UNKNOWN_EXIT_CODE)

        # conmon was the container's subreaper; the container may well run on
        # (and, the daemon being a subreaper too, be ours to reap).
        monitor._watches.append(
            ProcessWatch(self._reactor, monitor.container_pid, container_gone, None, self.poll_interval)
        )

    def _read_status(self, monitor: Monitor) -> ExitStatus | None:
        try:
            return read_exit(monitor.paths)
        except RuntimeFailure as e:
            log.warn("{error}", error=str(e), container_id=monitor.container_id)
            return None

    def _now_ns(self) -> int:
        return int(self._reactor.seconds() * 1_000_000_000)


def leftover_pid(container_id: str, paths: MonitorPaths, comm: str) -> int | None:
    """Blocking: the pid in the conmon pid file of *paths* when that process
    still runs, is a conmon (*comm*) and names *container_id* on its command
    line (a reused pid is not taken for it); else None."""
    try:
        with open(paths.conmon_pid_file) as f:
            pid = int(f.read().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if pid <= 0 or not alive(pid, comm) or container_id.encode() not in argv:
        return None
    return pid


def kill_leftover(container_id: str, paths: MonitorPaths, comm: str, timeout: float) -> int | None:
    """Blocking: SIGKILL the conmon of *paths* (see :meth:`Conmon.kill_leftover`)."""
    pid = leftover_pid(container_id, paths, comm)
    if pid is None:
        return None
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, _signal.SIGKILL)
            break
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid
