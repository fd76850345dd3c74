"""Port-forwarding: the ``portforward.k8s.io`` protocol over SPDY, and the
TCP side shared with the WebSocket variants.

Over SPDY, each forwarded TCP connection is a pair of streams sharing a
``requestid`` header and naming the pod port in ``port``: ``error`` (created
first; the client half-closes it at once and only reads it) and ``data``.
When a pair is complete the runtime connects (:meth:`Backend.port_forward`)
and bytes are copied both ways, with half-closes passed on. One SPDY
connection carries any number of such pairs, concurrently.

Errors: a connection that cannot be made is reported as text on the pair's
error stream (kubectl then ends the whole session, as with the reference
servers). A connection that breaks after it was made (reset, broken pipe) only
resets the pair: an error message there would make kubectl end every other
forwarded connection too (pitfall 12).
"""

from __future__ import annotations

from typing import Callable, Protocol as TypingProtocol

from twisted.internet import error as neterror
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rktlet.stream import spdyframes as f
from rktlet.stream.flow import PauseReadingProducer, ReadPauser
from rktlet.stream.session import Backend
from rktlet.stream.spdy import SpdyConnection, SpdyStream

log = Logger()

PROTOCOL = "portforward.k8s.io"

# Client bytes buffered while the pod connection is being made; above this
# the client socket is paused until the connection exists.
CONNECT_BUFFER = 256 * 1024

# Forwarded connections of one session whose second stream has not come yet
# (each holds a stream, a timer and a connection object). Past this the SPDY
# connection is ended with GOAWAY. WebSocket port-forward connects every
# requested port at once: it takes at most this many ports.
MAX_PENDING_PAIRS = 256


class ForwardSide(TypingProtocol):
    """The client's side of one forwarded connection (a SPDY stream pair or
    a WebSocket channel pair)."""

    def deliver(self, data: bytes) -> None:
        """Bytes from the pod for the client."""

    def deliver_end(self) -> None:
        """The pod side will send no more (half-close)."""

    def connect_failed(self, message: str) -> None:
        """The connection could not be made; *message* is for the user."""

    def broken(self) -> None:
        """The connection broke after it was made: abort, no message."""

    def closed(self) -> None:
        """The connection ended cleanly both ways."""


