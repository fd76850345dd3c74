"""What a client can make the streaming server hold: request bodies and
heads before the token is checked, and per-connection limits of SPDY and
WebSocket sessions (issue 12), served from memory."""

from __future__ import annotations

from twisted.logger import capturedLogs

from rktlet.stream import spdyframes as f
from rktlet.stream.httpchannel import MAX_HEAD_BYTES, MAX_HEADERS
from rktlet.stream.session import ExecRequest, PortForwardRequest
from rktlet.stream.spdy import SHUTDOWN_GRACE
from rktlet.stream.testing import (
    ALL_COMMAND_VERSIONS,
    WS_BINARY,
    MemoryServer,
    SpdyClient,
    parse_websocket_frames,
    upgrade_request,
    websocket_frame,
    websocket_request,
)


def http_status(out: bytes) -> int:
    return int(out.split(b" ", 2)[1])


def head(path: str, *headers: str, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def channel_requests(h: MemoryServer) -> list:
    return h.proto._channel.requests


# -- request bodies ---------------------------------------------------------------------------


def test_a_body_is_refused_from_its_length_before_it_is_read():
    h = MemoryServer()
    out = h.send_http(head("/exec/AAAAAAAA", "Content-Length: 67108864") + b"x" * 100_000)
    assert http_status(out) == 413
    assert b"Connection: close" in out
    assert h.transport.disconnecting
    # Nothing of the body went anywhere: no content file was even made.
    assert getattr(channel_requests(h)[-1], "content", None) is None


def test_a_chunked_body_is_refused_before_it_is_read():
    h = MemoryServer()
    out = h.send_http(head("/exec/AAAAAAAA", "Transfer-Encoding: chunked") + b"100000\r\n" + b"x" * 100_000)
    assert http_status(out) == 413
    assert h.transport.disconnecting
    assert getattr(channel_requests(h)[-1], "content", None) is None
    assert h.send_http(b"x" * 100_000) == b""


def test_a_body_is_refused_even_with_a_good_token_which_stays_unused():
    h = MemoryServer()
    path = h.url_path(ExecRequest("c", ("ls",)))
    assert http_status(h.send_http(head(path, "Content-Length: 1") + b"x")) == 413
    assert len(h.server.tokens) == 1


def test_an_empty_body_is_what_clients_send_and_works():
    h = MemoryServer()
    h.upgrade(ExecRequest("c", ("ls",), stdout=True, stderr=False))  # upgrade_request says Content-Length: 0
    h.connect()
    assert http_status(h.send_http(head("/exec/AAAAAAAA", "Transfer-Encoding: identity"))) == 404


# -- request heads --------------------------------------------------------------------------


def test_too_many_headers_are_400():
    h = MemoryServer()
    out = h.send_http(head("/exec/AAAAAAAA", *(f"X-H{i}: v" for i in range(MAX_HEADERS + 1))))
    assert http_status(out) == 400
    assert h.transport.disconnecting
    h.connect()
    out = h.send_http(head("/exec/AAAAAAAA", *(f"X-H{i}: v" for i in range(MAX_HEADERS - 5))))
    assert http_status(out) == 404


def test_a_head_too_large_is_refused():
    h = MemoryServer()
    h.send_http(head("/exec/AAAAAAAA", *(f"X-H{i}: {'v' * 1000}" for i in range(MAX_HEAD_BYTES // 1000 + 1))))
    assert h.transport.disconnecting
    h.connect()
    h.send_http(b"GET /" + b"a" * (MAX_HEAD_BYTES + 10))  # one endless line
    assert h.transport.disconnecting


def test_a_silent_connection_is_closed():
    h = MemoryServer()  # the default head timeout: 30 s
    h.clock.advance(29)
    assert not h.transport.disconnecting
    h.clock.advance(1)
    assert h.transport.disconnecting


def test_a_head_dribbled_byte_by_byte_is_cut_off():
    h = MemoryServer()
    with capturedLogs() as events:
        for byte in upgrade_request("/exec/AAAAAAAA", ALL_COMMAND_VERSIONS)[:40]:
            h.send_http(bytes([byte]))
            h.clock.advance(1)  # the idle timeout alone never fires
    assert h.transport.disconnecting
    assert any("sent no complete request" in (e.get("log_format") or "") for e in events)


def test_each_request_on_a_kept_alive_connection_gets_the_head_deadline():
    h = MemoryServer(head_timeout=30)
    h.clock.advance(20)
    assert http_status(h.send_http(upgrade_request("/exec/AAAAAAAA", ALL_COMMAND_VERSIONS))) == 404
    h.clock.advance(20)
    assert not h.transport.disconnecting  # a fresh 30 s for the next request
    h.send_http(b"POST /exec/AAAA")
    h.clock.advance(10)
    assert h.transport.disconnecting


def test_an_upgraded_connection_is_no_longer_under_the_head_deadline():
    h = MemoryServer(head_timeout=30)
    h.upgrade(ExecRequest("c", ("x",), stdout=True, stderr=False))
    h.open_all("error", "stdout")
    h.clock.advance(600)
    assert not h.transport.disconnecting


# -- SPDY -----------------------------------------------------------------------------------


def port_forward(**kwargs) -> MemoryServer:
    h = MemoryServer(**kwargs)
    h.upgrade(PortForwardRequest("pod-1"), ["portforward.k8s.io"])
    return h


def goaways(frames) -> list[f.GoAway]:
    return [fr for fr in frames if isinstance(fr, f.GoAway)]


def test_a_client_that_does_not_read_is_not_read_either():
    h = MemoryServer()
    h.upgrade(ExecRequest("c", ("cat",), stdin=True, stdout=True, stderr=False))
    h.open_all("error", "stdin", "stdout")
    h.transport.producer.pauseProducing()  # our send buffer is full
    assert h.transport.producerState == "paused"
    h.clock.advance(10)  # no probe pings pile up behind it either
    assert h.transport.value() == b""
    h.transport.producer.resumeProducing()
    assert h.transport.producerState == "producing"


def test_stdin_back_pressure_and_a_full_send_buffer_are_separate_reasons():
    h = MemoryServer()
    h.upgrade(ExecRequest("c", ("cat",), stdin=True, stdout=True, stderr=False))
    h.open_all("error", "stdin", "stdout")
    proc = h.backend.processes[0]
    h.transport.producer.pauseProducing()
    proc.terminal.pause_input()
    proc.terminal.resume_input()
    assert h.transport.producerState == "paused"
    h.transport.producer.resumeProducing()
    assert h.transport.producerState == "producing"


def test_a_finishing_session_still_does_not_read_a_client_that_does_not_read():
    h = MemoryServer()
    h.upgrade(ExecRequest("c", ("x",), stdout=True, stderr=False))
    h.open_all("error", "stdout")
    h.transport.producer.pauseProducing()
    h.backend.processes[0].exit(0)
    assert h.transport.producerState == "paused"
    h.transport.producer.resumeProducing()
    assert h.transport.producerState == "producing"


def test_streams_past_the_limit_end_the_connection_with_goaway():
    h = port_forward(max_streams=6)
    for i in range(3):
        h.open("error", port="80", requestid=str(i))
        h.open("data", port="80", requestid=str(i))
    assert h.transport.producerState == "producing" and not h.transport.disconnecting
    sid, syn = h.client.open({"streamtype": "error", "port": "80", "requestid": "9"})
    with capturedLogs() as events:
        frames = h.send(syn)
    (goaway,) = goaways(frames)
    assert goaway.status == f.GOAWAY_PROTOCOL_ERROR
    assert goaway.last_good_stream_id == sid - 2
    assert sid not in h.client.replied
    assert h.transport.disconnecting
    assert any("limit of streams per connection" in e.get("why", "") for e in events)
    # Nothing more is read or written.
    _, syn = h.client.open({"streamtype": "error", "port": "80", "requestid": "10"})
    assert h.send(syn + h.client.encode(f.Ping(1))) == []
    # A client that does not take the GOAWAY is cut off.
    h.clock.advance(SHUTDOWN_GRACE)
    assert h.transport.aborted


def test_closed_streams_do_not_count():
    h = port_forward(max_streams=4)
    for i in range(5):
        err = h.open("error", port="80", requestid=str(i))
        data = h.open("data", port="80", requestid=str(i))
        h.send(h.client.encode(f.RstStream(data, f.CANCEL)) + h.client.encode(f.RstStream(err, f.CANCEL)))
    assert not h.transport.disconnecting


def test_pending_port_forward_pairs_past_the_limit_end_the_connection():
    h = port_forward(max_pending_pairs=3)
    timers = len(h.clock.getDelayedCalls())
    for i in range(3):
        h.open("error", port="80", requestid=str(i))
    assert len(h.clock.getDelayedCalls()) == timers + 3
    # A pair made complete leaves room for another.
    h.open("data", port="80", requestid="0")
    h.open("error", port="80", requestid="3")
    assert not h.transport.disconnecting
    with capturedLogs() as events:
        sid, syn = h.client.open({"streamtype": "error", "port": "80", "requestid": "4"})
        frames = h.send(syn)
    assert goaways(frames) and sid not in h.client.replied
    assert h.transport.disconnecting
    assert any("limit of pending port-forward pairs" in e.get("why", "") for e in events)
    h.lose()
    assert len(h.clock.getDelayedCalls()) <= timers


def test_a_pending_pair_reset_by_the_client_stops_its_timer_and_frees_its_place():
    h = port_forward(max_pending_pairs=1)
    timers = len(h.clock.getDelayedCalls())
    data = h.open("data", port="80", requestid="0")
    assert len(h.clock.getDelayedCalls()) == timers + 1
    h.send(h.client.encode(f.RstStream(data, f.CANCEL)))
    assert len(h.clock.getDelayedCalls()) == timers
    h.open("error", port="80", requestid="1")
    assert not h.transport.disconnecting


# -- WebSocket ------------------------------------------------------------------------------


def test_websocket_port_forward_takes_a_bounded_number_of_ports():
    h = MemoryServer(max_pending_pairs=3)
    path = h.url_path(PortForwardRequest("pod")) + "?port=" + ",".join(str(p) for p in range(1, 5))
    out = h.send_http(websocket_request(path, ["v4.channel.k8s.io"]))
    assert http_status(out) == 400 and b"too many ports" in out
    assert h.backend.forwards == []
    h.connect()
    path = h.url_path(PortForwardRequest("pod", (1, 2, 3)))
    assert http_status(h.send_http(websocket_request(path, ["v4.channel.k8s.io"]))) == 101
    assert len(h.backend.forwards) == 3


def test_the_spdy_tunnel_has_the_spdy_limits():
    h = MemoryServer(max_pending_pairs=2)
    path = h.url_path(PortForwardRequest("pod"))
    out = h.send_http(websocket_request(path, ["SPDY/3.1+portforward.k8s.io"]))
    assert http_status(out) == 101
    client = SpdyClient()
    wire = b""
    for i in range(3):
        wire += client.open({"streamtype": "error", "port": "80", "requestid": str(i)}, fin=True)[1]
    h.proto.dataReceived(websocket_frame(WS_BINARY, wire))
    frames, _ = parse_websocket_frames(out.partition(b"\r\n\r\n")[2] + h.transport.value())
    received = client.receive(b"".join(p for op, p in frames if op == WS_BINARY))
    assert goaways(received)


def test_a_websocket_client_that_does_not_read_is_not_read_either():
    h = MemoryServer()
    path = h.url_path(PortForwardRequest("pod", (80,)))
    assert http_status(h.send_http(websocket_request(path, ["v4.channel.k8s.io"]))) == 101
    h.transport.producer.pauseProducing()
    assert h.transport.producerState == "paused"
    h.transport.producer.resumeProducing()
    assert h.transport.producerState == "producing"
