"""WebSocket channel protocols: framing, base64 variants, v5 close, and the
sessions (exec/attach, legacy port-forward, SPDY tunnel) served from memory."""

from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from rktlet.stream import spdyframes as f
from rktlet.stream.session import AttachRequest, ExecRequest, PortForwardRequest
from rktlet.stream.testing import (
    WS_BINARY,
    WS_CLOSE,
    WS_PING,
    WS_PONG,
    WS_TEXT,
    HalfCloseableTransport,
    MemoryServer,
    RecordingProducer,
    SpdyClient,
    parse_websocket_frames,
    websocket_frame,
    websocket_request,
)
from rktlet.stream.websocket import FramingError, decode_frame, encode_frame, port_prefix

# -- framing ---------------------------------------------------------------------


@pytest.mark.parametrize("channel", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 5])
def test_binary_frames_round_trip(channel, data):
    payload, binary = encode_frame(channel, data, use_base64=False)
    assert binary and payload == bytes([channel]) + data
    assert decode_frame(payload, True, False) == (channel, data)


@pytest.mark.parametrize("channel", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("data", [b"", b"x", b"\xff\x00\xfe", bytes(range(256))])
def test_base64_frames_are_text_with_a_digit_and_padded_base64(channel, data):
    payload, binary = encode_frame(channel, data, use_base64=True)
    assert not binary
    assert payload == str(channel).encode() + base64.b64encode(data)
    assert decode_frame(payload, False, True) == (channel, data)


def test_known_base64_frame():
    assert encode_frame(1, b"hi\n", True) == (b"1aGkK", False)
    assert decode_frame(b"0aGkK", False, True) == (0, b"hi\n")


@pytest.mark.parametrize("payload", [b"", b"x" + base64.b64encode(b"a"), b"1***", b"1aGk"])
def test_bad_base64_frames(payload):
    with pytest.raises(FramingError):
        decode_frame(payload, False, True)


def test_empty_binary_frame_is_an_error_and_binary_on_base64_protocol_is_raw():
    with pytest.raises(FramingError):
        decode_frame(b"", True, False)
    assert decode_frame(b"\x00abc", True, True) == (0, b"abc")


def test_port_prefix_is_little_endian():
    assert port_prefix(8080) == b"\x90\x1f"
    assert port_prefix(1) == b"\x01\x00"


# -- sessions ---------------------------------------------------------------------


class WS:
    """A WebSocket client connection to a MemoryServer."""

    def __init__(self, h: MemoryServer, request, protocols, path: str | None = None):
        self.h = h
        self.pending = b""
        out = h.send_http(websocket_request(path or h.url_path(request), protocols))
        self.head, _, rest = out.partition(b"\r\n\r\n")
        self.frames: list[tuple[int, bytes]] = []
        self._take(rest)

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.decode().partition(": ")
            if k.lower() == name.lower():
                return v
        return None

    def _take(self, data: bytes) -> None:
        frames, self.pending = parse_websocket_frames(self.pending + data)
        self.frames += frames

    def send(self, opcode: int, payload: bytes) -> None:
        self.h.proto.dataReceived(websocket_frame(opcode, payload))
        self.pull()

    def pull(self) -> list[tuple[int, bytes]]:
        before = len(self.frames)
        self._take(self.h.transport.value())
        self.h.transport.clear()
        return self.frames[before:]

    def messages(self) -> list[tuple[int, bytes]]:
        return [(op, p) for op, p in self.frames if op in (WS_TEXT, WS_BINARY)]


def test_v5_exec_session():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("sh",), stdin=True), ["v5.channel.k8s.io"])
    assert ws.status == 101
    assert ws.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ws.header("Sec-WebSocket-Protocol") == "v5.channel.k8s.io"
    assert ws.messages() == [(WS_BINARY, b"\x01")]  # readiness on stdout
    (proc,) = h.backend.processes
    ws.send(WS_BINARY, b"\x00hello")
    ws.send(WS_BINARY, b'\x04{"Width":81,')
    ws.send(WS_BINARY, b'\x04"Height":25}')
    ws.send(WS_BINARY, b"\x09ignored")  # unknown channel
    ws.send(WS_BINARY, b"\xff\x00")  # close stdin
    assert proc.stdin_data == b"hello" and proc.stdin_closed
    assert proc.sizes == []  # not a tty: resizes mean nothing
    proc.write_stdout(b"out")
    proc.write_stderr(b"err")
    proc.exit(3)
    ws.pull()
    messages = ws.messages()
    assert messages[1:3] == [(WS_BINARY, b"\x01out"), (WS_BINARY, b"\x02err")]
    status = json.loads(messages[3][1][1:])
    assert messages[3][1][0] == 3
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert ws.frames[-1][0] == WS_CLOSE and ws.frames[-1][1][:2] == b"\x03\xe8"  # 1000
    ws.send(WS_CLOSE, b"\x03\xe8")
    assert h.transport.disconnecting
    # A completed closing handshake ends with a graceful close, not a reset
    # (the kubelet's proxy reports a reset as an error).
    assert not h.transport.aborted
    assert not proc.terminated


