"""Attaching to a running container's main process through conmon.

conmon serves an attach socket for each container (``AF_UNIX``,
``SOCK_SEQPACKET``, reached at ``<socket_dir>/<id>/attach`` through a
symlink to the bundle). Every client gets the container's output from the
moment it connects — one packet per read conmon made: a prefix byte (2
stdout, 3 stderr; a tty sends everything as stdout) and up to 8192 bytes —
and may send input: raw packets of at most 32 KiB, written to the
container's stdin pipe or pty. ``shutdown(SHUT_WR)`` is EOF for a container
run with ``-i`` and without ``--leave-stdin-open`` (``stdin_once``).

Twisted's stream transports read a byte stream; a SEQPACKET socket must be
read one message at a time to keep the prefix bytes apart, so
:class:`SeqPacketConnection` is a small :class:`FileDescriptor` of its own.

Resizes go to conmon's ctl FIFO (``1 <rows> <cols>``). conmon 2.1.6 mangles
several lines read at once, so :class:`ResizeCoalescer` writes at most one
line per :data:`RESIZE_INTERVAL` and only the latest size.

Detaching (the client leaves) closes our socket only: the container runs
on. When the container ends, conmon drains its output to the clients and
closes the socket; the session then reports the container's exit code.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from twisted.internet import error as ti_error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from rktlet.errors import RktletError, RuntimeFailure
from rktlet.logs import logger
from rktlet.oci.exec import InputFlow

__all__ = [
    "AttachSession",
    "MAX_INPUT_PACKET",
    "ResizeCoalescer",
    "SeqPacketConnection",
    "STDERR",
    "STDOUT",
    "start_attach",
]

log = logger("rktlet.oci.attach")

#: Output packet prefixes (conmon's ``stdpipe_t``).
STDOUT = 2
STDERR = 3

#: conmon reads 8192 bytes per read: a packet is the prefix plus that much.
MAX_OUTPUT_PACKET = 8192 + 1

#: conmon reads input packets with a 32 KiB buffer; a larger SEQPACKET
#: would be truncated.
MAX_INPUT_PACKET = 32 << 10

#: Packets read per wake-up, so one busy container cannot starve the reactor.
_READS_PER_WAKEUP = 64

#: Minimum seconds between two ctl FIFO writes (conmon 2.1.6 must read each
#: line on its own).
RESIZE_INTERVAL = 0.1

#: After the container's exit is known, how long the socket may stay open
#: (conmon closes it once the output is drained) before we close it.
EXIT_DRAIN_GRACE = 2.0

#: After conmon closed the socket, how long to wait for the exit status.
EXIT_STATUS_WAIT = 5.0


class SeqPacketConnection(FileDescriptor):
    """A connected SOCK_SEQPACKET socket in the reactor, keeping message
    boundaries: each received packet goes whole to *on_packet*; writes are
    sent as packets of at most :data:`MAX_INPUT_PACKET` bytes;
    :meth:`loseWriteConnection` ends with ``shutdown(SHUT_WR)``.

    It is an :class:`IPushProducer` of its input (pausing stops reading) and
    takes a producer for its output (paused when the socket is full).

    :param on_close: called once with the reason when the socket is closed
        (by the peer or by us).
    """

    def __init__(self, reactor: Any, sock: socket.socket, on_packet: Callable[[bytes], None],
                 on_close: Callable[[Failure], None]) -> None:
        super().__init__(reactor)
        sock.setblocking(False)
        self.socket = sock
        self._fd = sock.fileno()
        self._on_packet = on_packet
        self._on_close: Callable[[Failure], None] | None = on_close
        self._aborting = False
        self.connected = 1
        self.startReading()

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "SeqPacketConnection"

    def doRead(self) -> Any:
        for _ in range(_READS_PER_WAKEUP):
            try:
                packet = self.socket.recv(MAX_OUTPUT_PACKET)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    return ti_error.ConnectionLost()
                return e
            if not packet:
                return ti_error.ConnectionDone()
            self._on_packet(packet)
            if not self.connected or self.disconnecting:
                return None  # the packet's handler closed us
        return None

    def writeSomeData(self, data: bytes) -> Any:
        try:
            return self.socket.send(data[:MAX_INPUT_PACKET])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                return ti_error.ConnectionLost()
            return e

    def _closeWriteConnection(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def abortConnection(self) -> None:
        """Close at once, dropping unsent input (the reader is gone)."""
        if self.disconnected or not self.connected or self._aborting:
            return
        self._aborting = True
        self.stopReading()
        self.stopWriting()
        self.connectionLost(Failure(ti_error.ConnectionAborted()))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.socket.close()
        self._fd = -1
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(reason)


class ResizeCoalescer:
    """Sends window sizes to *send(height, width)* at most once per
    *interval* seconds, always the latest asked for and never the same size
    twice in a row. A size asked for in between is sent when the interval
    is over."""

    def __init__(self, reactor: Any, send: Callable[[int, int], None], interval: float = RESIZE_INTERVAL) -> None:
        self._reactor = reactor
        self._send = send
        self._interval = interval
        self._sent: tuple[int, int] | None = None
        self._pending: tuple[int, int] | None = None
        self._timer: Any = None

    def request(self, width: int, height: int) -> None:
        """The client's window is now *width* × *height*."""
        if width <= 0 or height <= 0:
            return
        self._pending = (height, width)
        if self._timer is None:
            self._flush()

    def _flush(self) -> None:
        self._timer = None
        size, self._pending = self._pending, None
        if size is None or size == self._sent:
            return
        self._sent = size
        try:
            self._send(*size)
        except RktletError as e:
            log.debug("resize not delivered: {error}", error=e)
        self._timer = self._reactor.callLater(self._interval, self._flush)

    def stop(self) -> None:
        """Drop any pending size; nothing is sent any more."""
        self._pending = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._send = lambda height, width: None


