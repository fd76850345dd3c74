"""Exec and attach over SPDY (the ``*.channel.k8s.io`` remote command
protocols, v1 to v4).

The client opens one SPDY stream per channel, each named by its
``streamtype`` header: ``error`` (always, first), ``stdin``, ``stdout``,
``stderr`` (not with a tty) and ``resize`` (tty, v3 and later). Which ones to
wait for is decided by the *stored request* — a tty request never counts a
stderr stream, and v1/v2 never count a resize stream (pitfall 5). Each stream
is replied to as it arrives (pitfall 4); the process starts when all expected
streams exist, or the connection is closed after the stream creation timeout.

Version differences (``channel.k8s.io`` = v1):

* v1: right after setup the server half-closes ``stdin`` and resets
  ``error`` (kept from the first kubelets for compatibility): no status.
* v2, v3: plain-text error message on failure, nothing on success.
* v3: adds the ``resize`` stream.
* v4: the error stream carries a JSON ``metav1.Status`` with the exit code.

A client offering ``v5.channel.k8s.io`` over SPDY gets v4 (the server does
not negotiate v5 over SPDY, as upstream; v5 only adds a WebSocket signal).
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rktlet.stream import spdyframes as f
from rktlet.stream.command import CommandSession, ResizeDecoder
from rktlet.stream.session import AttachRequest, Backend, ExecRequest
from rktlet.stream.spdy import SpdyConnection, SpdyStream

log = Logger()

# Offered over SPDY, best first (the client's order decides, see server.py).
SPDY_PROTOCOLS = {
    "v4.channel.k8s.io": 4,
    "v3.channel.k8s.io": 3,
    "v2.channel.k8s.io": 2,
    "channel.k8s.io": 1,
}

STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")


def expected_streams(request: ExecRequest | AttachRequest, version: int) -> set[str]:
    """The stream types the client creates for *request* under *version*."""
    expected = {"error"}
    if request.stdin:
        expected.add("stdin")
    if request.stdout:
        expected.add("stdout")
    if request.stderr and not request.tty:
        expected.add("stderr")
    if request.tty and version >= 3:
        expected.add("resize")
    return expected


class _StdinListener:
    def __init__(self, handler: SpdyCommandHandler) -> None:
        self._handler = handler

    def data_received(self, data: bytes) -> None:
        self._handler.session.stdin_received(data)

    def end_received(self) -> None:
        self._handler.session.stdin_closed()

    def reset_received(self) -> None:
        self._handler.session.stdin_closed()


class _ResizeListener:
    def __init__(self, handler: SpdyCommandHandler) -> None:
        self._handler = handler
        self._decoder = ResizeDecoder()

    def data_received(self, data: bytes) -> None:
        for width, height in self._decoder.feed(data):
            self._handler.session.resize(width, height)

    def end_received(self) -> None:
        pass

    def reset_received(self) -> None:
        pass


class SpdyCommandHandler:
    """The :class:`~rktlet.stream.spdy.SpdyHandler` of an exec or attach
    session, and the :class:`~rktlet.stream.command.CommandWire` of its
    :class:`CommandSession`.

    :param connection: the SPDY connection.
    :param backend: the runtime.
    :param request: the stored request.
    :param version: negotiated protocol version (1-4).
    :param clock: for the stream creation timeout.
    :param stream_creation_timeout: seconds to wait for all streams.
    :param finish_timeout: seconds to wait, once everything is written, for
        the client to close the connection.
    """

    def __init__(
        self,
        connection: SpdyConnection,
        backend: Backend,
        request: ExecRequest | AttachRequest,
        version: int,
        clock: IReactorTime,
        stream_creation_timeout: float = 30.0,
        finish_timeout: float = 900.0,
    ) -> None:
        self.connection = connection
        self.version = version
        self.session = CommandSession(backend, request, version, self)
        self.streams: dict[str, SpdyStream] = {}
        self._expected = expected_streams(request, version)
        self._finish_timeout = finish_timeout
        self._timeout = clock.callLater(stream_creation_timeout, self._streams_timed_out)

    # -- SpdyHandler --------------------------------------------------------------

    def accept_stream(self, stream: SpdyStream) -> bool:
        kind = (stream.header("streamtype") or "").lower()
        if kind in self.streams:
            log.info("duplicate {kind} stream in a remote command session", kind=kind)
            return False
        return True

    def stream_opened(self, stream: SpdyStream) -> None:
        kind = (stream.header("streamtype") or "").lower()
        if kind == "stdin":
            stream.listener = _StdinListener(self)
        elif kind == "resize":
            stream.listener = _ResizeListener(self)
        else:
            # Streams the client only reads keep no listener: anything it
            # sends on them is dropped.
            if kind not in STREAM_TYPES:
                log.info("ignoring a stream of unknown type {kind!r}", kind=kind)
                return
        self.streams[kind] = stream
        if self.session.ended:
            return
        if not self.session.started and self._expected <= self.streams.keys():
            self._all_streams_here()

    def goaway_received(self) -> None:
        pass

    def connection_lost(self, reason: Failure) -> None:
        self._cancel_timeout()
        self.session.client_gone()

    # -- CommandWire --------------------------------------------------------------

    def write_stdout(self, data: bytes) -> None:
        stream = self.streams.get("stdout")
        if stream is not None:
            stream.write(data)

    def write_stderr(self, data: bytes) -> None:
        stream = self.streams.get("stderr")
        if stream is not None:
            stream.write(data)

    def add_producer(self, producer: IPushProducer) -> None:
        self.connection.add_producer(producer)

    def remove_producer(self, producer: IPushProducer) -> None:
        self.connection.remove_producer(producer)

    def pause_input(self) -> None:
        if self.connection.reading is not None:
            self.connection.reading.pause(self)

    def resume_input(self) -> None:
        if self.connection.reading is not None:
            self.connection.reading.resume(self)

    def end(self, status: bytes | None) -> None:
        """Closing order: stop input (reset stdin/resize, so the client stops
        sending), the status on ``error``, then FIN on every output stream,
        and wait for the client to close the connection."""
        self._cancel_timeout()
        self.resume_input()
        for kind in ("stdin", "resize"):
            stream = self.streams.get(kind)
            if stream is not None and not stream.closed:
                stream.reset(f.CANCEL)
        error = self.streams.get("error")
        if error is not None and status:
            error.write(status)
        for kind in ("stdout", "stderr", "error"):
            stream = self.streams.get(kind)
            if stream is not None:
                stream.finish()
        self.connection.finish(self._finish_timeout)

    # -- internals ------------------------------------------------------------------

    def _all_streams_here(self) -> None:
        self._cancel_timeout()
        if self.version == 1:
            # The v1 quirk clients of that protocol expect.
            if "stdin" in self.streams:
                self.streams["stdin"].finish()
            self.streams["error"].reset(f.CANCEL)
        self.session.start()

    def _streams_timed_out(self) -> None:
        self._timeout = None
        log.info(
            "timed out waiting for the client to create streams (have {have}, want {want})",
            have=sorted(self.streams),
            want=sorted(self._expected),
        )
        self.connection.close()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
