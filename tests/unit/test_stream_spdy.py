"""SPDY/3 framing and the server connection, in memory."""

from __future__ import annotations

import hashlib
import zlib

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from rktlet.stream import spdyframes as f
from rktlet.stream.spdy import MAX_DATA_CHUNK, SpdyConnection
from rktlet.stream.testing import SpdyClient


def test_dictionary_is_the_spdy3_dictionary():
    assert len(f.DICTIONARY) == 1423
    assert zlib.adler32(f.DICTIONARY) == 0xE3C6A7C2
    assert hashlib.sha256(f.DICTIONARY).hexdigest() == "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    assert f.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert f.DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


EVERY_FRAME = [
    f.SynStream(1, {"streamtype": "error", "port": "80"}),
    f.SynStream(3, {"a": "x\0y"}, associated_id=1, priority=7, slot=2, flags=f.FLAG_FIN | f.FLAG_UNIDIRECTIONAL),
    f.SynReply(1),
    f.SynReply(3, {"status": "ok"}, flags=f.FLAG_FIN),
    f.RstStream(5, f.CANCEL),
    f.Settings(((1, 4, 100), (0, 7, 65536)), flags=f.FLAG_CLEAR_SETTINGS),
    f.Settings(),
    f.Ping(1),
    f.Ping(0xFFFFFFFF),
    f.GoAway(9, f.GOAWAY_OK),
    f.GoAway(0, f.GOAWAY_INTERNAL_ERROR),
    f.HeadersFrame(7, {"x-more": "1"}, flags=f.FLAG_FIN),
    f.WindowUpdate(1, 65536),
    f.WindowUpdate(0, 1),
    f.Data(1, b"hello"),
    f.Data(3, b"", flags=f.FLAG_FIN),
    f.Data(0x7FFFFFFF, bytes(range(256)) * 300),
]


@pytest.mark.parametrize("frame", EVERY_FRAME, ids=lambda fr: type(fr).__name__)
def test_every_frame_type_round_trips(frame):
    assert f.FrameReader().feed(f.FrameWriter().encode(frame)) == [frame]


def test_all_frames_round_trip_through_one_compression_context():
    writer, reader = f.FrameWriter(), f.FrameReader()
    data = b"".join(writer.encode(fr) for fr in EVERY_FRAME)
    assert reader.feed(data) == EVERY_FRAME


# Bytes produced by moby/spdystream's Go framer (streaming reference, section 2.1).
GO_SYN_STREAM = bytes.fromhex(
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff"
)
GO_SYN_REPLY_FIRST = bytes.fromhex("800300020000001400000001" "78f9e3c6a7c2" "6260606000000000ffff")
GO_SYN_REPLY_LATER = bytes.fromhex("800300020000000c00000003" "026100000000ffff")


def test_decodes_what_the_go_framer_writes():
    assert f.FrameReader().feed(GO_SYN_STREAM) == [f.SynStream(1, {"streamtype": "error"})]
    # Two header blocks of one direction share one zlib stream.
    assert f.FrameReader().feed(GO_SYN_REPLY_FIRST + GO_SYN_REPLY_LATER) == [f.SynReply(1), f.SynReply(3)]


@pytest.mark.parametrize(
    "frame, wire",
    [
        (f.Data(3, b"hi\n", f.FLAG_FIN), "0000000301000003" "68690a"),
        (f.Ping(1), "80030006" "00000004" "00000001"),
        (f.GoAway(9), "80030007" "00000008" "00000009" "00000000"),
        (f.RstStream(5, f.CANCEL), "80030003" "00000008" "00000005" "00000005"),
    ],
)
def test_uncompressed_frames_match_the_go_framer_bytes(frame, wire):
    assert f.FrameWriter().encode(frame) == bytes.fromhex(wire)
    assert f.FrameReader().feed(bytes.fromhex(wire)) == [frame]


