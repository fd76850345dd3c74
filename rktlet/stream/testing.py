"""Test doubles for the streaming server, in the spirit of
``twisted.internet.testing``: an in-memory :class:`FakeBackend` whose
processes the test drives by hand, and :class:`SpdyClient`, the client half
of SPDY framing (no I/O) to talk to a server through a ``StringTransport``
or a socket.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rktlet.errors import NotFound
from rktlet.stream import spdyframes as f
from rktlet.stream.server import StreamServer
from rktlet.stream.session import AttachRequest, ExecRequest, Terminal
from rktlet.stream.tokens import TokenCache


class MemoryProcess:
    """A :class:`~rktlet.stream.session.ProcessIO` that records what the
    session asks and lets the test produce output and the exit."""

    def __init__(self, request: ExecRequest | AttachRequest, terminal: Terminal) -> None:
        self.request = request
        self.terminal = terminal
        self.done: Deferred = Deferred()
        self.stdin_data = bytearray()
        self.stdin_closed = False
        self.sizes: list[tuple[int, int]] = []
        self.terminated = False

    # ProcessIO
    def stdin(self, data: bytes) -> None:
        self.stdin_data += data

    def close_stdin(self) -> None:
        self.stdin_closed = True

    def resize(self, width: int, height: int) -> None:
        self.sizes.append((width, height))

    def terminate(self) -> None:
        self.terminated = True

    # driven by the test
    def write_stdout(self, data: bytes) -> None:
        self.terminal.stdout(data)

    def write_stderr(self, data: bytes) -> None:
        self.terminal.stderr(data)

    def exit(self, code: int | None) -> None:
        self.done.callback(code)


class RecordingProducer:
    """A push producer that only remembers whether it was paused."""

    state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        pass


@dataclass
class PortForwardCall:
    sandbox_id: str
    port: int
    protocol: IProtocol
    result: Deferred = field(default_factory=Deferred)


class FakeBackend:
    """A :class:`~rktlet.stream.session.Backend` kept in memory.

    :ivar processes: every exec/attach started, in order.
    :ivar forwards: every port_forward call; the test connects the protocol
        (``call.protocol.makeConnection(transport)``) and fires
        ``call.result``, or fails it.
    :ivar missing: container/sandbox ids that ``validate`` and
        ``exec``/``attach`` do not know.
    :ivar start_error: raised by exec/attach when set.
    """

    def __init__(self) -> None:
        self.processes: list[MemoryProcess] = []
        self.forwards: list[PortForwardCall] = []
        self.missing: set[str] = set()
        self.start_error: Exception | None = None

    def exec(self, request: ExecRequest, terminal: Terminal) -> MemoryProcess:
        return self._start(request, terminal)

    def attach(self, request: AttachRequest, terminal: Terminal) -> MemoryProcess:
        return self._start(request, terminal)

    def _start(self, request: Any, terminal: Terminal) -> MemoryProcess:
        if self.start_error is not None:
            raise self.start_error
        if request.container_id in self.missing:
            raise NotFound(f"container {request.container_id} not found")
        process = MemoryProcess(request, terminal)
        self.processes.append(process)
        return process

    def port_forward(self, sandbox_id: str, port: int, protocol: IProtocol) -> Deferred:
        call = PortForwardCall(sandbox_id, port, protocol)
        self.forwards.append(call)
        return call.result

    def validate(self, request: Any) -> None:
        target = getattr(request, "container_id", None) or getattr(request, "sandbox_id", None)
        if target in self.missing:
            raise NotFound(f"{target} not found")


def upgrade_request(path: str, protocols: list[str], host: str = "127.0.0.1", method: str = "POST") -> bytes:
    """The HTTP request a client-go SPDY dialer sends."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        *(f"X-Stream-Protocol-Version: {p}" for p in protocols),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class SpdyClient:
    """The client half of a SPDY connection, as bytes in and frames out.

    :ivar streams: data received per stream id.
    :ivar finished: stream ids the server half-closed.
    :ivar reset: stream id -> RST status from the server.
    :ivar replied: stream ids the server replied to.
    :ivar frames: every frame received, in order.
    """

    def __init__(self) -> None:
        self._writer = f.FrameWriter()
        self._reader = f.FrameReader()
        self._next_id = 1
        self.streams: dict[int, bytearray] = {}
        self.finished: set[int] = set()
        self.reset: dict[int, int] = {}
        self.replied: set[int] = set()
        self.frames: list[f.Frame] = []

    def open(self, headers: dict[str, str], fin: bool = False) -> tuple[int, bytes]:
        """A new stream: (its id, the SYN_STREAM bytes)."""
        sid = self._next_id
        self._next_id += 2
        self.streams[sid] = bytearray()
        return sid, self._writer.encode(f.SynStream(sid, headers, flags=f.FLAG_FIN if fin else 0))

    def data(self, sid: int, data: bytes, fin: bool = False) -> bytes:
        return self._writer.encode(f.Data(sid, data, f.FLAG_FIN if fin else 0))

    def encode(self, frame: f.Frame) -> bytes:
        return self._writer.encode(frame)

    def receive(self, data: bytes) -> list[f.Frame]:
        """Parse server bytes, updating the per-stream state."""
        frames = self._reader.feed(data)
        for frame in frames:
            self.frames.append(frame)
            match frame:
                case f.SynReply(sid):
                    self.replied.add(sid)
                case f.Data(sid, payload):
                    self.streams.setdefault(sid, bytearray()).extend(payload)
                    if frame.fin:
                        self.finished.add(sid)
                case f.RstStream(sid, status):
                    self.reset[sid] = status
        return frames

    def ended(self, sid: int) -> bool:
        """Whether the server is done sending on *sid* (FIN or RST)."""
        return sid in self.finished or sid in self.reset


