"""The server side of a SPDY/3.1 connection as a Twisted protocol.

:class:`SpdyConnection` parses frames (:mod:`rktlet.stream.spdyframes`),
keeps the client's streams and hands them to a :class:`SpdyHandler` (the
exec/attach or port-forward logic). It does what moby/spdystream, the Go peer
of every Kubernetes client, expects of a server:

* every accepted SYN_STREAM is answered at once with a SYN_REPLY carrying an
  empty header block (client-go waits for each reply before creating the next
  stream); a refused one gets RST_STREAM;
* PINGs from the client (odd ids) are echoed byte for byte; SETTINGS,
  WINDOW_UPDATE and unknown control frames are ignored; frames for unknown
  streams are dropped;
* no flow control at all (the Go peer never sends WINDOW_UPDATE): back-pressure
  is TCP's, see :mod:`rktlet.stream.flow`;
* an idle timer resets all streams and closes the connection when no frame
  was read or written for a while.

Limits, so that a client cannot make the server hold or queue without bound:

* while the client does not read what we send (the transport's send buffer
  is full and pauses our producers), we stop reading from it too: every
  frame read may make us write (a PING echo, a SYN_REPLY, an RST_STREAM, the
  pod's answer to forwarded data), and none of that may pile up;
* at most *max_streams* streams are open at once; a SYN_STREAM past that
  ends the connection with GOAWAY (:meth:`SpdyConnection.shut_down`, which a
  handler calls for its own limits too) and a log line naming the limit.
"""

from __future__ import annotations

from typing import Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from rktlet.stream import spdyframes as f
from rktlet.stream.flow import IdleTimer, PauseReadingProducer, ProducerFanout, ReadPauser

log = Logger()

# A DATA payload larger than this is split; keeps one stream from holding the
# socket for long and keeps the Go reader's per-frame allocation small.
MAX_DATA_CHUNK = 256 * 1024

# Streams open at once on one connection (exec/attach use at most 5; each
# forwarded port-forward connection uses 2).
DEFAULT_MAX_STREAMS = 1024

# Seconds a connection being shut down (GOAWAY sent) has to take what we
# wrote before it is aborted.
SHUTDOWN_GRACE = 5.0

# The ReadPauser reason held while the client does not read our output.
OUTPUT_FULL = "output-full"


class StreamListener(TypingProtocol):
    """Receives what the client sends on one stream."""

    def data_received(self, data: bytes) -> None: ...

    def end_received(self) -> None:
        """The client half-closed the stream (FIN)."""

    def reset_received(self) -> None:
        """The client reset the stream, or the connection went away."""


class SpdyHandler(TypingProtocol):
    """What a SPDY session does with the client's streams."""

    def accept_stream(self, stream: SpdyStream) -> bool:
        """Whether to accept a new stream (False: it is reset with CANCEL)."""

    def stream_opened(self, stream: SpdyStream) -> None:
        """An accepted stream, after its SYN_REPLY went out."""

    def goaway_received(self) -> None:
        """The client will open no more streams."""

    def connection_lost(self, reason: Failure) -> None:
        """The connection is gone; every stream with it."""


class SpdyStream:
    """One client-initiated stream.

    :ivar headers: the SYN_STREAM's header block, names lower-case.
    :ivar listener: where the client's data goes; set it in
        :meth:`SpdyHandler.stream_opened`.
    """

    def __init__(self, connection: SpdyConnection, stream_id: int, headers: f.Headers) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.headers = headers
        self.listener: StreamListener | None = None
        self.local_closed = False
        self.remote_closed = False
        self.was_reset = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def closed(self) -> bool:
        return self.was_reset or (self.local_closed and self.remote_closed)

    def write(self, data: bytes) -> None:
        """Send *data* to the client (dropped once this side is closed)."""
        if data and not self.local_closed and not self.was_reset:
            self.connection._send_data(self.stream_id, data, fin=False)

    def finish(self) -> None:
        """Half-close: an empty DATA frame with FIN after what was written."""
        if self.local_closed or self.was_reset:
            return
        self.local_closed = True
        self.connection._send_data(self.stream_id, b"", fin=True)
        self.connection._maybe_forget(self)

    def reset(self, status: int = f.CANCEL) -> None:
        """Abort the stream both ways (RST_STREAM)."""
        if self.was_reset:
            return
        self.was_reset = True
        self.local_closed = self.remote_closed = True
        self.connection._send_frame(f.RstStream(self.stream_id, status))
        self.connection._maybe_forget(self)

    def _remote_data(self, data: bytes) -> None:
        if self.remote_closed or self.was_reset:
            return
        if data and self.listener is not None:
            self.listener.data_received(data)

    def _remote_end(self) -> None:
        if self.remote_closed or self.was_reset:
            return
        self.remote_closed = True
        if self.listener is not None:
            self.listener.end_received()
        self.connection._maybe_forget(self)

    def _remote_reset(self) -> None:
        if self.was_reset:
            return
        self.was_reset = True
        self.local_closed = self.remote_closed = True
        if self.listener is not None:
            self.listener.reset_received()


