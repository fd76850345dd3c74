"""WebSocket sessions (autobahn): the Kubernetes channel protocols for exec
and attach, the legacy channel protocol for port-forward, and the SPDY
port-forward tunnel (``SPDY/3.1+portforward.k8s.io``).

Channel framing: each message is one channel frame, first byte the channel
number, the rest data. Binary protocols use binary messages; the base64 ones
use text messages whose first character is the ASCII digit of the channel,
followed by standard base64 of the data. Remote command channels are
0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize; v5 adds the client's
"close channel" signal ``[255, channel]`` (stdin EOF).

The HTTP upgrade is answered by autobahn from the request the server replays
into it (:mod:`rktlet.stream.server` negotiates the subprotocol first, so a
refusal is a plain HTTP response).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rktlet.stream.command import CommandSession, ResizeDecoder
from rktlet.stream.flow import IdleTimer, PauseReadingProducer, ProducerFanout, ReadPauser
from rktlet.stream.portforward import ForwardedConnection, forward_error_message
from rktlet.stream.session import AttachRequest, Backend, ExecRequest
from rktlet.stream.spdy import DEFAULT_MAX_STREAMS, OUTPUT_FULL, SpdyConnection, SpdyHandler

log = Logger()

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE_SIGNAL = 255
NORMAL_CLOSURE = 1000


@dataclass(frozen=True)
class ChannelProtocol:
    """A WebSocket subprotocol of the channel family."""

    name: str
    version: int  # remote command semantics: 1 (plain text errors), 4, 5
    base64: bool


# exec/attach subprotocols; "" is a client that named none (binary, v1 semantics).
COMMAND_PROTOCOLS = {
    p.name: p
    for p in (
        ChannelProtocol("v5.channel.k8s.io", 5, False),
        ChannelProtocol("v4.channel.k8s.io", 4, False),
        ChannelProtocol("v4.base64.channel.k8s.io", 4, True),
        ChannelProtocol("channel.k8s.io", 1, False),
        ChannelProtocol("base64.channel.k8s.io", 1, True),
        ChannelProtocol("", 1, False),
    )
}

TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
# legacy port-forward subprotocols (channel pairs per port)
PORTFORWARD_PROTOCOLS = {
    p.name: p
    for p in (
        ChannelProtocol("v4.channel.k8s.io", 4, False),
        ChannelProtocol("v4.base64.channel.k8s.io", 4, True),
        ChannelProtocol("", 4, False),
    )
}


class FramingError(ValueError):
    """A message that is not a valid channel frame."""


def encode_frame(channel: int, data: bytes, use_base64: bool) -> tuple[bytes, bool]:
    """A channel frame as (payload, is_binary) for ``sendMessage``."""
    if use_base64:
        return str(channel).encode() + base64.b64encode(data), False
    return bytes((channel,)) + data, True


def decode_frame(payload: bytes, is_binary: bool, use_base64: bool) -> tuple[int, bytes]:
    """(channel, data) of a received message.

    :raises FramingError: empty, or bad base64.
    """
    if not payload:
        raise FramingError("empty message")
    if use_base64 and not is_binary:
        digit = payload[:1]
        if not digit.isdigit():
            raise FramingError(f"bad channel {digit!r}")
        try:
            return int(digit), base64.b64decode(payload[1:], validate=True)
        except (binascii.Error, ValueError) as e:
            raise FramingError(f"bad base64: {e}") from None
    return payload[0], payload[1:]


def port_prefix(port: int) -> bytes:
    """The first frame of each port-forward channel: the port, little-endian."""
    return struct.pack("<H", port)


def make_factory(reactor, close_timeout: float) -> WebSocketServerFactory:
    """The autobahn factory whose options every session shares."""
    factory = WebSocketServerFactory(reactor=reactor)
    factory.setProtocolOptions(
        openHandshakeTimeout=30,
        # Output still in the send buffer goes out before the close frame;
        # a slow client must not lose it to a short close timer.
        closeHandshakeTimeout=close_timeout,
        # One SPDY frame per tunnel message is at most 16 MiB.
        maxMessagePayloadSize=17 * 1024 * 1024,
        maxFramePayloadSize=17 * 1024 * 1024,
        failByDrop=False,
    )
    return factory


@dataclass(frozen=True)
class SessionOptions:
    """What every WebSocket session is built with.

    :ivar subprotocol: the negotiated subprotocol ("" when the client named none).
    :ivar on_closed: called with the session protocol once it is gone.
    """

    subprotocol: str
    clock: IReactorTime
    idle_timeout: float | None
    on_closed: Callable[[object], None]


class SessionProtocol(WebSocketServerProtocol):
    """What every stream session over WebSocket shares: the negotiated
    subprotocol, back-pressure through the TCP transport, the idle timer.

    While the client does not read what we send, we do not read what it
    sends either (its pings would queue pongs, its input our answers)."""

    def __init__(self, options: SessionOptions) -> None:
        super().__init__()
        self.subprotocol = options.subprotocol
        self._clock = options.clock
        self._idle_timeout = options.idle_timeout
        self._on_closed = options.on_closed
        self.producers = ProducerFanout()
        self.reading: ReadPauser | None = None
        self._idle: IdleTimer | None = None
        self.closing = False
        self._gone = False
        self._registered = False

    def onConnect(self, request):
        return self.subprotocol or None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.reading = ReadPauser(self.transport, self._clock, self.abort, self._probe_ping)
        self.producers.add(PauseReadingProducer(lambda: self.reading, OUTPUT_FULL))
        self.transport.registerProducer(self.producers, True)
        self._registered = True

    def onOpen(self) -> None:
        self._idle = IdleTimer(self._clock, self._idle_timeout, self._idle_expired)
        self.session_opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._idle is not None:
            self._idle.touch()
        if not self.closing:
            self.message_received(payload, isBinary)

    def onPing(self, payload: bytes) -> None:
        # The client's keepalive pings (client-go: every 5 s) keep a quiet
        # but live session from idling out, as SPDY pings do; autobahn
        # answers them with the pong the client's read deadline waits for.
        if self._idle is not None:
            self._idle.touch()
        super().onPing(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        if self._gone:
            return
        self._gone = True
        if self._idle is not None:
            self._idle.stop()
        if self.reading is not None:
            self.reading.stop()
        self.session_closed()
        self._on_closed(self)

    def send(self, payload: bytes, binary: bool) -> None:
        if self.closing or self._gone:
            return
        if self._idle is not None:
            self._idle.touch()
        self.sendMessage(payload, isBinary=binary)

    def close_normally(self) -> None:
        """End the session with a Close 1000 after everything written."""
        if self.closing or self._gone:
            return
        self.closing = True
        if self.reading is not None:
            self.reading.clear()
            if self.producers.paused:
                self.reading.pause(OUTPUT_FULL)
        self.sendClose(NORMAL_CLOSURE)

    def unregisterProducer(self) -> None:
        # autobahn unregisters before it closes the TCP connection (a
        # transport whose producer is paused when its buffer drains resumes
        # it instead of closing); only once, and only what we registered.
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()

    def dropConnection(self, abort: bool = False) -> None:
        # Once a closing handshake has completed, autobahn's server side
        # aborts the TCP connection (a reset). Clients such as the kubelet's
        # stream proxy report a reset as an error, so a clean close ends
        # with a graceful FIN after the close frame has been written.
        super().dropConnection(abort=abort and not self.wasClean)

    def fail(self, code: int, reason: str) -> None:
        """Close with a protocol-level status (1002, 1003, ...), which
        ``sendClose`` reserves to autobahn."""
        if not self.closing and not self._gone:
            self.closing = True
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)

    def abort(self) -> None:
        if not self._gone:
            self.transport.abortConnection()

    def _probe_ping(self) -> None:
        """While we are not reading: a live client answers the ping, a dead
        one's socket answers with a reset (see ReadPauser)."""
        if not self._gone and self.state == self.STATE_OPEN and not self.producers.paused:
            self.sendPing()

    def _idle_expired(self) -> None:
        log.info("WebSocket stream session idle, closing")
        self.abort()

    # subclass hooks
    def session_opened(self) -> None: ...

    def message_received(self, payload: bytes, is_binary: bool) -> None: ...

    def session_closed(self) -> None: ...


