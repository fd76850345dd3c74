"""Interactive exec for the streaming server: an :class:`ExecSession` over
pipes (under the reaper) or a pty (runc in the foreground)."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import struct
import termios
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from rktlet.errors import RktletError, RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.exec.process import ExecFiles, ExecProtocol, ExecResult, describe_cmd, runc_argv, spawn, spawn_piped
from rktlet.oci.exec.spec import DEFAULT_WINDOW, exec_process_spec, load_container_process
from rktlet.oci.runtime import OCIRuntime

log = logger("rktlet.oci.exec")


@implementer(IPushProducer)
class _OutputProducer:
    """What the streaming side pauses when its client reads slowly."""

    def __init__(self, session: "ExecSession") -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session._pause_output()

    def resumeProducing(self) -> None:
        self._session._resume_output()

    def stopProducing(self) -> None:
        self._session.terminate()


@implementer(IPushProducer)
class InputFlow:
    """Registered with what takes a session's input (a process's stdin pipe,
    conmon's attach socket): when it cannot take more, the client's input is
    paused."""

    def __init__(self, terminal: Any) -> None:
        self._terminal = terminal

    def pauseProducing(self) -> None:
        self._terminal.pause_input()

    def resumeProducing(self) -> None:
        self._terminal.resume_input()

    def stopProducing(self) -> None:
        pass  # stdin is gone; the session's end is reported through `done`


class ExecSession:
    """One interactive exec (a :class:`~rktlet.stream.session.ProcessIO`).

    Made by :func:`start_exec`. :attr:`done` fires with the exit code (128 +
    N after signal N) once the command has ended and its output has been
    delivered to the terminal; it fails with :class:`RuntimeFailure` when
    runc could not run the command.
    """

    def __init__(self, reactor: Any, terminal: Any, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.done: Deferred[int] = Deferred()
        self._reactor = reactor
        self._terminal = terminal
        self.tty = tty
        self._want_stdin = stdin
        self._want_stdout = stdout
        self._want_stderr = stderr and not tty
        self._proto: ExecProtocol | None = None
        self._stdin_closed = not stdin
        self._window: tuple[int, int] | None = None

    # -- start ------------------------------------------------------------------

    def _start(self, runtime: OCIRuntime, container_id: str, bundle: str, cmd: Sequence[str]) -> None:
        process = exec_process_spec(load_container_process(bundle), cmd, tty=self.tty)
        files = ExecFiles.write(bundle, process)
        if not self.tty:
            proto = spawn_piped(self._reactor, runtime, container_id, files, self._out, self._err)
        else:
            proto = ExecProtocol(self._reactor, runtime.threadpool, files, self._out, self._err, reaper=False)
            master, slave = pty.openpty()
            # Sized before runc starts: runc copies our size to the container's
            # console once at start, then on each SIGWINCH.
            _set_window(master, *DEFAULT_WINDOW)
            try:
                # Twisted forks for a pty (posix_spawn cannot give a controlling
                # terminal); it closes the slave in the parent and owns the master.
                spawn(self._reactor, proto, runc_argv(runtime, files, container_id, detach=False), files,
                      usePTY=(master, slave, os.ttyname(slave)))
            except BaseException:
                os.close(master)
                os.close(slave)
                raise
        self._proto = proto
        if self._want_stdin:
            proto.transport.registerProducer(InputFlow(self._terminal), True)
        elif not self.tty:
            proto.transport.closeStdin()
        self._terminal.set_output_producer(_OutputProducer(self))
        proto.ended.addCallback(self._ended)
        log.debug("exec in {id} started: {cmd} (tty={tty})", id=container_id, cmd=describe_cmd(cmd), tty=self.tty)

    def _ended(self, result: ExecResult) -> None:
        self._terminal.set_output_producer(None)
        if result.runc_error and not result.killed:
            self.done.errback(Failure(RuntimeFailure(result.runc_error)))
        else:
            self.done.callback(result.exit_code)

    # -- output -----------------------------------------------------------------

    def _out(self, data: bytes) -> None:
        if self._want_stdout:
            self._terminal.stdout(data)

    def _err(self, data: bytes) -> None:
        if self._want_stderr:
            self._terminal.stderr(data)

    def _pause_output(self) -> None:
        if self._proto is not None and not self.done.called:
            self._proto.pause()

    def _resume_output(self) -> None:
        if self._proto is not None and not self.done.called:
            self._proto.resume()

    # -- ProcessIO ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of the process rktlet spawned — runc (tty) or the reaper
        around it — None once it has been reaped."""
        transport = self._proto.transport if self._proto is not None else None
        return getattr(transport, "pid", None)

    def stdin(self, data: bytes) -> None:
        """Bytes for the command's stdin (dropped when stdin was not asked
        for, or after EOF)."""
        if self._proto is None or self._stdin_closed or self._proto.exited or not data:
            return
        self._proto.transport.write(data)

    def close_stdin(self) -> None:
        """EOF for the command. A tty has no EOF to send: the terminal stays
        open until the command or the client ends (CRI-O does the same)."""
        if self._stdin_closed or self._proto is None:
            return
        self._stdin_closed = True
        if not self.tty:
            # A writer whose registered producer is paused never closes:
            # unregister first (and let the client's input flow again).
            writer = getattr(self._proto.transport, "pipes", {}).get(0)
            if writer is not None and getattr(writer, "producer", None) is not None:
                writer.unregisterProducer()
                self._terminal.resume_input()
            self._proto.transport.closeStdin()

    def resize(self, width: int, height: int) -> None:
        """The client's window is *width* columns × *height* rows (tty only)."""
        if not self.tty or self._proto is None or self.done.called:
            return
        if width <= 0 or height <= 0 or width > 0xFFFF or height > 0xFFFF:
            return
        if self._window == (width, height):
            return
        fd = getattr(self._proto.transport, "fd", -1)
        if fd is None or fd < 0 or not getattr(self._proto.transport, "connected", False):
            return
        try:
            _set_window(fd, width, height)
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.EIO, errno.ENOTTY):
                raise
            return
        self._window = (width, height)

    def terminate(self) -> None:
        """The client went away: kill the command (its whole session) and
        runc, and reap them; :attr:`done` still fires."""
        if self._proto is None or self.done.called:
            return
        self._stdin_closed = True
        self._proto.kill()


def _set_window(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def start_exec(reactor: Any, runtime: OCIRuntime, container_id: str, bundle: str, cmd: Sequence[str],
               terminal: Any, tty: bool = False, stdin: bool = False, stdout: bool = True,
               stderr: bool = True) -> ExecSession:
    """Start *cmd* in the running container for a streaming session.

    :param terminal: the streaming side (:class:`rktlet.stream.session.Terminal`).
    :returns: the :class:`ExecSession`; when the command cannot be started,
        its ``done`` has already failed with the RktletError.
    """
    session = ExecSession(reactor, terminal, tty, stdin, stdout, stderr)
    try:
        session._start(runtime, container_id, bundle, cmd)
    except RktletError as e:
        session.done.errback(Failure(e))
    return session
