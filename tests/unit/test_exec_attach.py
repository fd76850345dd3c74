"""Attach without conmon: the session against a SOCK_SEQPACKET server
socket this test plays conmon on (real sockets, real reactor, no root),
and resize coalescing on a fake clock."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from rktlet.errors import RuntimeFailure
from rktlet.oci.attach import MAX_INPUT_PACKET, STDERR, STDOUT, ResizeCoalescer, start_attach
from harness.waiting import wait_for


class Terminal:
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.producer: Any = None
        self.input_paused = False

    def stdout(self, data: bytes) -> None:
        self.out += data

    def stderr(self, data: bytes) -> None:
        self.err += data

    def set_output_producer(self, producer: Any) -> None:
        self.producer = producer

    def pause_input(self) -> None:
        self.input_paused = True

    def resume_input(self) -> None:
        self.input_paused = False


class FakeConmon:
    """A listening attach socket; :meth:`accept` gives the connected peer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(10)
        self.peer: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(5)
        return self.peer

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.listener.close()


@pytest.fixture
def conmon(tmp_path):
    fake = FakeConmon(str(tmp_path / "attach"))
    yield fake
    fake.close()


def attach(conmon: FakeConmon, term: Terminal, **options: Any):
    settings = dict(stdin=True, stdout=True, stderr=True, tty=False, container_stdin=True, stdin_once=True)
    settings.update(options)
    session = start_attach(reactor, conmon.path, term, **settings)
    peer = conmon.accept()
    return session, peer


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_packets_are_routed_by_their_prefix(conmon):
    term = Terminal()
    session, peer = attach(conmon, term)
    peer.send(bytes([STDOUT]) + b"out 1\n")
    peer.send(bytes([STDERR]) + b"err 1\n")
    peer.send(bytes([7]) + b"unknown kind\n")
    peer.send(bytes([STDOUT]) + b"x" * 8192)
    await wait_for(lambda: len(term.out) == 6 + 8192 and term.err)
    assert bytes(term.out) == b"out 1\n" + b"x" * 8192 and bytes(term.err) == b"err 1\n"
    peer.close()  # conmon went away (the container ended); no exit watch here
    assert await session.done is None


@pytest_twisted.ensureDeferred
async def test_tty_output_and_dropped_streams(conmon):
    term = Terminal()
    session, peer = attach(conmon, term, tty=True, stderr=False)
    peer.send(bytes([STDERR]) + b"tty sends all as one stream\n")
    await wait_for(lambda: term.out)
    session.terminate()
    assert await session.done is None
    term2 = Terminal()
    session, peer = attach(conmon, term2, stdout=False)
    peer.send(bytes([STDOUT]) + b"unwanted")
    peer.send(bytes([STDERR]) + b"wanted")
    await wait_for(lambda: term2.err)
    assert term2.out == b""
    session.terminate()
    await session.done


@pytest_twisted.ensureDeferred
async def test_input_goes_in_packets_of_at_most_32_kib_and_eof_is_shutdown(conmon):
    term = Terminal()
    session, peer = attach(conmon, term)
    data = bytes(range(256)) * 400  # 100 KiB
    session.stdin(data)
    packets: list[bytes] = []
    peer.setblocking(False)

    def drain() -> bool:
        # The reactor writes as the socket takes it: read what has come.
        while True:
            try:
                packets.append(peer.recv(1 << 20))
            except BlockingIOError:
                return sum(map(len, packets)) >= len(data)

    await wait_for(drain)
    assert b"".join(packets) == data
    assert max(map(len, packets)) <= MAX_INPUT_PACKET and len(packets) >= 4
    peer.setblocking(True)
    session.close_stdin()  # stdin_once: the attach goes on for the output
    assert await task.deferLater(reactor, 0.05, lambda: peer.recv(10)) == b""  # EOF
    peer.send(bytes([STDOUT]) + b"still listening")
    await wait_for(lambda: term.out == b"still listening")
    assert not session.done.called
    session.terminate()
    assert await session.done is None


