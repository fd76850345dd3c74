"""Attach through conmon's attach socket, in process, to real containers
made by a real daemon: a tty shell, a pipe-fed container, resizes,
detaching (the container runs on), the container's exit code."""

from __future__ import annotations

import re

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import NotFound, RuntimeFailure
from rktlet.oci.attach import start_attach
from rktlet.stream.session import AttachRequest
from tests.integration.test_exec_support import (
    FakeTerminal,
    alive,
    fd_target,
    leaked_fds,
    make_world,
    open_fds,
)
from harness.waiting import sleep, wait_for, within
from harness.containers import status

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(pushed_images):
    yield from make_world(pushed_images)


def running(world, target) -> bool:
    from rktlet.cri.proto import pb

    return alive(target.pid) and status(world.daemon, target.id).status.state == pb.CONTAINER_RUNNING


async def until_output(term: FakeTerminal, pattern: bytes, what: str, timeout: float = 10) -> None:
    await wait_for(lambda: re.search(pattern, bytes(term.out)), timeout, what)


@pytest_twisted.ensureDeferred
async def test_tty_shell_io_resize_and_detach(world):
    shell = world.container("shell", ["sh"], stdin=True, tty=True)
    before = open_fds()
    term = FakeTerminal()
    session = world.backend.attach(AttachRequest(container_id=shell.id, stdin=True, stdout=True, stderr=False,
                                                 tty=True), term)
    assert term.producer is not None
    socket_fd = session._conn.fileno()
    socket_inode = fd_target(socket_fd)
    assert socket_inode.startswith("socket:")
    session.stdin(b"echo hi\n")
    # The tty echoes the line, then the shell answers; everything is stdout, \r\n.
    await until_output(term, rb"\r\nhi\r\n", "the shell's answer")
    session.resize(123, 45)
    await sleep(0.2)
    session.stdin(b"stty size\n")
    await until_output(term, rb"\r\n45 123\r\n", "the new size")
    assert term.err == b""
    session.terminate()
    assert await within(session.done) is None  # detached
    assert term.producer is None
    assert leaked_fds(before) == {} and fd_target(socket_fd) != socket_inode  # the attach socket is closed
    await sleep(0.3)
    assert running(world, shell)
    # Attach again: the container still answers.
    again = FakeTerminal()
    session = world.backend.attach(AttachRequest(container_id=shell.id, stdin=True, stdout=True, tty=True), again)
    session.stdin(b"echo still here\n")
    await until_output(again, rb"\r\nstill here\r\n", "the shell's second answer")
    session.terminate()
    assert await within(session.done) is None


@pytest_twisted.ensureDeferred
async def test_the_containers_exit_code_ends_the_attach(world):
    shell = world.container("leaver", ["sh"], stdin=True, tty=True)
    term = FakeTerminal()
    session = world.backend.attach(AttachRequest(container_id=shell.id, stdin=True, stdout=True, tty=True), term)
    session.stdin(b"echo bye; exit 7\n")
    assert await within(session.done) == 7
    assert re.search(rb"\r\nbye\r\n", bytes(term.out))


@pytest_twisted.ensureDeferred
async def test_pipes_keep_stdout_and_stderr_apart(world):
    reader = world.container(
        "reader", ["sh", "-c", 'while read l; do echo "got $l"; echo "err $l" >&2; done; echo "stdin closed"; sleep 100000'],
        stdin=True, stdin_once=True)
    term = FakeTerminal()
    session = world.backend.attach(AttachRequest(container_id=reader.id, stdin=True, stdout=True, stderr=True), term)
    session.stdin(b"one\n")
    await wait_for(lambda: term.out == b"got one\n" and term.err == b"err one\n", 10, "the answers")
    # stdin_once: EOF reaches the container; the attach goes on for the output.
    session.close_stdin()
    await wait_for(lambda: term.out.endswith(b"stdin closed\n"), 10, "the container to see EOF")
    assert not session.done.called
    session.terminate()
    assert await within(session.done) is None
    assert running(world, reader)


@pytest_twisted.ensureDeferred
async def test_stdin_eof_ends_the_attach_without_stdin_once(world):
    reader = world.container("keeper", ["sh", "-c", "while read l; do echo \"got $l\"; done; echo closed"],
                             stdin=True)
    term = FakeTerminal()
    session = world.backend.attach(AttachRequest(container_id=reader.id, stdin=True, stdout=True), term)
    session.stdin(b"x\n")
    await wait_for(lambda: term.out == b"got x\n", 10, "the answer")
    session.close_stdin()
    assert await within(session.done) is None  # CRI-O's rule: the attach ends, the container's stdin stays
    await sleep(0.3)
    assert running(world, reader)


@pytest_twisted.ensureDeferred
async def test_output_only_attach_and_stdin_dropped_without_container_stdin(world):
    ticker = world.container("ticker", ["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    term = FakeTerminal()
    session = world.backend.attach(AttachRequest(container_id=ticker.id, stdin=True, stdout=True), term)
    session.stdin(b"ignored\n")  # the container has no stdin: dropped, no error
    await wait_for(lambda: term.out.count(b"tick\n") >= 2, 10, "ticks")
    session.terminate()
    assert await within(session.done) is None
    assert running(world, ticker)


@pytest_twisted.ensureDeferred
async def test_errors(world):
    with pytest.raises(NotFound):
        world.backend.attach(AttachRequest(container_id="cd" * 32, stdout=True), FakeTerminal())
    session = start_attach(reactor, "/nonexistent/attach", FakeTerminal(), stdin=False, stdout=True, stderr=True,
                           tty=False)
    with pytest.raises(RuntimeFailure) as e:
        await within(session.done)
    assert "not running" in str(e.value)
