"""ExecSync with real runc in real containers made by a real daemon
(:func:`rktlet.oci.exec.exec_sync` and ``ContainerManager.exec_sync``)."""

from __future__ import annotations

import os
import random
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults

from rktlet.cri.proto import pb
from rktlet.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from rktlet.oci.exec import exec_sync
from tests.integration.test_exec_support import make_world, pids_running
from harness.waiting import wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(pushed_images):
    yield from make_world(pushed_images)


@pytest.fixture(scope="module")
def sleeper(world):
    """A running container with its own env, working dir and user."""
    return world.container(
        "sleeper", ["sleep", "100000"], working_dir="/tmp",
        envs=[pb.KeyValue(key="GREETING", value=b"hello")],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=1234))),
    )


def bundle_leftovers(bundle: str) -> list[str]:
    return [n for n in os.listdir(bundle) if n.startswith("exec-")]


@pytest_twisted.ensureDeferred
async def test_exit_codes_output_and_the_containers_process_settings(world, sleeper):
    code, out, err = await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle,
                                     ["sh", "-c", 'echo "$GREETING $(pwd) $(id -u)"; echo oops >&2; exit 3'], 10)
    assert (code, out, err) == (3, b"hello /tmp 1234\n", b"oops\n")
    assert await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle, ["true"], 10) == (0, b"", b"")
    # Killed by a signal: 128 + N, as a shell reports it.
    code, _, _ = await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle, ["sh", "-c", "kill -9 $$"], 10)
    assert code == 137
    assert bundle_leftovers(sleeper.bundle) == []


@pytest_twisted.ensureDeferred
async def test_output_is_capped_at_16_mib_with_a_note(world, sleeper):
    code, out, err = await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle,
                                     ["sh", "-c", "head -c 17000000 /dev/zero; echo fine >&2"], 30)
    assert code == 0
    # Both streams and the note fit one 16 MiB gRPC message.
    assert (16 << 20) - 8192 < len(out) and len(out) + len(err) < 16 << 20 and set(out) == {0}
    assert err.startswith(b"fine\n") and b"stdout truncated at 16 MiB" in err


@pytest_twisted.ensureDeferred
async def test_a_background_child_holding_stdout_does_not_hold_the_call(world, sleeper):
    marker = str(100000 + random.randrange(100000))
    started = time.monotonic()
    code, out, _ = await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle,
                                   ["sh", "-c", f"sleep {marker} & echo hi"], 30)
    assert time.monotonic() - started < 2
    assert (code, out) == (0, b"hi\n")
    # The background child is the command's business: it was left running
    # (as docker/CRI-O exec leave it); end it here.
    leftovers = pids_running("sleep", marker)
    assert len(leftovers) == 1
    os.kill(leftovers[0], 9)


@pytest_twisted.ensureDeferred
async def test_timeout_kills_everything_the_command_started(world, sleeper):
    marker = str(200000 + random.randrange(100000))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as e:
        await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle,
                        ["sh", "-c", f"sleep {marker} & sleep {marker}"], 1)
    assert 0.9 < time.monotonic() - started < 4
    assert "timed out after 1s" in str(e.value)
    await wait_for(lambda: not pids_running("sleep", marker), 3, "the exec'd processes to be gone")
    assert bundle_leftovers(sleeper.bundle) == []


@pytest_twisted.ensureDeferred
async def test_cancelling_kills_the_command(world, sleeper):
    marker = str(300000 + random.randrange(100000))
    call = ensureDeferred(exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle, ["sleep", marker], 0))
    await wait_for(lambda: pids_running("sleep", marker), 5, "the command to start")
    call.cancel()
    call.addErrback(lambda f: None)
    await wait_for(lambda: not pids_running("sleep", marker), 5, "the command to be killed")


@pytest_twisted.ensureDeferred
async def test_runc_failures_are_errors_not_output(world, sleeper):
    # A command that cannot be run is the request's fault, named as such.
    with pytest.raises(InvalidArgument) as e:
        await exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle, ["/no/such/binary"], 10)
    assert "/no/such/binary" in str(e.value) and "time=" not in str(e.value)
    assert bundle_leftovers(sleeper.bundle) == []


@pytest_twisted.ensureDeferred
async def test_container_manager_exec_sync(world, sleeper):
    manager = world.manager
    assert await manager.exec_sync(sleeper.id[:12], ["echo", "by prefix"], 10) == (0, b"by prefix\n", b"")
    with pytest.raises(NotFound):
        await manager.exec_sync("ab" * 32, ["true"], 10)
    done = world.container("done", ["true"])
    await wait_for(lambda: manager.containers[done.id].state != "running", 10, "the short container to exit")
    with pytest.raises(FailedPrecondition) as e:
        await manager.exec_sync(done.id, ["true"], 10)
    assert done.id in str(e.value)


@pytest_twisted.ensureDeferred
async def test_many_at_once(world, sleeper):
    """Probes run concurrently; each gets its own output."""
    calls = [ensureDeferred(exec_sync(reactor, world.runtime, sleeper.id, sleeper.bundle, ["echo", str(i)], 10))
             for i in range(8)]
    results = await gatherResults(calls)
    assert [r[1] for r in results] == [f"{i}\n".encode() for i in range(8)]