@pytest_twisted.ensureDeferred
async def test_stdin_eof_ends_the_attach_of_a_container_without_stdin_once(conmon):
    session, peer = attach(conmon, Terminal(), stdin_once=False)
    session.stdin(b"last words")
    session.close_stdin()
    assert await session.done is None
    assert peer.recv(100) == b"last words"  # flushed before the socket closed
    assert peer.recv(100) == b""


@pytest_twisted.ensureDeferred
async def test_stdin_is_dropped_when_the_container_has_none(conmon):
    session, peer = attach(conmon, Terminal(), container_stdin=False)
    session.stdin(b"nobody reads this")
    session.close_stdin()
    await task.deferLater(reactor, 0.05, lambda: None)
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
    session.terminate()
    await session.done


@pytest_twisted.ensureDeferred
async def test_exit_code_comes_from_the_monitor(conmon):
    exited: Deferred = Deferred()
    session, peer = attach(conmon, Terminal(), exited=exited)
    peer.close()  # conmon closes the socket first...
    await task.deferLater(reactor, 0.05, lambda: None)
    assert not session.done.called
    exited.callback((3, 0, False))  # ...then the monitor reports the exit
    assert await session.done == 3


@pytest_twisted.ensureDeferred
async def test_detach_stops_watching_the_monitor_and_closes_the_socket(conmon):
    before = open_fd_count()
    cancelled = []
    exited: Deferred = Deferred(lambda d: cancelled.append(d))
    term = Terminal()
    session, peer = attach(conmon, term, exited=exited)
    assert term.producer is not None
    session.terminate()
    assert await session.done is None
    assert cancelled and term.producer is None
    assert peer.recv(10) == b""  # our side is closed
    peer.close()
    conmon.peer = None
    assert open_fd_count() == before


@pytest_twisted.ensureDeferred
async def test_output_producer_pauses_reading(conmon):
    term = Terminal()
    session, peer = attach(conmon, term)
    term.producer.pauseProducing()
    peer.send(bytes([STDOUT]) + b"held")
    await task.deferLater(reactor, 0.05, lambda: None)
    assert term.out == b""
    term.producer.resumeProducing()
    await wait_for(lambda: term.out == b"held")
    session.terminate()
    await session.done


@pytest_twisted.ensureDeferred
async def test_no_socket():
    session = start_attach(reactor, "/nonexistent/dir/attach", Terminal(), stdin=True, stdout=True, stderr=True,
                           tty=False)
    with pytest.raises(RuntimeFailure) as e:
        await session.done
    assert "container is not running" in str(e.value)
    session.terminate()  # harmless


def test_resizes_are_coalesced():
    clock = task.Clock()
    sent: list[tuple[int, int]] = []
    resizer = ResizeCoalescer(clock, lambda h, w: sent.append((h, w)), interval=0.1)
    resizer.request(80, 24)
    assert sent == [(24, 80)]  # the first goes at once, height first
    resizer.request(81, 24)
    resizer.request(82, 25)
    resizer.request(83, 26)
    assert sent == [(24, 80)]
    clock.advance(0.1)
    assert sent == [(24, 80), (26, 83)]  # only the latest of the burst
    clock.advance(0.1)
    resizer.request(83, 26)  # the same size again: nothing to say
    assert len(sent) == 2
    resizer.request(0, 10)  # nonsense is ignored
    clock.advance(1)
    assert len(sent) == 2


def test_resize_failures_are_not_fatal_and_stop_drops_pending():
    clock = task.Clock()
    calls = []

    def send(h: int, w: int) -> None:
        calls.append((h, w))
        raise RuntimeFailure("container is not running")

    resizer = ResizeCoalescer(clock, send, interval=0.1)
    resizer.request(10, 10)
    resizer.request(20, 20)
    resizer.stop()
    clock.advance(1)
    assert calls == [(10, 10)]
    resizer.request(30, 30)
    assert calls == [(10, 10)]
