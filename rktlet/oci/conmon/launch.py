"""Launching conmon (``runc create`` through it), and :class:`Conmon`, the
driver the pod engine uses: it creates containers, adopts an earlier
daemon's monitors (:mod:`.monitor`), and reaches a running conmon through
its ctl FIFO (:mod:`.control`) and files (:mod:`.paths`)."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal as _signal
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as _SyncTimeout
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from rktlet.deferutil import Shared
from rktlet.errors import DeadlineExceeded, InvalidArgument, RuntimeFailure
from rktlet.fsutil import PRIVATE_DIR, make_dir
from rktlet.logs import logger
from rktlet.oci.runtime import DEFAULT_PATH, OCIRuntime, clean_message

from rktlet.oci.conmon import control
from rktlet.oci.conmon.monitor import Monitor, Watcher, kill_leftover, leftover_pid
from rktlet.oci.conmon.paths import MonitorPaths, monitor_paths, read_exit, remove_files

__all__ = ["Conmon", "parse_sync_message"]

log = logger("rktlet.oci.conmon")

# A unix socket path must fit sun_path (108 bytes with its NUL).
_SUN_PATH_MAX = 107

# How long a conmon that reported failure gets to exit on its own before it
# is killed, and how long its last stderr bytes are waited for.
_EXIT_GRACE = 10.0
_STDERR_GRACE = 1.0

# The level tag conmon puts before each of its own messages.
_CONMON_PREFIX = re.compile(r"\[conmon:[a-z]\]:\s*")

#: conmon's stderr is kept only to explain a failed start; bound it.
_STDERR_LIMIT = 64 << 10

#: The options rktlet passes to conmon, by their long names (``rktlet
#: check`` looks for each in ``conmon --help``); keep in step with _argv.
REQUIRED_OPTIONS = (
    "--bundle", "--cid", "--cuuid", "--name", "--runtime", "--runtime-arg", "--log-path", "--exit-dir",
    "--socket-dir-path", "--container-pidfile", "--conmon-pidfile", "--persist-dir", "--log-level",
    "--terminal", "--stdin", "--leave-stdin-open",
)


def parse_sync_message(data: bytes) -> tuple[int, str]:
    """``(pid, message)`` from conmon's sync-pipe line.

    ``{"pid": N}`` on success; ``{"pid": -1, "message": "<runtime stderr>"}``
    on failure, where the message is reduced to runc's own words
    (:func:`~rktlet.oci.runtime.clean_message`).

    :raises RuntimeFailure: the line is not such a message.
    """
    line = data.split(b"\n", 1)[0]
    try:
        message = json.loads(line)
    except ValueError:
        raise RuntimeFailure(f"conmon sent an unreadable sync message: {line[:200]!r}") from None
    if not isinstance(message, dict) or not isinstance(message.get("pid"), int) or isinstance(message["pid"], bool):
        raise RuntimeFailure(f"conmon sent an unexpected sync message: {line[:200]!r}")
    text = message.get("message")
    return message["pid"], clean_message(text) if isinstance(text, str) else ""


class _Launcher(ProcessProtocol):
    """Our side of the conmon we spawn (the launcher): the sync pipe (child
    fd 3, we read; the monitor it forks writes on it), the start pipe (child
    fd 4, we write), stderr until the monitor moves its stdio to /dev/null,
    and the launcher's exit."""

    def __init__(self) -> None:
        self._sync: Deferred[bytes] = Deferred()
        self._exited: Deferred[None] = Deferred()
        #: conmon's sync line (waits may time out without touching it).
        self.sync = Shared(self._sync, cancel_when_abandoned=False)
        #: the launcher's exit.
        self.exited = Shared(self._exited, cancel_when_abandoned=False)
        self.ended: Deferred[None] = Deferred()  # all pipes closed and reaped
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self._sync_buffer = b""
        self.stderr = bytearray()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            if self._sync.called:
                return  # create mode sends one line only; ignore anything else
            self._sync_buffer += data
            if b"\n" in self._sync_buffer:
                self._sync.callback(self._sync_buffer)
            elif len(self._sync_buffer) > 1 << 20:
                self._sync.callback(self._sync_buffer)  # let the parser complain
        elif childFD in (1, 2) and len(self.stderr) < _STDERR_LIMIT:
            self.stderr += data[: _STDERR_LIMIT - len(self.stderr)]

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 3 and not self._sync.called:
            if self._sync_buffer:
                self._sync.callback(self._sync_buffer)
            else:
                self._sync.errback(Failure(RuntimeFailure("conmon closed its sync pipe without reporting")))

    def processExited(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.exit_signal = getattr(reason.value, "signal", None)
        self._exited.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if not self.ended.called:
            self.ended.callback(None)

    @property
    def failed(self) -> bool:
        """Whether the launcher has exited other than with status 0."""
        return self.exited.done and (self.exit_code != 0 or self.exit_signal is not None)

    def describe_exit(self) -> str:
        if self.exit_signal is not None:
            return f"killed by signal {self.exit_signal}"
        return f"exit status {self.exit_code}"


class Conmon:
    """Spawns and watches conmon processes.

    :param reactor: provides ``spawnProcess``, ``callLater``, ``addReader``.
    :param runtime: the OCI runtime conmon runs (its binary is ``-r``, its
        global flags go as ``--runtime-arg``); also used to clean up after a
        failed create.
    :param conmon_binary: a path or a name looked up in PATH.
    :param exits_dir: where conmon writes exit files (``--exit-dir``);
        created if missing.
    :param socket_dir: where the attach-socket symlinks go
        (``--socket-dir-path``); keep it short: ``<socket_dir>/<id>/attach``
        must fit in 107 bytes.  Created if missing.
    :param create_timeout: seconds to wait for conmon's answer (runc create)
        before giving up and killing it (CRI-O's default: 240).
    :param poll_interval: seconds between /proc checks of an adopted conmon
        when pidfds are not available.
    """

    def __init__(
        self,
        reactor: Any,
        runtime: OCIRuntime,
        conmon_binary: str = "conmon",
        exits_dir: str = "",
        socket_dir: str = "",
        create_timeout: float = 240.0,
        poll_interval: float = 0.5,
    ) -> None:
        if not exits_dir or not socket_dir:
            raise ValueError("Conmon needs exits_dir and socket_dir")
        self._reactor = reactor
        self.runtime = runtime
        self.binary = conmon_binary if os.sep in conmon_binary else (shutil.which(conmon_binary) or conmon_binary)
        self.exits_dir = os.path.abspath(exits_dir)
        self.socket_dir = os.path.abspath(socket_dir)
        self.create_timeout = create_timeout
        self.poll_interval = poll_interval
        #: conmon's process name (what /proc shows), to recognise it.
        self.comm = os.path.basename(self.binary)[:15]
        self._monitors: dict[str, Monitor] = {}
        self._watcher = Watcher(reactor, poll_interval, self.comm)

    # -- paths and files ------------------------------------------------------

    def paths(self, container_id: str, bundle: str) -> MonitorPaths:
        """The files conmon makes for *container_id* in *bundle*."""
        return monitor_paths(bundle, self.exits_dir, self.socket_dir, container_id)

    def read_exit(self, container_id: str, bundle: str) -> tuple[int, int, bool] | None:
        """``(exit_code, finished_at_ns, oom_killed)`` from the container's
        exit file (finished_at is the file's mtime), or None if it has none."""
        return read_exit(self.paths(container_id, bundle))

    def cleanup(self, paths: MonitorPaths) -> None:
        """Remove every file conmon made for a container (exit files, the
        socket symlink and socket, the FIFOs, the pidfile, OOM markers).
        Idempotent; call it once conmon is gone."""
        remove_files(paths)

    # -- the ctl FIFO ---------------------------------------------------------

    def reopen_log(self, paths: MonitorPaths) -> None:
        """Ask conmon to reopen the container's log file (see :func:`.control.reopen_log`).

        :raises RuntimeFailure: ``container is not running`` when conmon is gone.
        """
        control.reopen_log(paths)

    def resize(self, paths: MonitorPaths, height: int, width: int) -> None:
        """Resize the container's pty (see :func:`.control.resize`).

        :raises RuntimeFailure: ``container is not running`` when conmon is gone.
        """
        control.resize(paths, height, width)

    # -- create ---------------------------------------------------------------

    def _prepare(self, paths: MonitorPaths) -> None:
        """Make the shared directories and remove what an earlier container
        with this id may have left (a stale exit file would report its end
        at once; a stale symlink would point the attach socket elsewhere)."""
        for directory in (self.exits_dir, self.socket_dir):
            make_dir(directory, PRIVATE_DIR)
        link = paths.attach_socket.encode()
        if len(link) > _SUN_PATH_MAX:
            raise RuntimeFailure(
                f"attach socket path {paths.attach_socket} is {len(link)} bytes, longer than a unix socket "
                f"path may be ({_SUN_PATH_MAX}); configure a shorter socket dir than {self.socket_dir}"
            )
        if not os.path.isdir(paths.bundle):
            raise RuntimeFailure(f"bundle {paths.bundle} does not exist")
        self.cleanup(paths)

    def _argv(self, container_id: str, paths: MonitorPaths, log_path: str, tty: bool, stdin: bool,
              stdin_once: bool, name: str | None) -> list[str]:
        argv = [
            self.binary,
            "-b", paths.bundle,
            "-c", container_id,
            "-u", container_id,  # names the attach-socket symlink
            "-n", name or container_id,
            "-r", self.runtime.binary,
        ]
        for arg in self.runtime.global_args:
            argv.append(f"--runtime-arg={arg}")  # one token: the value starts with "-"
        argv += [
            "-l", f"k8s-file:{log_path}",
            "--exit-dir", self.exits_dir,
            "--socket-dir-path", self.socket_dir,
            "-p", paths.pid_file,
            "--conmon-pidfile", paths.conmon_pid_file,
            "--persist-dir", paths.bundle,
            "--log-level", "error",
        ]
        if tty:
            argv.append("-t")
        if stdin:
            argv.append("-i")
            if not stdin_once:
                argv.append("--leave-stdin-open")
        return argv

    async def create(
        self,
        container_id: str,
        bundle: str,
        log_path: str,
        tty: bool = False,
        stdin: bool = False,
        stdin_once: bool = False,
        cgroup: Callable[[int], None | Awaitable[None]] | None = None,
        name: str | None = None,
    ) -> Monitor:
        """Start conmon for a container and have it run ``runc create``.

        On return the container exists in state "created" (its process
        waits in ``runc init``); :meth:`OCIRuntime.start` lets it run.

        :param log_path: the CRI log file (absolute; its directory must exist).
        :param tty: give the container a pty (conmon owns the master).
        :param stdin: keep a stdin pipe fed from the attach socket;
            *stdin_once* closes it when the first attached client leaves.
        :param cgroup: called with the launcher's pid before it may fork
            the monitor, to move it out of the daemon's cgroup (into the
            pod's); it may return an awaitable.  If it fails, the launcher
            is killed and the error raised.
        :param name: a name for conmon's own messages (default: the id).
        :raises RuntimeFailure: with runc's message when ``runc create``
            fails, or what went wrong with conmon; nothing is left behind.
        :raises DeadlineExceeded: no answer within ``create_timeout``.
        """
        paths = self.paths(container_id, bundle)
        if not os.path.isabs(log_path):
            raise InvalidArgument(f"log path {log_path!r} must be absolute")
        if os.sep not in self.binary:
            raise RuntimeFailure(f"conmon binary {self.binary!r} not found in PATH")
        if not os.access(self.binary, os.X_OK):
            # Checked here: after a fork, an exec failure would only show as
            # a Python traceback on the child's stderr.
            raise RuntimeFailure(f"conmon binary {self.binary} is missing or not executable")
        self._prepare(paths)
        argv = self._argv(container_id, paths, log_path, tty, stdin, stdin_once, name)
        env = {
            "PATH": os.environ.get("PATH", DEFAULT_PATH),
            # fd numbers as conmon sees them (childFDs below), not ours.
            "_OCI_SYNCPIPE": "3",
            "_OCI_STARTPIPE": "4",
        }
        launcher = _Launcher()
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # cwd = bundle: conmon ≤ 2.1.12 writes its "oom" marker in its
            # cwd.  A cwd makes Twisted fork (not posix_spawn); that is safe
            # because rktlet disables gRPC's fork handlers (rktlet/__init__).
            transport = self._reactor.spawnProcess(
                launcher, self.binary, argv, env=env, path=paths.bundle,
                childFDs={0: devnull, 1: "r", 2: "r", 3: "r", 4: "w"},
            )
        except OSError as e:
            raise RuntimeFailure(f"cannot run {self.binary}: {os.strerror(e.errno or 0)}") from e
        finally:
            os.close(devnull)
        deadline = self._reactor.seconds() + self.create_timeout
        monitor: Monitor | None = None
        released = False  # the start byte went: the launcher may have forked
        reported_failure = False  # conmon said why it failed: it ends by itself
        try:
            if cgroup is not None:
                result = cgroup(transport.pid)
                if inspect.isawaitable(result):
                    await result
            # Any byte releases the launcher; it reads the start pipe once,
            # so our end can go now.
            released = True
            transport.writeToChild(4, b"\0")
            transport.closeChildFD(4)
            await self._within(launcher.exited.wait(), deadline, container_id, "conmon did not start its monitor")
            monitor = self._watcher.watch_new(container_id, paths)
            if launcher.failed or monitor is None:
                reported_failure = True
                raise RuntimeFailure(await self._conmon_failure(container_id, launcher))
            try:
                raw = await self._within(launcher.sync.wait(), deadline, container_id, "conmon did not report")
            except RuntimeFailure:
                # The monitor ended without a word: its stderr may say why.
                reported_failure = True
                raise RuntimeFailure(await self._conmon_failure(container_id, launcher)) from None
            pid, message = parse_sync_message(raw)
            if pid <= 0:
                reported_failure = True
                raise RuntimeFailure(f"create container {container_id}: {message or 'the OCI runtime failed'}")
        except BaseException:
            await self._abandon(container_id, paths, launcher, transport, released, monitor,
                                kill_now=not reported_failure)
            raise
        # conmon writes nothing more on the sync pipe in create mode; a
        # closed reader is harmless to it (as after a daemon crash).
        transport.closeChildFD(3)
        self._monitors[container_id] = monitor
        self._watcher.ready(monitor, pid)
        log.debug("conmon {conmon_pid} created container {container_id} (pid {pid})",
                  conmon_pid=monitor.conmon_pid, container_id=container_id, pid=pid)
        return monitor

    async def _within(self, waiting: Deferred, deadline: float, container_id: str, what: str) -> Any:
        """Await *waiting* until *deadline* (reactor seconds)."""
        try:
            return await waiting.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
        except _SyncTimeout:
            raise DeadlineExceeded(
                f"create container {container_id}: {what} within {self.create_timeout:g}s"
            ) from None
    async def _conmon_failure(self, container_id: str, launcher: _Launcher) -> str:
        """Why conmon failed, from its stderr (waited for a moment: the
        last bytes may come after the exit or the sync pipe's end)."""
        await self._until(lambda: launcher.ended.called, _STDERR_GRACE)
        # conmon prefixes its messages with "[conmon:e]: " (its log level).
        detail = _CONMON_PREFIX.sub("", clean_message(bytes(launcher.stderr)))
        how = launcher.describe_exit() if launcher.failed else "closed its sync pipe"
        text = f"create container {container_id}: conmon {how} before reporting the container"
        return f"{text}: {detail}" if detail else text

    async def _until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (polling; only failure paths use this) until *predicate*
        holds or *timeout* seconds have passed; return the predicate."""
        deadline = self._reactor.seconds() + timeout
        while not predicate() and self._reactor.seconds() < deadline:
            d: Deferred[None] = Deferred()
            self._reactor.callLater(0.01, d.callback, None)
            await d
        return predicate()

    async def _abandon(self, container_id: str, paths: MonitorPaths, launcher: _Launcher, transport: Any,
                       released: bool, monitor: Monitor | None, kill_now: bool) -> None:
        """After a failed create: make sure conmon (and what it started) is
        gone, delete the runtime's container, remove conmon's files.

        A monitor that reported failure exits by itself and gets a grace
        period; one that timed out or whose caller gave up is killed at once.
        A launcher that was never *released* (its cgroup could not be set)
        is killed at once.
        """
        if released:
            # Killed between its fork and its pid file, the launcher would
            # leave a monitor we cannot name: let it finish (it only forks
            # and writes the file).
            await self._until(lambda: launcher.exited.done, _EXIT_GRACE)
        if not launcher.exited.done:
            # Never released (the cgroup step failed), or stuck: it is still
            # in our process group, so only it is signalled.
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            await self._until(lambda: launcher.exited.done, _EXIT_GRACE)
        if monitor is None:
            monitor = self._watcher.watch_new(container_id, paths)
        if monitor is not None:
            if kill_now:
                self._kill_monitor(monitor)
            if not await self._until(lambda: monitor.conmon_exited, _EXIT_GRACE):
                self._kill_monitor(monitor)
                await self._until(lambda: monitor.conmon_exited, _EXIT_GRACE)
            monitor.stop_watching()
        transport.loseConnection()
        try:
            await self.runtime.delete(container_id, force=True)
        except RuntimeFailure as e:
            log.warn("after a failed create of {container_id}: {error}", container_id=container_id, error=str(e))
        try:
            self.cleanup(paths)
        except RuntimeFailure as e:
            log.warn("after a failed create of {container_id}: {error}", container_id=container_id, error=str(e))

    @staticmethod
    def _kill_monitor(monitor: Monitor) -> None:
        """SIGKILL a monitor that is still being created, with what it runs
        (``runc create``): it is a session and group leader from its first
        steps; until then killpg finds no such group and only it is hit."""
        if monitor.conmon_exited:
            return  # its pid may be someone else's by now
        pid = monitor.conmon_pid
        try:
            os.killpg(pid, _signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- watching -------------------------------------------------------------

    def adopt(self, container_id: str, bundle: str, conmon_pid: int, container_pid: int) -> Monitor:
        """Watch a conmon that an earlier daemon started (it is not our child).

        If the exit file is there, :attr:`Monitor.exited` has fired already
        with its code and mtime.  Otherwise conmon's end is watched (a pidfd,
        else /proc polled every ``poll_interval``), then the exit file read.
        A recorded pid that now belongs to another program counts as
        conmon gone.
        """
        monitor = self._watcher.adopt(container_id, self.paths(container_id, bundle), conmon_pid, container_pid)
        self._monitors[container_id] = monitor
        return monitor

    def kill_leftover(self, container_id: str, bundle: str, timeout: float = 5.0) -> int | None:
        """Blocking (start-up recovery): SIGKILL the monitor an earlier
        daemon started for *container_id* and that nothing will adopt (with
        its process group: a ``runc create`` it still runs), and wait until
        it is gone. The pid comes from ``conmon.pid`` in the bundle and
        counts only while it is a conmon whose command line names this
        container. Returns the pid killed, or None."""
        return kill_leftover(container_id, self.paths(container_id, bundle), self.comm, timeout)

    def leftover_pid(self, container_id: str, bundle: str) -> int | None:
        """Blocking (start-up recovery): the pid of *container_id*'s conmon
        while one runs, from ``conmon.pid`` in the bundle, counted only
        while it is a conmon whose command line names this container; else
        None."""
        return leftover_pid(container_id, self.paths(container_id, bundle), self.comm)

    def monitor(self, container_id: str) -> Monitor | None:
        """The latest :class:`Monitor` made for *container_id*, if any."""
        return self._monitors.get(container_id)

    def forget(self, container_id: str) -> None:
        """Drop the :class:`Monitor` of a removed container (its watches stop)."""
        monitor = self._monitors.pop(container_id, None)
        if monitor is not None:
            monitor.stop_watching()

    def close(self) -> None:
        """Stop watching every container (daemon shutdown): conmons and
        containers keep running, to be adopted by the next daemon."""
        for monitor in self._monitors.values():
            monitor.stop_watching()
        self._monitors.clear()