ALL_COMMAND_VERSIONS = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]


class HalfCloseableTransport(StringTransport):
    """A StringTransport that records a write-side half-close and an abort
    (a TCP reset, where a real transport would send one)."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class MemoryServer:
    """A :class:`~rktlet.stream.server.StreamServer` with a fake backend and
    one client connection to it, all in memory, plus a SPDY client.

    Keyword arguments go to the StreamServer.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.backend = FakeBackend()
        self.server = StreamServer(self.clock, self.backend, TokenCache(self.clock.seconds), **kwargs)
        self.site = self.server.site()
        self.connect()

    def connect(self) -> None:
        """A new client connection (the old one is left as it is)."""
        self.transport = HalfCloseableTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto = self.site.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self.client = SpdyClient()
        self.head = b""

    def url_path(self, request: Any) -> str:
        kind, token = self.server.store(request)
        return f"/{kind}/{token}"

    def send_http(self, raw: bytes) -> bytes:
        """Bytes in; everything the server wrote since, out."""
        self.proto.dataReceived(raw)
        out = self.transport.value()
        self.transport.clear()
        return out

    def upgrade(self, request: Any, protocols: list[str] = ALL_COMMAND_VERSIONS, extra: bytes = b"") -> bytes:
        """Store *request*, upgrade to SPDY for it; the 101 head."""
        out = self.send_http(upgrade_request(self.url_path(request), protocols) + extra)
        self.head, _, rest = out.partition(b"\r\n\r\n")
        if not self.head.startswith(b"HTTP/1.1 101 "):
            raise AssertionError(f"no upgrade: {out!r}")
        self.client.receive(rest)
        return self.head

    def send(self, data: bytes) -> list[f.Frame]:
        self.proto.dataReceived(data)
        return self.pull()

    def pull(self) -> list[f.Frame]:
        out = self.transport.value()
        self.transport.clear()
        return self.client.receive(out)

    def open(self, streamtype: str, **headers: str) -> int:
        """Open a stream and check it was replied to; its id."""
        sid, syn = self.client.open({"streamtype": streamtype, **headers})
        frames = self.send(syn)
        if f.SynReply(sid) not in frames:
            raise AssertionError(f"stream {streamtype} not replied: {frames}")
        return sid

    def open_all(self, *types: str) -> dict[str, int]:
        return {t: self.open(t) for t in types}

    def status(self, sid: int) -> dict:
        return json.loads(bytes(self.client.streams[sid]))

    def lose(self) -> None:
        """The client connection goes away."""
        self.transport.loseConnection()
        self.proto.connectionLost(Failure(ConnectionLost("gone")))


# -- WebSocket, client side ------------------------------------------------------

WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 1, 2, 8, 9, 10


def websocket_request(path: str, protocols: list[str] | None, key: str = "dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols is not None:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def websocket_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final client frame (masked, as RFC 6455 requires of clients)."""
    mask = mask if mask is not None else os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parse_websocket_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Server frames (unmasked) in *data*: ([(opcode, payload)], leftover)."""
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n, at = b1 & 0x7F, pos + 2
        if n == 126:
            if len(data) - at < 2:
                break
            (n,) = struct.unpack_from(">H", data, at)
            at += 2
        elif n == 127:
            if len(data) - at < 8:
                break
            (n,) = struct.unpack_from(">Q", data, at)
            at += 8
        if len(data) - at < n:
            break
        frames.append((b0 & 0x0F, data[at : at + n]))
        pos = at + n
    return frames, data[pos:]
