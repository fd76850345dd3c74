"""Port-forwarding over SPDY (``portforward.k8s.io``), in memory."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure

from rktlet.errors import RuntimeFailure
from rktlet.stream import spdyframes as f
from rktlet.stream.session import PortForwardRequest
from rktlet.stream.testing import HalfCloseableTransport, MemoryServer


def started(**kwargs) -> MemoryServer:
    h = MemoryServer(**kwargs)
    h.upgrade(PortForwardRequest("pod-1"), ["portforward.k8s.io"])
    return h


def open_pair(h: MemoryServer, port: int, request_id: str) -> tuple[int, int]:
    error = h.client.open({"streamtype": "error", "port": str(port), "requestid": request_id}, fin=True)
    h.send(error[1])
    data = h.open("data", port=str(port), requestid=request_id)
    return error[0], data


def connect(h: MemoryServer, index: int = -1) -> HalfCloseableTransport:
    call = h.backend.forwards[index]
    pod = HalfCloseableTransport()
    call.protocol.makeConnection(pod)
    call.result.callback(pod)
    return pod


def test_a_pair_connects_to_the_port_and_copies_both_ways():
    h = started()
    err, data = open_pair(h, 8080, "0")
    (call,) = h.backend.forwards
    assert (call.sandbox_id, call.port) == ("pod-1", 8080)
    pod = connect(h)
    h.send(h.client.data(data, b"GET / HTTP/1.0\r\n\r\n"))
    assert pod.value() == b"GET / HTTP/1.0\r\n\r\n"
    call.protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nhi")
    h.pull()
    assert h.client.streams[data] == b"HTTP/1.0 200 OK\r\n\r\nhi"


def test_client_bytes_sent_before_the_connection_exists_are_kept():
    h = started()
    _, data = open_pair(h, 80, "0")
    h.send(h.client.data(data, b"early ") + h.client.data(data, b"bytes"))
    pod = connect(h)
    assert pod.value() == b"early bytes"


def test_half_closes_are_passed_on_and_a_clean_end_finishes_both_streams():
    h = started()
    err, data = open_pair(h, 80, "0")
    pod = connect(h)
    proto = h.backend.forwards[0].protocol
    h.send(h.client.data(data, b"request", fin=True))
    assert pod.write_closed and not pod.disconnecting  # shutdown(SHUT_WR), still reading
    assert pod.producer is None  # unregistered first, or Twisted never half-closes
    proto.dataReceived(b"response")
    proto.readConnectionLost()
    assert pod.disconnecting  # both directions done
    proto.connectionLost(Failure(ConnectionDone()))
    h.pull()
    assert h.client.streams[data] == b"response"
    assert data in h.client.finished and err in h.client.finished
    assert h.client.streams[err] == b""


def test_pod_side_ending_first():
    h = started()
    err, data = open_pair(h, 80, "0")
    pod = connect(h)
    proto = h.backend.forwards[0].protocol
    proto.dataReceived(b"banner")
    proto.readConnectionLost()
    h.pull()
    assert data in h.client.finished and not pod.disconnecting
    h.send(h.client.data(data, b"bye", fin=True))
    assert pod.value() == b"bye" and pod.disconnecting


def test_a_connection_that_cannot_be_made_is_reported_on_the_error_stream():
    h = started()
    err, data = open_pair(h, 9, "0")
    h.backend.forwards[0].result.errback(Failure(RuntimeFailure("dial tcp 127.0.0.1:9: connection refused")))
    h.pull()
    assert h.client.streams[err] == b"error forwarding port 9 to pod pod-1: dial tcp 127.0.0.1:9: connection refused"
    assert err in h.client.finished
    assert h.client.reset[data] == f.CANCEL


def test_a_connection_reset_after_it_was_made_resets_the_pair_silently():
    h = started()
    err, data = open_pair(h, 80, "0")
    connect(h)
    h.backend.forwards[0].protocol.connectionLost(Failure(ConnectionLost("Connection reset by peer")))
    h.pull()
    assert h.client.reset[data] == f.CANCEL and h.client.reset[err] == f.CANCEL
    assert h.client.streams[err] == b""  # no message: kubectl would end the session


def test_client_reset_aborts_the_pod_connection():
    h = started()
    err, data = open_pair(h, 80, "0")
    pod = connect(h)
    h.send(h.client.encode(f.RstStream(data, f.CANCEL)))
    assert pod.disconnected  # aborted
    assert h.client.reset[err] == f.CANCEL


def test_many_concurrent_pairs_on_one_connection():
    h = started()
    pairs = [open_pair(h, 8000 + i, str(i)) for i in range(20)]
    pods = [connect(h, i) for i in range(20)]
    for i, (_, data) in enumerate(pairs):
        h.send(h.client.data(data, b"to %d" % i))
    for i, pod in enumerate(pods):
        assert pod.value() == b"to %d" % i
        h.backend.forwards[i].protocol.dataReceived(b"from %d" % i)
    h.pull()
    assert [bytes(h.client.streams[d]) for _, d in pairs] == [b"from %d" % i for i in range(20)]
    assert [c.port for c in h.backend.forwards] == list(range(8000, 8020))


def test_pairs_without_request_id_match_by_stream_id():
    h = started()
    e = h.client.open({"streamtype": "error", "port": "80"}, fin=True)
    h.send(e[1])
    h.open("data", port="80")
    assert len(h.backend.forwards) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"streamtype": "data", "port": "0", "requestid": "1"},
        {"streamtype": "data", "port": "65536", "requestid": "1"},
        {"streamtype": "data", "port": "http", "requestid": "1"},
        {"streamtype": "data", "requestid": "1"},
        {"streamtype": "stdout", "port": "80", "requestid": "1"},
    ],
)
def test_bad_streams_are_reset(headers):
    h = started()
    sid, syn = h.client.open(headers)
    assert h.send(syn) == [f.RstStream(sid, f.CANCEL)]


def test_a_second_stream_of_the_same_type_for_a_request_is_reset():
    h = started()
    open_pair(h, 80, "0")
    sid, syn = h.client.open({"streamtype": "data", "port": "80", "requestid": "0"})
    assert h.send(syn) == [f.RstStream(sid, f.CANCEL)]


def test_an_incomplete_pair_times_out_with_a_message():
    h = started(stream_creation_timeout=30)
    err = h.client.open({"streamtype": "error", "port": "80", "requestid": "7"}, fin=True)
    h.send(err[1])
    h.clock.advance(30)
    h.pull()
    assert h.client.streams[err[0]] == b"timed out waiting for streams"
    assert h.backend.forwards == []


def test_losing_the_client_aborts_every_pod_connection():
    h = started()
    for i in range(3):
        open_pair(h, 80, str(i))
    pods = [connect(h, i) for i in range(3)]
    h.lose()
    assert all(p.disconnected for p in pods)


def test_a_full_pod_socket_pauses_reading_the_client():
    h = started()
    _, data = open_pair(h, 80, "0")
    pod = connect(h)
    pod.producer.pauseProducing()  # the pod socket's buffer is full
    assert h.transport.producerState == "paused"
    pod.producer.resumeProducing()
    assert h.transport.producerState == "producing"
    h.transport.producer.pauseProducing()  # the client's buffer is full: stop reading the pod
    assert pod.producerState == "paused"


def test_refused_connection_message_from_a_real_failure():
    h = started()
    err, data = open_pair(h, 1, "0")
    h.backend.forwards[0].result.errback(Failure(ConnectionRefusedError()))
    h.pull()
    assert bytes(h.client.streams[err]).startswith(b"error forwarding port 1 to pod pod-1: Connection was refused")