def test_tty_resizes_over_websocket_and_unrequested_stdin_is_dropped():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("sh",), tty=True, stderr=False), ["v5.channel.k8s.io"])
    proc = h.backend.processes[0]
    ws.send(WS_BINARY, b'\x04{"Width":81,')
    ws.send(WS_BINARY, b'\x04"Height":25}{"Width":90,"Height":30}')
    ws.send(WS_BINARY, b"\x00not asked for")
    ws.send(WS_BINARY, b"\xff\x00")
    assert proc.sizes == [(81, 25), (90, 30)]
    assert proc.stdin_data == b"" and not proc.stdin_closed


def test_v4_base64_session_uses_text_frames():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("sh",), stdin=True), ["v4.base64.channel.k8s.io", "v4.channel.k8s.io"])
    assert ws.header("Sec-WebSocket-Protocol") == "v4.base64.channel.k8s.io"
    assert ws.messages() == [(WS_TEXT, b"1")]
    proc = h.backend.processes[0]
    ws.send(WS_TEXT, b"0" + base64.b64encode(b"in"))
    assert proc.stdin_data == b"in"
    ws.send(WS_BINARY, b"\xff\x00")  # no close signal before v5
    assert not proc.stdin_closed
    proc.write_stdout(b"\x00\xff")
    proc.exit(0)
    ws.pull()
    messages = ws.messages()
    assert messages[1] == (WS_TEXT, b"1" + base64.b64encode(b"\x00\xff"))
    assert messages[2][0] == WS_TEXT and messages[2][1][:1] == b"3"
    assert json.loads(base64.b64decode(messages[2][1][1:])) == {"metadata": {}, "status": "Success"}


def test_v1_channel_protocol_writes_plain_text_errors_only():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("x",)), ["channel.k8s.io"])
    h.backend.processes[0].exit(2)
    ws.pull()
    assert ws.messages()[-1] == (WS_BINARY, b"\x03command terminated with non-zero exit code: exit status 2")
    h2 = MemoryServer()
    ws2 = WS(h2, ExecRequest("c", ("x",)), ["base64.channel.k8s.io"])
    h2.backend.processes[0].exit(0)
    ws2.pull()
    assert ws2.messages() == [(WS_TEXT, b"1")]  # readiness only


def test_no_subprotocol_header_means_the_binary_v1_protocol():
    h = MemoryServer()
    ws = WS(h, AttachRequest("c", stdout=False, stderr=True), None)
    assert ws.status == 101 and ws.header("Sec-WebSocket-Protocol") is None
    assert ws.messages() == [(WS_BINARY, b"\x02")]  # readiness on stderr, the lowest enabled


def test_unsupported_subprotocols_are_refused_with_403():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("x",)), ["v6.channel.k8s.io"])
    assert ws.status == 403
    assert h.backend.processes == []


def test_websocket_upgrade_must_be_a_get():
    h = MemoryServer()
    path = h.url_path(ExecRequest("c", ("x",)))
    out = h.send_http(websocket_request(path, ["v5.channel.k8s.io"]).replace(b"GET ", b"POST ", 1))
    assert out.startswith(b"HTTP/1.1 400 ")


def test_pings_are_answered():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("x",)), ["v5.channel.k8s.io"])
    ws.send(WS_PING, b"keepalive")
    assert (WS_PONG, b"keepalive") in ws.frames


def test_client_going_away_terminates_the_process():
    h = MemoryServer()
    WS(h, ExecRequest("c", ("x",)), ["v5.channel.k8s.io"])
    h.lose()
    assert h.backend.processes[0].terminated


def test_bad_v5_close_signal_fails_the_connection():
    h = MemoryServer()
    ws = WS(h, ExecRequest("c", ("x",), stdin=True), ["v5.channel.k8s.io"])
    ws.send(WS_BINARY, b"\xff\x00\x01")
    assert ws.frames[-1][0] == WS_CLOSE and ws.frames[-1][1][:2] == (1002).to_bytes(2, "big")