class SpdyConnection(Protocol):
    """A server-side SPDY/3.1 connection.

    :param handler_factory: builds the :class:`SpdyHandler` for this
        connection once it is made.
    :param clock: for the idle timer and the finishing deadline.
    :param idle_timeout: seconds without any frame before the connection is
        closed (None: never).
    :param on_closed: called with the connection once it is gone.
    :param max_streams: most streams open at once.
    """

    def __init__(
        self,
        handler_factory: Callable[[SpdyConnection], SpdyHandler],
        clock: IReactorTime,
        idle_timeout: float | None = None,
        on_closed: Callable[[SpdyConnection], None] | None = None,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self._handler_factory = handler_factory
        self._on_closed = on_closed
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._max_streams = max_streams
        self.handler: SpdyHandler | None = None
        self._reader = f.FrameReader()
        self._writer = f.FrameWriter()
        self._streams: dict[int, SpdyStream] = {}
        self._last_received_id = 0
        self.goaway_received = False
        self.goaway_sent = False
        self._finishing = False
        self._finish_call = None
        self._closing = False
        self._lost = False
        self._registered = False
        self._ping_id = 2
        self.producers = ProducerFanout()
        self.reading: ReadPauser | None = None
        self._idle: IdleTimer | None = None

    # -- Twisted protocol -------------------------------------------------

    def connectionMade(self) -> None:
        self.reading = ReadPauser(self.transport, self._clock, self.abort, self._probe_ping)
        # A full send buffer pauses reading the client as well.
        self.producers.add(PauseReadingProducer(lambda: self.reading, OUTPUT_FULL))
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self.producers, True)
            self._registered = True
        self._idle = IdleTimer(self._clock, self._idle_timeout, self._idle_expired)
        self.handler = self._handler_factory(self)

    def dataReceived(self, data: bytes) -> None:
        if self._lost or self._closing:
            # Closing: what the client still sends is of no use.
            return
        if self._idle is not None:
            self._idle.touch()
        try:
            frames = self._reader.feed(data)
        except f.ProtocolError as e:
            log.info("SPDY protocol error from {peer}: {error}", peer=self._peer(), error=e)
            self.go_away(f.GOAWAY_PROTOCOL_ERROR)
            self.close()
            return
        for frame in frames:
            if self._lost or self._closing:
                return
            self._dispatch(frame)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._idle is not None:
            self._idle.stop()
        if self.reading is not None:
            self.reading.stop()
        if self._finish_call is not None and self._finish_call.active():
            self._finish_call.cancel()
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream._remote_reset()
        if self.handler is not None:
            self.handler.connection_lost(reason)
        if self._on_closed is not None:
            self._on_closed(self)

    # -- API for handlers ---------------------------------------------------

    def add_producer(self, producer: IPushProducer) -> None:
        """Pause *producer* whenever the client's send buffer is full."""
        self.producers.add(producer)

    def remove_producer(self, producer: IPushProducer) -> None:
        self.producers.remove(producer)

    def go_away(self, status: int = f.GOAWAY_OK) -> None:
        """Announce that no more streams will be accepted."""
        if self.goaway_sent or self._lost:
            return
        self.goaway_sent = True
        self._send_frame(f.GoAway(self._last_received_id, status))

    def finish(self, timeout: float) -> None:
        """The session's work is done and every output stream ended: wait for
        the client to close the connection (client-go does once it has read
        everything), at most *timeout* seconds.

        The server does not close first: input the client still sends would
        arrive on a closed socket, and the kernel's reset would destroy the
        output still in flight (pitfall 11). Input is read and discarded
        from now on.
        """
        if self._finishing or self._lost:
            return
        self._finishing = True
        if self.reading is not None:
            self.reading.clear()
            if self.producers.paused:
                # Still nothing is read while the client does not read.
                self.reading.pause(OUTPUT_FULL)
        if self.goaway_received:
            self.close()
            return
        self._finish_call = self._clock.callLater(timeout, self._finish_expired)

    def close(self) -> None:
        """Close once everything written went out.

        Our producer is unregistered first: a transport whose registered
        producer is paused when its buffer drains resumes the producer
        instead of closing, and never closes.
        """
        if self._lost:
            return
        self._closing = True
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def shut_down(self, why: str, status: int = f.GOAWAY_PROTOCOL_ERROR) -> None:
        """End the connection because the client went past a limit: GOAWAY,
        every stream reset, closed once that is written (aborted after a
        grace period: the client may not be reading). *why* is logged."""
        if self._lost or self._closing:
            return
        log.warn("SPDY connection from {peer} closed: {why}", peer=self._peer(), why=why)
        self.go_away(status)
        self._close_now()

    def _probe_ping(self) -> None:
        """A PING of ours (even id) while we are not reading: the Go client
        echoes it, a dead client's socket answers with a reset. Written
        directly so that it does not count as activity for the idle timer.
        Not while the client does not read: the send buffer is full, and the
        data in it gets the reset from a dead client already."""
        if not self._lost and not self._closing and not self.producers.paused:
            self.transport.write(self._writer.encode(f.Ping(self._ping_id)))
            self._ping_id = self._ping_id + 2 if self._ping_id < 0x7FFFFFFE else 2

    def abort(self) -> None:
        """Drop the connection now (the daemon is stopping)."""
        if not self._lost:
            self.transport.abortConnection()

    # -- internals ----------------------------------------------------------

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:  # noqa: BLE001 - only for log messages
            return "?"

    def _send_frame(self, frame: f.Frame) -> None:
        if self._lost or self._closing:
            return
        if self._idle is not None:
            self._idle.touch()
        self.transport.write(self._writer.encode(frame))

    def _send_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        if self._lost or self._closing:
            return
        if self._idle is not None:
            self._idle.touch()
        view = memoryview(data)
        while len(view) > MAX_DATA_CHUNK:
            self.transport.writeSequence([f.data_frame_header(stream_id, MAX_DATA_CHUNK), bytes(view[:MAX_DATA_CHUNK])])
            view = view[MAX_DATA_CHUNK:]
        flags = f.FLAG_FIN if fin else 0
        self.transport.writeSequence([f.data_frame_header(stream_id, len(view), flags), bytes(view)])

    def _maybe_forget(self, stream: SpdyStream) -> None:
        if stream.closed:
            self._streams.pop(stream.stream_id, None)

    def _dispatch(self, frame: f.Frame) -> None:
        match frame:
            case f.Data():
                stream = self._streams.get(frame.stream_id)
                if stream is None:
                    return
                stream._remote_data(frame.data)
                if frame.fin:
                    stream._remote_end()
            case f.SynStream():
                self._syn_stream(frame)
            case f.RstStream():
                stream = self._streams.pop(frame.stream_id, None)
                if stream is not None:
                    stream._remote_reset()
            case f.HeadersFrame():
                stream = self._streams.get(frame.stream_id)
                if stream is not None and frame.flags & f.FLAG_FIN:
                    stream._remote_end()
            case f.Ping():
                # Ours would be even; echo the client's (odd) ones unchanged.
                if frame.ping_id & 1:
                    self._send_frame(frame)
            case f.GoAway():
                self.goaway_received = True
                if self._finishing:
                    self.close()
                if self.handler is not None:
                    self.handler.goaway_received()
            case _:
                # SYN_REPLY (we open no streams), SETTINGS, WINDOW_UPDATE and
                # unknown control frames: nothing to do.
                pass

    def _syn_stream(self, frame: f.SynStream) -> None:
        sid = frame.stream_id
        if sid <= self._last_received_id or not sid & 1:
            # Ids of client streams are odd and strictly increasing.
            self._send_frame(f.RstStream(sid, f.PROTOCOL_ERROR))
            return
        if len(self._streams) >= self._max_streams and not (self.goaway_sent or self._finishing):
            # GOAWAY names the last stream accepted: not this one.
            self.shut_down(f"more than {self._max_streams} streams open (the limit of streams per connection)")
            return
        self._last_received_id = sid
        if self.goaway_received or self.goaway_sent or self._finishing:
            self._send_frame(f.RstStream(sid, f.REFUSED_STREAM))
            return
        stream = SpdyStream(self, sid, frame.headers)
        stream.local_closed = frame.unidirectional
        assert self.handler is not None
        try:
            accepted = self.handler.accept_stream(stream)
        except Exception:  # noqa: BLE001 - a handler bug must not kill the connection
            log.failure("accepting SPDY stream {sid}", sid=sid)
            accepted = False
        if not accepted:
            self._send_frame(f.RstStream(sid, f.CANCEL))
            return
        self._streams[sid] = stream
        if not frame.unidirectional:
            self._send_frame(f.SynReply(sid))
        self.handler.stream_opened(stream)
        if frame.fin:
            stream._remote_end()

    def _idle_expired(self) -> None:
        log.info("SPDY session with {peer} idle, closing", peer=self._peer())
        self._close_now()

    def _close_now(self) -> None:
        """Reset every stream and close; abort if that does not get out."""
        for stream in list(self._streams.values()):
            stream.reset(f.CANCEL)
        self.close()
        # A client that stopped reading never lets the buffer drain.
        if self._finish_call is not None and self._finish_call.active():
            self._finish_call.cancel()
        self._finish_call = self._clock.callLater(SHUTDOWN_GRACE, self._finish_expired)

    def _finish_expired(self) -> None:
        self._finish_call = None
        if not self._lost:
            self.transport.abortConnection()