def test_header_blocks_are_one_zlib_stream_seeded_with_the_dictionary():
    writer = f.FrameWriter()
    first = writer.compress_headers({"streamtype": "stdout"})
    second = writer.compress_headers({"streamtype": "stderr", "port": "8080"})
    # A zlib header announcing a preset dictionary whose id is the Adler-32.
    assert first[0] == 0x78 and first[1] & 0x20
    assert first[2:6] == zlib.adler32(f.DICTIONARY).to_bytes(4, "big")
    assert second[:2] != b"\x78\xf9" and second[:2] != b"\x78\x9c"  # no second zlib header
    for block in (first, second):
        assert block.endswith(b"\x00\x00\xff\xff")  # sync flush
    fresh = zlib.decompressobj(zdict=f.DICTIONARY)
    assert fresh.decompress(first) == f.encode_header_block({"streamtype": "stdout"})
    assert fresh.decompress(second) == f.encode_header_block({"streamtype": "stderr", "port": "8080"})
    # Without the dictionary, or without the first block, it does not decode.
    with pytest.raises(zlib.error):
        zlib.decompressobj().decompress(first)
    with pytest.raises(zlib.error):
        zlib.decompressobj(zdict=f.DICTIONARY).decompress(second)


def test_header_block_layout_and_lower_case_names():
    block = f.encode_header_block({"StreamType": "data", "Port": "80"})
    assert block == (
        b"\x00\x00\x00\x02" b"\x00\x00\x00\x0astreamtype" b"\x00\x00\x00\x04data" b"\x00\x00\x00\x04port" b"\x00\x00\x00\x0280"
    )
    assert f.decode_header_block(block) == {"streamtype": "data", "port": "80"}
    with pytest.raises(f.ProtocolError):
        f.decode_header_block(block + b"x")
    with pytest.raises(f.ProtocolError):
        f.decode_header_block(block[:-1])