def test_output_back_pressure_over_websocket():
    h = MemoryServer()
    WS(h, ExecRequest("c", ("cat",), stdin=True), ["v5.channel.k8s.io"])
    proc = h.backend.processes[0]
    producer = RecordingProducer()
    proc.terminal.set_output_producer(producer)
    h.transport.producer.pauseProducing()
    assert producer.state == "paused"
    assert h.transport.producerState == "paused"  # the client does not read: neither do we
    proc.terminal.pause_input()
    h.transport.producer.resumeProducing()
    assert producer.state == "producing"
    assert h.transport.producerState == "paused"  # stdin is still full
    proc.terminal.resume_input()
    assert h.transport.producerState == "producing"


# -- port-forward over WebSocket ---------------------------------------------------


def test_legacy_port_forward_channels_start_with_the_port():
    h = MemoryServer()
    ws = WS(h, PortForwardRequest("pod", (8080, 9090, 7070)), ["v4.channel.k8s.io"])
    assert ws.header("Sec-WebSocket-Protocol") == "v4.channel.k8s.io"
    assert ws.messages() == [
        (WS_BINARY, b"\x00\x90\x1f"),
        (WS_BINARY, b"\x01\x90\x1f"),
        (WS_BINARY, b"\x02\x82\x23"),
        (WS_BINARY, b"\x03\x82\x23"),
        (WS_BINARY, b"\x04\x9e\x1b"),
        (WS_BINARY, b"\x05\x9e\x1b"),
    ]
    assert [c.port for c in h.backend.forwards] == [8080, 9090, 7070]
    pods = []
    for call in h.backend.forwards[:2]:
        pod = HalfCloseableTransport()
        call.protocol.makeConnection(pod)
        pods.append(pod)
    ws.send(WS_BINARY, b"\x02to 9090")
    assert pods[1].value() == b"to 9090"
    h.backend.forwards[0].protocol.dataReceived(b"from 8080")
    ws.pull()
    assert ws.messages()[-1] == (WS_BINARY, b"\x00from 8080")
    h.backend.forwards[2].result.errback(Failure(OSError("refused")))
    ws.pull()
    assert ws.messages()[-1] == (WS_BINARY, b"\x05error forwarding port 7070 to pod pod: refused")
    h.backend.forwards[0].protocol.connectionLost(Failure(ConnectionDone()))
    assert ws.pull() == []
    h.backend.forwards[1].protocol.connectionLost(Failure(ConnectionDone()))
    assert ws.pull()[-1][0] == WS_CLOSE  # every port done: session over


def test_legacy_port_forward_base64_and_query_ports():
    h = MemoryServer()
    path = h.url_path(PortForwardRequest("pod")) + "?port=80"
    ws = WS(h, None, ["v4.base64.channel.k8s.io"], path=path)
    assert ws.messages()[0] == (WS_TEXT, b"0" + base64.b64encode(b"\x50\x00"))
    assert h.backend.forwards[0].port == 80


def test_legacy_port_forward_needs_ports():
    h = MemoryServer()
    ws = WS(h, PortForwardRequest("pod"), ["v4.channel.k8s.io"])
    assert ws.status == 400


def test_spdy_tunnel_over_websocket():
    h = MemoryServer()
    ws = WS(h, PortForwardRequest("pod"), ["SPDY/3.1+portforward.k8s.io"])
    assert ws.header("Sec-WebSocket-Protocol") == "SPDY/3.1+portforward.k8s.io"
    client = SpdyClient()
    err_id, err = client.open({"streamtype": "error", "port": "80", "requestid": "0"}, fin=True)
    data_id, data = client.open({"streamtype": "data", "port": "80", "requestid": "0"})
    wire = err + data + client.data(data_id, b"ping")
    # message boundaries mean nothing in the tunnel
    for piece in (wire[:5], wire[5:17], wire[17:]):
        ws.send(WS_BINARY, piece)
    pod = HalfCloseableTransport()
    h.backend.forwards[0].protocol.makeConnection(pod)
    assert pod.value() == b"ping"
    h.backend.forwards[0].protocol.dataReceived(b"pong")
    ws.pull()
    assert all(op == WS_BINARY for op, _ in ws.messages())
    client.receive(b"".join(p for _, p in ws.messages()))
    assert {err_id, data_id} <= client.replied
    assert client.streams[data_id] == b"pong"
    ws.send(WS_BINARY, client.encode(f.Ping(1)))
    assert client.receive(ws.messages()[-1][1]) == [f.Ping(1)]