@implementer(IPushProducer)
class _OutputProducer:
    """Pauses reading the socket while the client is slow. (conmon drops
    output for a client it cannot write to rather than blocking the
    container, so a slow attach never stalls the container.)"""

    def __init__(self, session: "AttachSession") -> None:
        self._session = session

    def pauseProducing(self) -> None:
        conn = self._session._conn
        if conn is not None and conn.connected:
            conn.pauseProducing()

    def resumeProducing(self) -> None:
        conn = self._session._conn
        if conn is not None and conn.connected:
            conn.resumeProducing()

    def stopProducing(self) -> None:
        self._session.terminate()


class AttachSession:
    """One client attached to a container's main process (a
    :class:`~rktlet.stream.session.ProcessIO`), made by :func:`start_attach`.

    :attr:`done` fires with ``None`` when the client detached (or the
    session ended on the client's stdin EOF, for a non-tty container without
    ``stdin_once``, as CRI-O does), with the container's exit code when the
    container ended (``None`` if that code cannot be learnt), and fails with
    :class:`RuntimeFailure` when the socket cannot be reached.
    """

    def __init__(self, reactor: Any, terminal: Any, *, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                 container_stdin: bool, stdin_once: bool, resize: Callable[[int, int], None] | None,
                 exited: Deferred | None) -> None:
        self.done: Deferred[int | None] = Deferred()
        self._reactor = reactor
        self._terminal = terminal
        # Input is only useful when the container has a stdin to feed.
        self._stdin = stdin and container_stdin
        self._stdout = stdout
        self._stderr = stderr
        self._tty = tty
        self._stdin_once = stdin_once
        self._conn: SeqPacketConnection | None = None
        self._resizer = ResizeCoalescer(reactor, resize) if (resize is not None and tty) else None
        self._exited = exited
        self._exit_code: int | None = None
        self._container_ended = False
        self._detaching = False
        self._timer: Any = None
        if exited is not None:
            exited.addCallbacks(self._on_exit, lambda f: None)

    # -- connection ----------------------------------------------------------------

    def _connect(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise RuntimeFailure(f"attach: container is not running (no attach socket at {path})") from e
            if e.errno == errno.EAGAIN:
                raise RuntimeFailure(f"attach: conmon's attach socket {path} is busy (too many pending clients)") from e
            raise RuntimeFailure(f"attach: connect to {path}: {e.strerror or e}") from e
        self._conn = SeqPacketConnection(self._reactor, sock, self._on_packet, self._on_close)
        if self._stdin:
            self._conn.registerProducer(InputFlow(self._terminal), True)
        self._terminal.set_output_producer(_OutputProducer(self))

    def _on_packet(self, packet: bytes) -> None:
        kind, data = packet[0], packet[1:]
        if not data:
            return
        if kind == STDOUT:
            if self._stdout:
                self._terminal.stdout(data)
        elif kind == STDERR:
            if self._tty:
                if self._stdout:
                    self._terminal.stdout(data)
            elif self._stderr:
                self._terminal.stderr(data)
        else:
            log.debug("attach: packet of unknown kind {kind} ignored", kind=kind)

    def _on_exit(self, status: Any) -> None:
        self._container_ended = True
        self._exit_code = status[0] if status is not None else None
        if self._conn is not None and not self.done.called and self._timer is None:
            # conmon closes the socket once the last output is out; do not
            # wait for it forever.
            self._timer = self._reactor.callLater(EXIT_DRAIN_GRACE, self._close)

    def _close(self) -> None:
        self._timer = None
        if self._conn is not None and self._conn.connected:
            self._conn.loseConnection()

    def _on_close(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._detaching or self._container_ended or self._exited is None:
            self._finish(None if self._detaching else self._exit_code)
            return
        # conmon closed the socket: the container is ending. Its status comes
        # from the monitor a moment later.
        self._timer = self._reactor.callLater(EXIT_STATUS_WAIT, lambda: self._finish(None))
        self._exited.addCallbacks(lambda status: self._finish(self._exit_code), lambda f: self._finish(None))

    def _finish_failed(self, error: RktletError) -> None:
        if self._resizer is not None:
            self._resizer.stop()
        if self._exited is not None and not self._exited.called:
            self._exited.cancel()
        self.done.errback(Failure(error))

    def _finish(self, result: int | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.done.called:
            return
        if self._resizer is not None:
            self._resizer.stop()
        if self._exited is not None and not self._exited.called:
            self._exited.cancel()  # stop waiting on the monitor
        self._terminal.set_output_producer(None)
        self.done.callback(result)

    # -- ProcessIO -------------------------------------------------------------------

    def stdin(self, data: bytes) -> None:
        """Bytes for the container's stdin (dropped when the container has
        no stdin or the request did not ask for it)."""
        if self._stdin and self._conn is not None and self._conn.connected and not self._conn._writeDisconnecting:
            self._conn.write(data)

    def close_stdin(self) -> None:
        """The client's stdin ended: EOF to conmon (it closes the container's
        stdin when the container was made with ``stdin_once``)."""
        if not self._stdin or self._conn is None or not self._conn.connected:
            return
        if self._conn._writeDisconnecting:
            return
        self._conn.loseWriteConnection()
        if not self._tty and not self._stdin_once:
            # CRI-O's rule: without stdin_once the container's stdin stays
            # open and the attach ends with the client's input.
            self._detaching = True
            self._conn.loseConnection()

    def resize(self, width: int, height: int) -> None:
        """Resize the container's tty (ignored for a container without one)."""
        if self._resizer is not None and not self.done.called:
            self._resizer.request(width, height)

    def terminate(self) -> None:
        """Detach: close our socket; the container runs on."""
        if self.done.called:
            return
        self._detaching = True
        if self._conn is not None and self._conn.connected:
            # Unsent input is dropped: nobody waits for it any more.
            self._conn.abortConnection()
        else:
            self._finish(None)


def start_attach(reactor: Any, socket_path: str, terminal: Any, *, stdin: bool, stdout: bool, stderr: bool,
                 tty: bool, container_stdin: bool = True, stdin_once: bool = False,
                 resize: Callable[[int, int], None] | None = None, exited: Deferred | None = None) -> AttachSession:
    """Attach to the container whose conmon serves *socket_path*.

    :param tty: the container was created with a tty (output all comes as
        stdout; resizes apply).
    :param container_stdin: the container was created with stdin; input is
        dropped otherwise.
    :param stdin_once: the container closes its stdin after the first
        client's EOF.
    :param resize: ``resize(height, width)`` writes to conmon's ctl FIFO
        (e.g. ``lambda h, w: conmon.resize(paths, h, w)``).
    :param exited: fires with the container's ``(exit_code, …)`` when it ends
        (the monitor's :attr:`~rktlet.oci.conmon.Monitor.exited`); it is
        cancelled when the session ends first.
    :returns: the session; when the socket cannot be reached, its ``done``
        has already failed with :class:`RuntimeFailure`.
    """
    session = AttachSession(reactor, terminal, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty,
                            container_stdin=container_stdin, stdin_once=stdin_once, resize=resize, exited=exited)
    try:
        session._connect(socket_path)
    except RktletError as e:
        session._finish_failed(e)
    return session
