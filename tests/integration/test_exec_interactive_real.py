"""Interactive exec (the streaming server's side) with real runc in real
containers: pipes and stdin EOF, a tty with resizes, backpressure,
termination that leaves no process and no file descriptor behind, and the
StreamingBackend's checks."""

from __future__ import annotations

import os
import random
import re

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from rktlet.oci.exec import start_exec
from rktlet.stream.session import AttachRequest, ExecRequest
from tests.integration.test_exec_support import (
    FakeTerminal,
    alive,
    leaked_fds,
    make_world,
    open_fds,
    pids_running,
)
from harness.waiting import sleep, wait_for, within

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(pushed_images):
    yield from make_world(pushed_images)


@pytest.fixture(scope="module")
def sleeper(world):
    return world.container("sleeper", ["sleep", "100000"])


def start(world, target, cmd, terminal, **streams):
    return start_exec(reactor, world.runtime, target.id, target.bundle, cmd, terminal, **streams)


@pytest_twisted.ensureDeferred
async def test_pipes_with_stdin_and_eof(world, sleeper):
    term = FakeTerminal()
    session = start(world, sleeper, ["sh", "-c", 'read x; echo "got $x"; echo err >&2; cat; exit 4'], term,
                    stdin=True)
    session.stdin(b"hello\n")
    session.stdin(b"rest of the input\n")
    session.close_stdin()  # `cat` ends on EOF
    assert await within(session.done) == 4
    assert bytes(term.out) == b"got hello\nrest of the input\n"
    assert bytes(term.err) == b"err\n"
    assert term.producer is None  # unregistered at the end


@pytest_twisted.ensureDeferred
async def test_unrequested_streams_are_dropped_and_stdin_is_empty(world, sleeper):
    term = FakeTerminal()
    session = start(world, sleeper, ["sh", "-c", "cat; echo out; echo err >&2"], term, stdin=False, stderr=False)
    assert await within(session.done) == 0
    assert (bytes(term.out), bytes(term.err)) == (b"out\n", b"")


@pytest_twisted.ensureDeferred
async def test_a_background_child_does_not_hold_the_session(world, sleeper):
    marker = str(400000 + random.randrange(100000))
    term = FakeTerminal()
    session = start(world, sleeper, ["sh", "-c", f"sleep {marker} & echo hi"], term)
    assert await within(session.done, 3) == 0
    assert bytes(term.out) == b"hi\n"
    for pid in pids_running("sleep", marker):
        os.kill(pid, 9)


@pytest_twisted.ensureDeferred
async def test_tty_with_resize(world, sleeper):
    term = FakeTerminal()
    session = start(world, sleeper, ["sh"], term, tty=True, stdin=True, stderr=False)
    session.stdin(b"stty size\n")
    # The size set before runc started (runc sizes the console from the spec).
    await wait_for(lambda: b"\r\n24 80\r\n" in term.out, 10, "the first `stty size`")
    session.resize(100, 40)  # width, height
    # runc copies the size on SIGWINCH, asynchronously: ask until it shows.
    for _ in range(50):
        session.stdin(b"stty size\n")
        await sleep(0.1)
        if b"\r\n40 100\r\n" in term.out:
            break
    assert b"\r\n40 100\r\n" in term.out, term.out
    session.stdin(b"echo $TERM; exit 3\n")
    assert await within(session.done) == 3
    assert b"\r\nxterm\r\n" in term.out
    assert term.err == b""


@pytest_twisted.ensureDeferred
async def test_output_backpressure(world, sleeper):
    """A paused client pauses the command's output; nothing is lost."""
    term = FakeTerminal(pause_output_at_start=True)
    session = start(world, sleeper, ["sh", "-c", "head -c 3000000 /dev/zero; echo end >&2"], term)
    await sleep(0.5)
    assert len(term.out) < 3000000 and not session.done.called  # the command waits for us
    term.producer.resumeProducing()
    assert await within(session.done) == 0
    assert len(term.out) == 3000000 and term.err == b"end\n"


@pytest_twisted.ensureDeferred
async def test_stdin_backpressure(world, sleeper):
    """A command that does not read pauses the client's input."""
    term = FakeTerminal()
    session = start(world, sleeper, ["sh", "-c", "sleep 1; cat > /dev/null"], term, stdin=True)
    session.stdin(b"x" * (1 << 20))
    assert term.input_paused
    await wait_for(lambda: not term.input_paused, 10, "input to resume once cat reads")
    session.close_stdin()
    assert await within(session.done) == 0


@pytest.mark.parametrize("tty", [False, True])
@pytest_twisted.ensureDeferred
async def test_terminate_leaves_no_process_and_no_fd(world, sleeper, tty):
    marker = str(500000 + random.randrange(100000))
    before = open_fds()
    term = FakeTerminal()
    session = start(world, sleeper, ["sh", "-c", f"sleep {marker} & sleep {marker}; echo never"], term,
                    tty=tty, stdin=True, stderr=not tty)
    spawned = session.pid
    await wait_for(lambda: len(pids_running("sleep", marker)) == 2, 10, "both sleeps to run")
    sleeps = pids_running("sleep", marker)
    session.terminate()
    code = await within(session.done)
    assert code == 137
    assert not alive(spawned)
    assert not any(alive(p) for p in sleeps) and pids_running("sleep", marker) == []
    assert b"never" not in term.out
    assert leaked_fds(before) == {}, before
    assert [n for n in os.listdir(sleeper.bundle) if n.startswith("exec-")] == []


@pytest_twisted.ensureDeferred
async def test_runc_failure_fails_done(world, sleeper):
    term = FakeTerminal()
    session = start(world, sleeper, ["/no/such/binary"], term)
    with pytest.raises(RuntimeFailure) as e:
        await within(session.done)
    assert "/no/such/binary" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_backend_exec_checks_and_runs(world, sleeper):
    backend = world.backend
    with pytest.raises(NotFound):
        backend.validate(ExecRequest(container_id="ab" * 32, cmd=("true",)))
    with pytest.raises(InvalidArgument):
        backend.validate(ExecRequest(container_id=sleeper.id, cmd=()))
    with pytest.raises(InvalidArgument):
        backend.validate(ExecRequest(container_id=sleeper.id, cmd=("true",), tty=True, stderr=True))
    backend.validate(ExecRequest(container_id=sleeper.id[:10], cmd=("true",)))
    term = FakeTerminal()
    session = backend.exec(ExecRequest(container_id=sleeper.id, cmd=("echo", "via backend")), term)
    assert await within(session.done) == 0
    assert term.out == b"via backend\n"
    assert backend.exec_sessions(sleeper.id) == []


@pytest_twisted.ensureDeferred
async def test_backend_ends_execs_when_the_container_ends(world):
    backend = world.backend
    short = world.container("short", ["sh", "-c", "sleep 1.5"])
    term = FakeTerminal()
    session = backend.exec(ExecRequest(container_id=short.id, cmd=("sleep", "1000")), term)
    assert backend.exec_sessions(short.id) == [session]
    code = await within(session.done, 10)
    assert code == 137  # killed with its container
    await wait_for(lambda: world.manager.containers[short.id].state == "exited", 5, "the exit to be recorded")
    with pytest.raises(FailedPrecondition) as e:
        backend.validate(AttachRequest(container_id=short.id, stdout=True))
    assert short.id in str(e.value) and "not running" in str(e.value)
    assert re.search(r"state exited", str(e.value))