def _many_frames() -> tuple[bytes, list[f.Frame]]:
    writer = f.FrameWriter()
    frames: list[f.Frame] = []
    for i in range(1, 40, 2):
        frames += [
            f.SynStream(i, {"streamtype": "data", "port": str(i), "requestid": str(i // 2)}),
            f.Data(i, bytes([i]) * (i * 7)),
            f.Ping(i),
            f.Data(i, b"", f.FLAG_FIN),
            f.RstStream(i, f.CANCEL),
        ]
    frames += [f.Settings(((0, 7, 1),)), f.WindowUpdate(1, 5), f.GoAway(39)]
    return b"".join(writer.encode(fr) for fr in frames), frames


def test_a_stream_split_at_every_boundary_yields_the_same_frames():
    data, frames = _many_frames()
    for cut in range(len(data) + 1):
        reader = f.FrameReader()
        assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == frames, cut


def test_a_stream_fed_one_byte_at_a_time_yields_the_same_frames():
    data, frames = _many_frames()
    reader = f.FrameReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert got == frames


@pytest.mark.parametrize(
    "wire",
    [
        "0000000000000001" "00",  # DATA on stream 0
        "80030006" "00000004" "00000000",  # PING id 0
        "80030006" "01000004" "00000001",  # PING with flags
        "80030007" "0000000c" "00000001" "00000000" "00000000",  # GOAWAY of 12 bytes
        "80030003" "00000008" "00000001" "00000000",  # RST status 0
        "80030001" "0000000e" "00000000" "00000000" "0000" "78f9e3c6",  # SYN_STREAM id 0
        "80030001" "0000000e" "00000001" "00000000" "0000" "01020304",  # garbage header block
    ],
)
def test_invalid_frames_are_protocol_errors(wire):
    reader = f.FrameReader()
    with pytest.raises(f.ProtocolError):
        reader.feed(bytes.fromhex(wire))
    with pytest.raises(f.ProtocolError):  # the reader stays broken
        reader.feed(b"")


def test_unknown_control_frames_and_versions_are_passed_up_as_unknown():
    reader = f.FrameReader()
    noop = bytes.fromhex("80030005" "00000000")
    v2 = bytes.fromhex("80020006" "00000004" "00000001")
    credential = bytes.fromhex("8003000a" "00000003" "010203")
    assert reader.feed(noop + v2 + credential) == [
        f.UnknownControl(3, 5, 0, b""),
        f.UnknownControl(2, 6, 0, b"\x00\x00\x00\x01"),
        f.UnknownControl(3, 10, 0, b"\x01\x02\x03"),
    ]


# -- the connection ------------------------------------------------------------


class Recorder:
    """A SpdyHandler that accepts every stream and records everything."""

    def __init__(self, conn, accept=True):
        self.conn = conn
        self.accept = accept
        self.opened = []
        self.events = []
        self.goaway = False
        self.lost = None

    def accept_stream(self, stream):
        return self.accept

    def stream_opened(self, stream):
        self.opened.append(stream)
        stream.listener = self._listener(stream.stream_id)

    def _listener(self, sid):
        rec = self

        class L:
            def data_received(self, data):
                rec.events.append(("data", sid, data))

            def end_received(self):
                rec.events.append(("end", sid))

            def reset_received(self):
                rec.events.append(("reset", sid))

        return L()

    def goaway_received(self):
        self.goaway = True

    def connection_lost(self, reason):
        self.lost = reason


def connect(accept=True, idle_timeout=None):
    clock = Clock()
    handlers = []

    def factory(conn):
        handlers.append(Recorder(conn, accept))
        return handlers[0]

    conn = SpdyConnection(factory, clock, idle_timeout)
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, handlers[0], clock


def exchange(conn, transport, client, data):
    conn.dataReceived(data)
    out = transport.value()
    transport.clear()
    return client.receive(out)


def test_each_stream_is_replied_at_once_and_data_flows_both_ways():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    sid, syn = client.open({"streamtype": "stdin"})
    assert exchange(conn, transport, client, syn) == [f.SynReply(sid)]
    assert handler.opened[0].header("StreamType") == "stdin"
    exchange(conn, transport, client, client.data(sid, b"abc") + client.data(sid, b"", fin=True))
    assert handler.events == [("data", sid, b"abc"), ("end", sid)]
    handler.opened[0].write(b"out")
    handler.opened[0].finish()
    client.receive(transport.value())
    assert client.streams[sid] == b"out" and sid in client.finished
    assert sid not in conn._streams  # closed both ways: forgotten


def test_refused_stream_is_reset_with_cancel():
    conn, transport, handler, _ = connect(accept=False)
    client = SpdyClient()
    sid, syn = client.open({"streamtype": "nope"})
    assert exchange(conn, transport, client, syn) == [f.RstStream(sid, f.CANCEL)]
    assert handler.opened == []


def test_stream_ids_must_increase():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    exchange(conn, transport, client, client.encode(f.SynStream(3, {})))
    frames = exchange(conn, transport, client, client.encode(f.SynStream(1, {})))
    assert frames == [f.RstStream(1, f.PROTOCOL_ERROR)]
    assert [s.stream_id for s in handler.opened] == [3]


def test_client_pings_are_echoed_byte_for_byte_and_ours_are_not():
    conn, transport, _, _ = connect()
    ping = bytes.fromhex("80030006" "00000004" "00000005")
    conn.dataReceived(ping)
    assert transport.value() == ping
    transport.clear()
    conn.dataReceived(bytes.fromhex("80030006" "00000004" "00000002"))  # even: a reply to us
    assert transport.value() == b""


def test_goaway_refuses_new_streams_and_tells_the_handler():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    sid, syn = client.open({})
    exchange(conn, transport, client, syn)
    exchange(conn, transport, client, client.encode(f.GoAway(sid)))
    assert handler.goaway
    sid2, syn2 = client.open({})
    assert exchange(conn, transport, client, syn2) == [f.RstStream(sid2, f.REFUSED_STREAM)]
    # existing streams go on
    handler.opened[0].write(b"still")
    client.receive(transport.value())
    assert client.streams[sid] == b"still"


def test_server_goaway_names_the_last_stream_received():
    conn, transport, _, _ = connect()
    client = SpdyClient()
    for _ in range(3):
        exchange(conn, transport, client, client.open({})[1])
    conn.go_away()
    assert client.receive(transport.value()) == [f.GoAway(5, f.GOAWAY_OK)]


def test_unknown_control_frames_settings_and_window_updates_are_ignored():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    junk = bytes.fromhex("80030005" "00000000" "8003000a" "00000002" "0102" "80020001" "00000000")
    junk += client.encode(f.Settings(((0, 7, 10),))) + client.encode(f.WindowUpdate(1, 10))
    sid, syn = client.open({"streamtype": "x"})
    assert exchange(conn, transport, client, junk + syn) == [f.SynReply(sid)]
    assert not transport.disconnecting


def test_rst_from_the_client_resets_the_stream_and_later_data_is_dropped():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    sid, syn = client.open({})
    exchange(conn, transport, client, syn)
    exchange(conn, transport, client, client.encode(f.RstStream(sid, f.CANCEL)) + client.data(sid, b"late"))
    assert handler.events == [("reset", sid)]
    stream = handler.opened[0]
    assert stream.closed
    stream.write(b"nothing")
    assert transport.value() == b""


def test_data_for_unknown_streams_is_dropped():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    exchange(conn, transport, client, client.data(41, b"who?") + client.encode(f.RstStream(43, f.CANCEL)))
    assert handler.events == [] and not transport.disconnecting


def test_protocol_error_sends_goaway_and_closes():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    exchange(conn, transport, client, client.open({})[1])
    frames = exchange(conn, transport, client, bytes.fromhex("0000000000000001" "00"))
    assert frames == [f.GoAway(1, f.GOAWAY_PROTOCOL_ERROR)]
    assert transport.disconnecting


def test_no_window_update_is_ever_needed():
    """More than the 64 KiB initial window goes both ways without any
    WINDOW_UPDATE from the client (pitfall 1)."""
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    sid, syn = client.open({})
    exchange(conn, transport, client, syn)
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    handler.opened[0].write(big)
    handler.opened[0].finish()
    frames = client.receive(transport.value())
    assert client.streams[sid] == big
    assert max(len(fr.data) for fr in frames if isinstance(fr, f.Data)) <= MAX_DATA_CHUNK
    incoming = b"".join(client.data(sid, big[i : i + 60000]) for i in range(0, len(big), 60000))
    conn.dataReceived(incoming)
    assert b"".join(e[2] for e in handler.events if e[0] == "data") == big


def test_client_fin_on_syn_stream_is_an_immediate_end():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    sid, syn = client.open({"streamtype": "error"}, fin=True)
    exchange(conn, transport, client, syn)
    assert handler.events == [("end", sid)]
    assert handler.opened[0].remote_closed


def test_connection_loss_resets_streams_and_tells_the_handler():
    conn, transport, handler, _ = connect()
    client = SpdyClient()
    sid, syn = client.open({})
    exchange(conn, transport, client, syn)
    conn.connectionLost(None)
    assert handler.events == [("reset", sid)]
    assert handler.lost is None or handler.lost is not False
    assert handler.opened[0].closed


@implementer(IPushProducer)
class Producer:
    def __init__(self):
        self.state = "producing"

    def pauseProducing(self):
        self.state = "paused"

    def resumeProducing(self):
        self.state = "producing"

    def stopProducing(self):
        self.state = "stopped"


def test_a_full_client_buffer_pauses_every_producer_of_the_session():
    conn, transport, _, _ = connect()
    assert transport.producer is conn.producers and transport.streaming
    first, late = Producer(), Producer()
    conn.add_producer(first)
    transport.producer.pauseProducing()  # what the transport does when its buffer fills
    assert first.state == "paused"
    conn.add_producer(late)
    assert late.state == "paused"  # joins paused
    transport.producer.resumeProducing()
    assert first.state == late.state == "producing"
    conn.remove_producer(first)
    transport.producer.pauseProducing()
    assert first.state == "producing" and late.state == "paused"
    conn.remove_producer(late)  # no longer ours to hold: it runs (and drains) again
    assert late.state == "producing"


def test_input_pauses_stop_reading_until_every_reason_is_gone():
    conn, transport, _, _ = connect()
    conn.reading.pause("stdin")
    conn.reading.pause("socket")
    assert transport.producerState == "paused"
    conn.reading.resume("stdin")
    assert transport.producerState == "paused"
    conn.reading.resume("socket")
    assert transport.producerState == "producing"


def test_idle_connection_is_reset_and_closed_but_traffic_keeps_it_alive():
    conn, transport, handler, clock = connect(idle_timeout=100)
    client = SpdyClient()
    sid, syn = client.open({})
    exchange(conn, transport, client, syn)
    clock.advance(60)
    conn.dataReceived(client.encode(f.Ping(1)))
    transport.clear()
    clock.advance(60)
    assert not transport.disconnecting
    clock.advance(41)
    assert transport.disconnecting
    assert client.receive(transport.value()) == [f.RstStream(sid, f.CANCEL)]
    clock.advance(5)  # never drained: aborted
    assert transport.disconnected or transport.disconnecting


def test_finish_waits_for_the_client_to_close_then_gives_up():
    conn, transport, _, clock = connect()
    conn.reading.pause("x")
    conn.finish(timeout=10)
    assert transport.producerState == "producing"  # draining the client's input
    assert not transport.disconnecting
    clock.advance(10)
    assert transport.disconnected  # aborted


def test_finish_after_the_clients_goaway_closes_at_once():
    conn, transport, _, clock = connect()
    conn.dataReceived(SpdyClient().encode(f.GoAway(0)))
    conn.finish(timeout=10)
    assert transport.disconnecting


class _Socket:
    """getsockopt of a socket whose peer is in a given TCP state."""

    def __init__(self, state: int, error: int = 0):
        self.state, self.error = state, error

    def getsockopt(self, level, option, size=None):
        import socket

        if option == socket.SO_ERROR:
            return self.error
        return bytes([self.state]) + bytes(size - 1)


def test_while_not_reading_the_client_is_pinged_and_a_dead_one_is_dropped():
    conn, transport, handler, clock = connect(idle_timeout=100)
    sock = _Socket(1)  # ESTABLISHED
    transport.getHandle = lambda: sock
    conn.reading.pause("stdin full")
    clock.advance(2)
    assert SpdyClient().receive(transport.value()) == [f.Ping(2)]  # even: ours
    transport.clear()
    clock.advance(2)
    assert SpdyClient().receive(transport.value()) == [f.Ping(4)]
    sock.state = 8  # CLOSE_WAIT: the client closed
    clock.advance(2)
    assert transport.disconnected  # aborted


def test_probes_do_not_keep_a_stuck_session_from_idling_out():
    conn, transport, _, clock = connect(idle_timeout=10)
    transport.getHandle = lambda: _Socket(1)
    conn.reading.pause("stdin full")
    for _ in range(5):
        clock.advance(2)
    clock.advance(0.5)
    assert transport.disconnecting


def test_a_reset_client_is_dropped_too():
    conn, transport, _, clock = connect()
    transport.getHandle = lambda: _Socket(1, error=104)
    conn.reading.pause("x")
    clock.advance(2)
    assert transport.disconnected


def test_no_probing_while_reading():
    conn, transport, _, clock = connect()
    transport.getHandle = lambda: _Socket(8)
    conn.reading.pause("x")
    conn.reading.resume("x")
    clock.advance(10)
    assert transport.value() == b"" and not transport.disconnected