@implementer(IHalfCloseableProtocol)
class ForwardedConnection(Protocol):
    """The pod side of one forwarded connection: the protocol handed to
    :meth:`Backend.port_forward`.

    :param side: where the pod's bytes go.
    :param pauser: the client connection's read pauser (for back-pressure
        from the pod socket to the client).
    :param add_producer: registers the pod socket as a producer of the client
        session, so a full client buffer pauses reading the pod socket.
    """

    def __init__(
        self,
        side: ForwardSide,
        pauser: Callable[[], ReadPauser | None],
        add_producer: Callable,
        remove_producer: Callable,
    ) -> None:
        self._side = side
        self._pauser = pauser
        self._add_producer = add_producer
        self._remove_producer = remove_producer
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._client_eof = False
        self._pod_eof = False
        self._aborted = False
        self._registered = False
        self.connected = False
        self.finished = False

    # -- from the client --------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.finished or self._aborted:
            return
        if self.connected:
            self.transport.write(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > CONNECT_BUFFER:
            pauser = self._pauser()
            if pauser is not None:
                pauser.pause(self)

    def client_eof(self) -> None:
        if self._client_eof:
            return
        self._client_eof = True
        if self.connected and not self.finished:
            self._half_close_or_close()

    def abort(self) -> None:
        """The client reset its side, or went away."""
        self._aborted = True
        self._resume_client()
        if self.connected and not self.finished:
            self.transport.abortConnection()

    # -- Twisted protocol ---------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected = True
        if self._aborted:
            self.transport.abortConnection()
            return
        self.transport.registerProducer(PauseReadingProducer(self._pauser, self), True)
        self._registered = True
        self._add_producer(self.transport)
        pending, self._pending = self._pending, []
        self._pending_size = 0
        if pending:
            self.transport.writeSequence(pending)
        self._resume_client()
        if self._client_eof:
            self._half_close_or_close()

    def dataReceived(self, data: bytes) -> None:
        if not self._aborted:
            self._side.deliver(data)

    def readConnectionLost(self) -> None:
        self._pod_eof = True
        if not self._aborted:
            self._side.deliver_end()
        if self._client_eof:
            self._close()

    def writeConnectionLost(self) -> None:
        if self._pod_eof:
            self._close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.finished = True
        self._remove_producer(self.transport)
        self._resume_client()
        if self._aborted:
            return
        if reason is None or reason.check(neterror.ConnectionDone):
            if not self._pod_eof:
                self._side.deliver_end()
            self._side.closed()
        else:
            log.debug("forwarded connection broke: {reason}", reason=reason.value)
            self._side.broken()

    # -- internals -------------------------------------------------------------------

    def _half_close_or_close(self) -> None:
        if self._pod_eof:
            self._close()
            return
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            self._close()
            return
        self._unregister()
        lose_write()

    def _close(self) -> None:
        self._unregister()
        self.transport.loseConnection()

    def _unregister(self) -> None:
        """Nothing more is written to the pod: drop the producer first, or a
        transport whose producer is paused when its buffer drains resumes it
        instead of (half-)closing, and never does."""
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        self._resume_client()

    def _resume_client(self) -> None:
        pauser = self._pauser()
        if pauser is not None:
            pauser.resume(self)


def forward_error_message(port: int, sandbox_id: str, failure: Failure) -> str:
    """The text kubectl shows for a connection that could not be made."""
    return f"error forwarding port {port} to pod {sandbox_id}: {failure.getErrorMessage()}"


class _Pair:
    """One forwarded connection over SPDY: its two streams and the pod side."""

    def __init__(self, handler: SpdyPortForwardHandler, key: str, port: int) -> None:
        self._handler = handler
        self.key = key
        self.port = port
        self.error: SpdyStream | None = None
        self.data: SpdyStream | None = None
        # Exists from the start so that client bytes (and EOF) arriving
        # before the pod connection is made are kept for it.
        self.conn = ForwardedConnection(
            self,
            lambda: handler.connection.reading,
            handler.connection.add_producer,
            handler.connection.remove_producer,
        )
        self.timer = None

    # ForwardSide
    def deliver(self, data: bytes) -> None:
        if self.data is not None:
            self.data.write(data)

    def deliver_end(self) -> None:
        if self.data is not None:
            self.data.finish()

    def connect_failed(self, message: str) -> None:
        if self.error is not None:
            self.error.write(message.encode())
            self.error.finish()
        if self.data is not None:
            self.data.reset(f.CANCEL)
        self._handler._forget(self)

    def broken(self) -> None:
        for stream in (self.data, self.error):
            if stream is not None:
                stream.reset(f.CANCEL)
        self._handler._forget(self)

    def closed(self) -> None:
        for stream in (self.data, self.error):
            if stream is not None:
                stream.finish()
        self._handler._forget(self)

    # StreamListener of the data stream
    def data_received(self, data: bytes) -> None:
        self.conn.client_data(data)

    def end_received(self) -> None:
        self.conn.client_eof()

    def reset_received(self) -> None:
        self.conn.abort()
        if self.error is not None and not self.error.closed:
            self.error.reset(f.CANCEL)
        self._handler._forget(self)


class SpdyPortForwardHandler:
    """The :class:`~rktlet.stream.spdy.SpdyHandler` of a port-forward session.

    :param sandbox_id: the pod whose ports are reached.
    :param pair_timeout: seconds to wait for the second stream of a pair.
    :param max_pending_pairs: most pairs waiting for their second stream.
    """

    def __init__(
        self,
        connection: SpdyConnection,
        backend: Backend,
        sandbox_id: str,
        clock: IReactorTime,
        pair_timeout: float = 30.0,
        max_pending_pairs: int = MAX_PENDING_PAIRS,
    ) -> None:
        self.connection = connection
        self._backend = backend
        self._sandbox_id = sandbox_id
        self._clock = clock
        self._pair_timeout = pair_timeout
        self._max_pending_pairs = max_pending_pairs
        self._pairs: dict[str, _Pair] = {}
        self._pending = 0  # pairs whose timer runs
        self._lost = False

    def accept_stream(self, stream: SpdyStream) -> bool:
        kind = (stream.header("streamtype") or "").lower()
        port_text = stream.header("port") or ""
        if kind not in ("error", "data"):
            log.info("port-forward stream of unknown type {kind!r}", kind=kind)
            return False
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            log.info("port-forward stream with invalid port {port!r}", port=port_text)
            return False
        pair = self._pairs.get(self._key(stream, kind))
        if pair is not None and (getattr(pair, kind) is not None or pair.port != int(port_text)):
            return False
        if pair is None and self._pending >= self._max_pending_pairs:
            self.connection.shut_down(
                f"more than {self._max_pending_pairs} port-forward connections waiting for their"
                " second stream (the limit of pending port-forward pairs)"
            )
            return False
        return True

    def stream_opened(self, stream: SpdyStream) -> None:
        kind = (stream.header("streamtype") or "").lower()
        port = int(stream.header("port") or 0)
        key = self._key(stream, kind)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = _Pair(self, key, port)
            pair.timer = self._clock.callLater(self._pair_timeout, self._pair_timed_out, pair)
            self._pending += 1
        if kind == "error":
            # The client never writes on an error stream (it half-closes it
            # at once): no listener, so whatever comes is dropped.
            pair.error = stream
        else:
            pair.data = stream
            stream.listener = pair
        if pair.error is not None and pair.data is not None:
            self._stop_timer(pair)
            self._connect(pair)

    def goaway_received(self) -> None:
        pass

    def connection_lost(self, reason: Failure) -> None:
        self._lost = True
        pairs, self._pairs = list(self._pairs.values()), {}
        for pair in pairs:
            self._stop_timer(pair)
            pair.conn.abort()

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _key(stream: SpdyStream, kind: str) -> str:
        request_id = stream.header("requestid")
        if request_id is not None:
            return request_id
        # Old clients send no request id: the data stream follows its error stream.
        return str(stream.stream_id if kind == "error" else stream.stream_id - 2)

    def _connect(self, pair: _Pair) -> None:
        conn = pair.conn
        try:
            d = self._backend.port_forward(self._sandbox_id, pair.port, conn)
        except Exception:  # noqa: BLE001 - reported like a failed connection
            pair.connect_failed(forward_error_message(pair.port, self._sandbox_id, Failure()))
            return

        def failed(failure: Failure) -> None:
            if not conn.connected and not self._lost:
                log.info("port-forward to {port} failed: {error}", port=pair.port, error=failure.getErrorMessage())
                pair.connect_failed(forward_error_message(pair.port, self._sandbox_id, failure))

        d.addErrback(failed)

    def _stop_timer(self, pair: _Pair) -> None:
        if pair.timer is not None:
            if pair.timer.active():
                pair.timer.cancel()
            pair.timer = None
            self._pending -= 1

    def _pair_timed_out(self, pair: _Pair) -> None:
        pair.timer = None
        self._pending -= 1
        if pair.error is not None:
            pair.error.write(b"timed out waiting for streams")
            pair.error.finish()
        if pair.data is not None:
            pair.data.reset(f.CANCEL)
        self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        self._stop_timer(pair)
        if self._pairs.get(pair.key) is pair:
            del self._pairs[pair.key]