class CommandProtocol(SessionProtocol):
    """Exec or attach over a channel protocol (the session's CommandWire)."""

    def __init__(self, options: SessionOptions, backend: Backend, request: ExecRequest | AttachRequest) -> None:
        super().__init__(options)
        self.channel_protocol = COMMAND_PROTOCOLS[options.subprotocol]
        self.session = CommandSession(backend, request, self.channel_protocol.version, self)
        self._resize = ResizeDecoder()
        r = request
        self._outputs = {STDOUT: r.stdout, STDERR: r.stderr and not r.tty, ERROR: True}

    def _write(self, channel: int, data: bytes) -> None:
        self.send(*encode_frame(channel, data, self.channel_protocol.base64))

    def session_opened(self) -> None:
        # Readiness signal: one empty frame on the lowest enabled output channel.
        self._write(min(ch for ch, enabled in self._outputs.items() if enabled), b"")
        self.session.start()

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        try:
            channel, data = decode_frame(payload, is_binary, self.channel_protocol.base64)
        except FramingError as e:
            log.info("dropping a bad WebSocket frame: {error}", error=e)
            return
        if channel == CLOSE_SIGNAL and self.channel_protocol.version >= 5:
            if len(data) != 1:
                self.fail(1002, "bad close signal")
                return
            if data[0] == STDIN:
                self.session.stdin_closed()
            return
        if not data:
            return
        if channel == STDIN:
            self.session.stdin_received(data)
        elif channel == RESIZE:
            for width, height in self._resize.feed(data):
                self.session.resize(width, height)

    def session_closed(self) -> None:
        self.session.client_gone()

    # CommandWire
    def write_stdout(self, data: bytes) -> None:
        if self._outputs[STDOUT]:
            self._write(STDOUT, data)

    def write_stderr(self, data: bytes) -> None:
        if self._outputs[STDERR]:
            self._write(STDERR, data)

    def end(self, status: bytes | None) -> None:
        if status:
            self._write(ERROR, status)
        self.close_normally()

    def add_producer(self, producer: IPushProducer) -> None:
        self.producers.add(producer)

    def remove_producer(self, producer: IPushProducer) -> None:
        self.producers.remove(producer)

    def pause_input(self) -> None:
        if self.reading is not None:
            self.reading.pause(self)

    def resume_input(self) -> None:
        if self.reading is not None:
            self.reading.resume(self)


