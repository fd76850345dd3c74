"""conmon, the per-container monitor.

One conmon process runs beside each container for its whole life.  It runs
``runc create`` itself, holds the container's stdio, writes the CRI log file
(``<RFC3339Nano> <stdout|stderr> <F|P> <text>``), serves the attach socket,
listens on the ctl FIFO (log reopen, pty resize), notices OOM kills and, when
the container ends, writes an exit file and exits.

rktlet runs conmon 2.1.x the way CRI-O does, without ``--sync``: the
process :meth:`Conmon.create` spawns (the *launcher*) forks the monitor,
writes the monitor's pid to ``--conmon-pidfile`` and exits.  The monitor is
then an orphan; the daemon is a child subreaper
(:func:`~rktlet.oci.procwatch.become_subreaper`), so it becomes the
daemon's child, watched through a pidfd and reaped when it ends (its exit
status mirrors the container's).  Why the fork: a process keeps every
library page it ever touched mapped, and the fork leaves behind those only
conmon's option parsing and start-up touched, about half of a ``--sync``
conmon's resident memory.  The monitor survives a daemon crash or restart;
the new daemon re-attaches with :meth:`Conmon.adopt` and learns the end from
the exit file once conmon is gone (a pidfd, else polling ``/proc``).

The handshake (see conmon's ``_OCI_SYNCPIPE`` / ``_OCI_STARTPIPE``):

1. the launcher is spawned with a pipe on fd 3 (sync; the monitor it
   forks writes on it) and one it reads on fd 4 (start); it parses its
   options and blocks reading the start pipe;
2. we move it into the pod's cgroup (never leave it in the daemon's: a
   restart of the daemon's unit would kill every monitor; the monitor,
   forked next, inherits the cgroup), then write one byte on the start pipe;
3. the launcher forks, writes the monitor's pid file and exits 0; the
   monitor sets itself up (``setsid``, subreaper, stdio on /dev/null, the
   attach socket and FIFOs) and runs ``runc create``; it answers on the
   sync pipe it inherited with one JSON line, ``{"pid": N}`` (the container
   waits in ``runc init`` for ``runc start``) or
   ``{"pid": -1, "message": "…"}``.

Files made for a container (:class:`MonitorPaths`): the exit file
``<exits_dir>/<id>`` (decimal text, no newline; killed by signal N → 128+N)
and ``<bundle>/exit``; ``<socket_dir>/<id>`` → a symlink to the bundle, so
that the attach socket ``<socket_dir>/<id>/attach`` fits ``sun_path``; the
``ctl`` and ``winsz`` FIFOs, the runc ``pidfile`` and the monitor's
``conmon.pid`` in the bundle; an ``oom`` file written in conmon's cwd
(≤ 2.1.12) and in ``--persist-dir`` (both are the bundle here).  conmon
2.1.6 leaves the socket symlink behind: :meth:`Conmon.cleanup` removes
everything.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shutil
import signal as _signal
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as _SyncTimeout
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from rktlet.deferutil import Shared
from rktlet.errors import DeadlineExceeded, InvalidArgument, RuntimeFailure
from rktlet.fsutil import PRIVATE_DIR, make_dir
from rktlet.logs import logger
from rktlet.oci.procwatch import ProcessEnd, ProcessWatch, alive
from rktlet.oci.runtime import DEFAULT_PATH, OCIRuntime, clean_message

__all__ = [
    "Conmon",
    "ExitStatus",
    "Monitor",
    "MonitorPaths",
    "ctl_message",
    "monitor_paths",
    "parse_exit_file",
    "parse_sync_message",
    "CTL_RESIZE",
    "CTL_REOPEN_LOG",
    "UNKNOWN_EXIT_CODE",
]

log = logger("rktlet.oci.conmon")

#: ctl FIFO message types (conmon's ``ctrl.c``): resize the pty, reopen the log.
CTL_RESIZE = 1
CTL_REOPEN_LOG = 2

#: The exit code reported when the real one cannot be known (conmon died
#: without writing an exit file); CRI-O reports the same.
UNKNOWN_EXIT_CODE = 255

# A unix socket path must fit sun_path (108 bytes with its NUL).
_SUN_PATH_MAX = 107

# runc's own rule for container ids; it also keeps ids from being paths.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9_+.-]+")

# How long a conmon that reported failure gets to exit on its own before it
# is killed, and how long its last stderr bytes are waited for.
_EXIT_GRACE = 10.0
_STDERR_GRACE = 1.0

# The level tag conmon puts before each of its own messages.
_CONMON_PREFIX = re.compile(r"\[conmon:[a-z]\]:\s*")

#: conmon's stderr is kept only to explain a failed start; bound it.
_STDERR_LIMIT = 64 << 10


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MonitorPaths:
    """Everything conmon makes for one container.

    :ivar bundle: the OCI bundle (conmon's ``-b``, cwd and ``--persist-dir``).
    :ivar exit_file: ``<exits_dir>/<id>``, the exit code as decimal text.
    :ivar attach_socket: ``<socket_dir>/<id>/attach`` (SOCK_SEQPACKET),
        reached through :attr:`socket_link`.
    :ivar ctl_fifo: ``<bundle>/ctl``, where resize / log-reopen lines go.
    :ivar oom_files: where conmon may create its ``oom`` marker: its cwd
        (≤ 2.1.12) and ``--persist-dir`` (one path here: both are the bundle).
    :ivar pid_file: ``<bundle>/pidfile``, the container pid runc writes.
    :ivar socket_link: ``<socket_dir>/<id>``, a symlink to the bundle.
    :ivar winsz_fifo: ``<bundle>/winsz``, conmon's internal resize FIFO.
    :ivar persist_exit_file: ``<bundle>/exit``, the exit file's copy in
        ``--persist-dir``.
    :ivar bundle_socket: ``<bundle>/attach``, the attach socket's real
        location (conmon unlinks it at exit, not when it is killed).
    :ivar conmon_pid_file: ``<bundle>/conmon.pid``, the monitor's pid, which
        the launcher writes before it exits.
    """

    bundle: str
    exit_file: str
    attach_socket: str
    ctl_fifo: str
    oom_files: tuple[str, ...]
    pid_file: str
    socket_link: str
    winsz_fifo: str = ""
    persist_exit_file: str = ""
    bundle_socket: str = ""
    conmon_pid_file: str = ""

    def files(self) -> tuple[str, ...]:
        """Every file conmon may leave behind (what :meth:`Conmon.cleanup`
        removes); the bundle directory itself is not among them."""
        candidates = (
            self.exit_file, self.persist_exit_file, self.socket_link, self.bundle_socket,
            self.ctl_fifo, self.winsz_fifo, self.pid_file, self.conmon_pid_file, *self.oom_files,
        )
        return tuple(dict.fromkeys(p for p in candidates if p))


def _check_id(container_id: str) -> str:
    if (
        not isinstance(container_id, str)
        or not _CONTAINER_ID.fullmatch(container_id)
        or container_id in (".", "..")
    ):
        raise InvalidArgument(f"container id {container_id!r}: only letters, digits and _ + . - are allowed")
    return container_id


def monitor_paths(bundle: str, exits_dir: str, socket_dir: str, container_id: str) -> MonitorPaths:
    """The :class:`MonitorPaths` of *container_id* with bundle *bundle*.

    conmon runs with cwd = ``--persist-dir`` = *bundle*, so both places it
    may write its ``oom`` file are ``<bundle>/oom``.
    """
    _check_id(container_id)
    bundle = os.path.abspath(bundle)
    socket_link = os.path.join(os.path.abspath(socket_dir), container_id)
    oom_places = (os.path.join(bundle, "oom"),  # cwd, conmon ≤ 2.1.12
                  os.path.join(bundle, "oom"))  # --persist-dir, every version
    return MonitorPaths(
        bundle=bundle,
        exit_file=os.path.join(os.path.abspath(exits_dir), container_id),
        attach_socket=os.path.join(socket_link, "attach"),
        ctl_fifo=os.path.join(bundle, "ctl"),
        oom_files=tuple(dict.fromkeys(oom_places)),
        pid_file=os.path.join(bundle, "pidfile"),
        socket_link=socket_link,
        winsz_fifo=os.path.join(bundle, "winsz"),
        persist_exit_file=os.path.join(bundle, "exit"),
        bundle_socket=os.path.join(bundle, "attach"),
        conmon_pid_file=os.path.join(bundle, "conmon.pid"),
    )


def parse_exit_file(data: bytes | str) -> int | None:
    """The exit code in an exit file's content, or None if it holds none
    (empty, or not a decimal integer).

    conmon writes the status as decimal text without a newline: the
    process's exit status, ``128 + N`` when signal N killed it, ``-1`` after
    its own ``--timeout``.
    """
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,10}", text):
        return None
    return int(text)


def ctl_message(kind: int, a: int, b: int) -> bytes:
    """One ctl FIFO line: ``"<kind> <a> <b>\\n"``.

    For :data:`CTL_RESIZE` *a* is the height (rows) and *b* the width
    (columns); :data:`CTL_REOPEN_LOG` takes ``0 0``.  Each line must go in a
    write of its own: conmon 2.1.6 mangles several lines read at once.
    """
    for value in (kind, a, b):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"ctl message fields must be non-negative integers, got {value!r}")
    return f"{kind} {a} {b}\n".encode()


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


class ExitStatus(NamedTuple):
    """How a container ended, as :attr:`Monitor.exited` reports it."""

    exit_code: int
    finished_at_ns: int
    oom_killed: bool


def _read_exit(paths: MonitorPaths) -> ExitStatus | None:
    """The :class:`ExitStatus` in *paths*' exit file, or None if there is
    none (yet).  conmon writes the file with a rename, so a file that exists
    is complete."""
    try:
        with open(paths.exit_file, "rb") as f:
            stat = os.fstat(f.fileno())
            code = parse_exit_file(f.read(64))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RuntimeFailure(f"read exit file {paths.exit_file}: {os.strerror(e.errno or 0)}") from e
    if code is None:
        return None
    return ExitStatus(code, stat.st_mtime_ns, any(os.path.exists(p) for p in paths.oom_files))


# ---------------------------------------------------------------------------
# The launcher and the monitor
# ---------------------------------------------------------------------------

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

    # -- paths and files ------------------------------------------------------

    def paths(self, container_id: str, bundle: str) -> MonitorPaths:
        """The files conmon makes for *container_id* in *bundle*."""
        return monitor_paths(bundle, self.exits_dir, self.socket_dir, container_id)

    def read_exit(self, container_id: str, bundle: str) -> tuple[int, int, bool] | None:
        """``(exit_code, finished_at_ns, oom_killed)`` from the container's
        exit file (finished_at is the file's mtime), or None if it has none."""
        return _read_exit(self.paths(container_id, bundle))

    def cleanup(self, paths: MonitorPaths) -> None:
        """Remove every file conmon made for a container (exit files, the
        socket symlink and socket, the FIFOs, the pidfile, OOM markers).
        Idempotent; call it once conmon is gone."""
        for path in paths.files():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                # Something else sits where our symlink goes; not ours to remove.
                log.warn("cleanup: {path} is a directory, left alone", path=path)
            except OSError as e:
                raise RuntimeFailure(f"remove {path}: {os.strerror(e.errno or 0)}") from e

    # -- the ctl FIFO ---------------------------------------------------------

    def _ctl(self, paths: MonitorPaths, line: bytes) -> None:
        """Write one line to the ctl FIFO without ever blocking."""
        try:
            # O_NONBLOCK: a plain open blocks forever when nobody reads (conmon
            # gone); this way it fails with ENXIO.
            fd = os.open(paths.ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                raise RuntimeFailure("container is not running") from e
            raise RuntimeFailure(f"open {paths.ctl_fifo}: {os.strerror(e.errno or 0)}") from e
        try:
            # One line per write(2): conmon 2.1.6 mangles lines read together.
            written = os.write(fd, line)
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise RuntimeFailure("container is not running") from e
            if e.errno == errno.EAGAIN:
                raise RuntimeFailure("conmon is not reading its ctl FIFO (it is full)") from e
            raise RuntimeFailure(f"write {paths.ctl_fifo}: {os.strerror(e.errno or 0)}") from e
        finally:
            os.close(fd)
        if written != len(line):
            raise RuntimeFailure(f"write {paths.ctl_fifo}: short write ({written} of {len(line)} bytes)")

    def reopen_log(self, paths: MonitorPaths) -> None:
        """Ask conmon to reopen the container's log file (after the kubelet
        rotated it).  conmon makes the new file a moment later (``<log>.tmp``
        renamed over the log path); this call does not wait for it.

        :raises RuntimeFailure: ``container is not running`` when conmon is gone.
        """
        self._ctl(paths, ctl_message(CTL_REOPEN_LOG, 0, 0))

    def resize(self, paths: MonitorPaths, height: int, width: int) -> None:
        """Resize the container's pty to *height* rows × *width* columns
        (callers should coalesce bursts and send only the latest size).

        :raises RuntimeFailure: ``container is not running`` when conmon is gone.
        """
        self._ctl(paths, ctl_message(CTL_RESIZE, height, width))

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
            monitor = self._watch_new_monitor(container_id, paths)
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
        monitor.container_pid = pid
        monitor._ready = True
        self._monitors[container_id] = monitor
        if monitor.conmon_exited:  # killed already, by someone else
            self._conmon_exited(monitor)
        log.debug("conmon {conmon_pid} created container {id} (pid {pid})",
                  conmon_pid=monitor.conmon_pid, id=container_id, pid=pid)
        return monitor

    async def _within(self, waiting: Deferred, deadline: float, container_id: str, what: str) -> Any:
        """Await *waiting* until *deadline* (reactor seconds)."""
        try:
            return await waiting.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
        except _SyncTimeout:
            raise DeadlineExceeded(
                f"create container {container_id}: {what} within {self.create_timeout:g}s"
            ) from None

    def _watch_new_monitor(self, container_id: str, paths: MonitorPaths) -> Monitor | None:
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
            monitor = self._watch_new_monitor(container_id, paths)
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
            log.warn("after a failed create of {id}: {error}", id=container_id, error=str(e))
        try:
            self.cleanup(paths)
        except RuntimeFailure as e:
            log.warn("after a failed create of {id}: {error}", id=container_id, error=str(e))

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
            "conmon {pid} of container {id} ended ({how}) without writing an exit file",
            pid=monitor.conmon_pid, id=monitor.container_id, how=end.describe() if end else "status unknown",
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
            return _read_exit(monitor.paths)
        except RuntimeFailure as e:
            log.warn("{error}", error=str(e))
            return None

    def _now_ns(self) -> int:
        return int(self._reactor.seconds() * 1_000_000_000)

    def adopt(self, container_id: str, bundle: str, conmon_pid: int, container_pid: int) -> Monitor:
        """Watch a conmon that an earlier daemon started (it is not our child).

        If the exit file is there, :attr:`Monitor.exited` has fired already
        with its code and mtime.  Otherwise conmon's end is watched (a pidfd,
        else /proc polled every ``poll_interval``), then the exit file read.
        A recorded pid that now belongs to another program counts as
        conmon gone.
        """
        paths = self.paths(container_id, bundle)
        monitor = Monitor(container_id, paths, conmon_pid, container_pid, adopted=True)
        self._monitors[container_id] = monitor
        status = self._read_status(monitor)
        if status is not None:
            monitor._finish(status)
            return monitor
        monitor._watches.append(ProcessWatch(
            self._reactor, conmon_pid, lambda end: self._conmon_ended(monitor, end), self.comm, self.poll_interval,
        ))
        return monitor

    def kill_leftover(self, container_id: str, bundle: str, timeout: float = 5.0) -> int | None:
        """Blocking (start-up recovery): SIGKILL the monitor an earlier
        daemon started for *container_id* and that nothing will adopt (with
        its process group: a ``runc create`` it still runs), and wait until
        it is gone. The pid comes from ``conmon.pid`` in the bundle and
        counts only while it is a conmon whose command line names this
        container. Returns the pid killed, or None."""
        paths = self.paths(container_id, bundle)
        try:
            with open(paths.conmon_pid_file) as f:
                pid = int(f.read().strip() or 0)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        if not alive(pid, self.comm) or container_id.encode() not in argv:
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