class _ChannelPair:
    """One forwarded port over the legacy WebSocket protocol (ForwardSide)."""

    def __init__(self, proto: PortForwardProtocol, index: int, port: int) -> None:
        self.proto = proto
        self.data_channel = 2 * index
        self.error_channel = 2 * index + 1
        self.port = port
        self.conn: ForwardedConnection | None = None
        self.done = False

    def deliver(self, data: bytes) -> None:
        self.proto.write(self.data_channel, data)

    def deliver_end(self) -> None:
        pass  # no half-close in this protocol; the session ends when all ports did

    def connect_failed(self, message: str) -> None:
        self.proto.write(self.error_channel, message.encode())
        self._finish()

    def broken(self) -> None:
        self._finish()

    def closed(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.proto.pair_done()


class PortForwardProtocol(SessionProtocol):
    """Legacy WebSocket port-forward: per requested port *i*, channel 2i
    carries data and 2i+1 errors; each starts with the port number."""

    def __init__(self, options: SessionOptions, backend: Backend, sandbox_id: str, ports: tuple[int, ...]) -> None:
        super().__init__(options)
        self.channel_protocol = PORTFORWARD_PROTOCOLS[options.subprotocol]
        self._backend = backend
        self._sandbox_id = sandbox_id
        self.pairs = [_ChannelPair(self, i, port) for i, port in enumerate(ports)]

    def write(self, channel: int, data: bytes) -> None:
        self.send(*encode_frame(channel, data, self.channel_protocol.base64))

    def session_opened(self) -> None:
        for pair in self.pairs:
            self.write(pair.data_channel, port_prefix(pair.port))
            self.write(pair.error_channel, port_prefix(pair.port))
        for pair in self.pairs:
            conn = pair.conn = ForwardedConnection(pair, lambda: self.reading, self.producers.add, self.producers.remove)
            try:
                d = self._backend.port_forward(self._sandbox_id, pair.port, conn)
            except Exception:  # noqa: BLE001 - reported like a failed connection
                pair.connect_failed(forward_error_message(pair.port, self._sandbox_id, Failure()))
                continue
            d.addErrback(self._connect_failed, pair)

    def _connect_failed(self, failure: Failure, pair: _ChannelPair) -> None:
        if pair.conn is not None and not pair.conn.connected and not self._gone:
            pair.connect_failed(forward_error_message(pair.port, self._sandbox_id, failure))

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        try:
            channel, data = decode_frame(payload, is_binary, self.channel_protocol.base64)
        except FramingError:
            return
        index, is_error = divmod(channel, 2)
        if is_error or index >= len(self.pairs) or not data:
            return
        conn = self.pairs[index].conn
        if conn is not None:
            conn.client_data(data)

    def pair_done(self) -> None:
        if all(p.done for p in self.pairs):
            self.close_normally()

    def session_closed(self) -> None:
        for pair in self.pairs:
            if pair.conn is not None:
                pair.conn.abort()


class _TunnelTransport:
    """The transport a tunnelled SPDY connection writes to: every write is
    one binary WebSocket message; pausing it pauses reading the real socket
    (through the WebSocket session's ReadPauser, which has its own reasons)."""

    def __init__(self, ws: TunnelProtocol) -> None:
        self._ws = ws

    def write(self, data: bytes) -> None:
        self._ws.send(data, True)

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        self._ws.close_normally()

    def abortConnection(self) -> None:
        self._ws.abort()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._ws.producers.add(producer)

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        if self._ws.reading is not None:
            self._ws.reading.pause(self)

    def resumeProducing(self) -> None:
        if self._ws.reading is not None:
            self._ws.reading.resume(self)

    def getHandle(self):
        return self._ws.transport.getHandle()

    def getPeer(self):
        return self._ws.transport.getPeer()

    def getHost(self):
        return self._ws.transport.getHost()


class TunnelProtocol(SessionProtocol):
    """``SPDY/3.1+portforward.k8s.io``: binary messages carry an opaque byte
    stream of SPDY frames, served like a SPDY port-forward connection."""

    def __init__(
        self,
        options: SessionOptions,
        spdy_handler_factory: Callable[[SpdyConnection], SpdyHandler],
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        # The tunnelled SPDY connection keeps the idle timer.
        super().__init__(SessionOptions(options.subprotocol, options.clock, None, options.on_closed))
        self.spdy = SpdyConnection(spdy_handler_factory, options.clock, options.idle_timeout, max_streams=max_streams)

    def session_opened(self) -> None:
        self.spdy.makeConnection(_TunnelTransport(self))

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        if not is_binary:
            self.fail(1003, "text message in a SPDY tunnel")
            return
        self.spdy.dataReceived(payload)

    def session_closed(self) -> None:
        if self.spdy.transport is not None:
            self.spdy.connectionLost(Failure(ConnectionDone()))
