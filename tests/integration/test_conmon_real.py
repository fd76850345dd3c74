"""conmon 2.1.x and runc on the real kernel, driven through
:class:`rktlet.oci.conmon.Conmon` and :class:`rktlet.oci.runtime.OCIRuntime`
on the real reactor.

Each test builds OCI bundles with the lab of ``harness/oci_lab.py``:
a busybox root filesystem and a minimal config.json. Containers get the host network and cgroups under a test-only parent
``/rktlet-conmon-test-<random>``, where conmon itself is placed too.  Pass or
fail, every container is deleted, every conmon killed by pid and reaped, the
cgroups and temp dirs removed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import DeadlineExceeded, RuntimeFailure
from rktlet.mountinfo import mount_points_under
from rktlet.oci import mounts
from rktlet.oci.conmon import UNKNOWN_EXIT_CODE, Conmon
from rktlet.oci.procwatch import alive, proc_state
from rktlet.oci.runtime import OCIRuntime
from harness.oci_lab import CONMON, RUNC, Lab, conmon_pids_for, exited
from harness.processes import live_cmdlines
from harness.waiting import sleep, wait_for

pytestmark = pytest.mark.root

MS_BIND = 0x1000


@pytest_twisted.async_yield_fixture
async def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        await lab.teardown()
        lab.assert_clean()


def _cgroup_of(pid: int, controller: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    raise AssertionError(f"{controller} not in /proc/{pid}/cgroup")


@pytest_twisted.ensureDeferred
async def test_create_start_log_and_exit_code(lab):
    container_id, bundle, monitor = await lab.create(["sh", "-c", "echo hello; echo err >&2; sleep 1; exit 3"])
    assert monitor.container_pid > 0 and monitor.conmon_pid > 0
    state = await lab.runtime.state(container_id)
    assert state is not None and state["status"] == "created"
    assert state["pid"] == monitor.container_pid
    # conmon was moved out of our cgroup before it went on.
    assert _cgroup_of(monitor.conmon_pid, "memory") == lab.cgroup_parent
    paths = monitor.paths
    assert os.path.islink(paths.socket_link) and os.readlink(paths.socket_link) == bundle
    assert os.path.exists(paths.attach_socket) and os.path.exists(paths.ctl_fifo)
    assert not monitor.exited.called

    await lab.runtime.start(container_id)
    state = await lab.runtime.state(container_id)
    assert state["status"] == "running"

    before = time.time_ns()
    code, finished_at, oom = await exited(monitor)
    assert (code, oom) == (3, False)
    assert before - 5_000_000_000 < finished_at <= time.time_ns()
    assert not monitor.lost
    with open(paths.exit_file, "rb") as f:
        assert f.read() == b"3"  # decimal, no newline
    assert lab.conmon.read_exit(container_id, bundle) == (3, finished_at, False)
    # Another waiter, later, gets the same answer.
    assert (await monitor.exited) == (3, finished_at, False)
    # The monitor was reaped here (this process is a subreaper, as the
    # daemon is); its own status mirrors the container's.
    assert monitor.conmon_exited and monitor.conmon_exit_code == 3
    assert not os.path.exists(f"/proc/{monitor.conmon_pid}")

    records = lab.log_records(lab.log_path(container_id))
    assert ("stdout", "F", "hello") in records
    assert ("stderr", "F", "err") in records
    assert (await lab.runtime.state(container_id))["status"] == "stopped"

    await lab.runtime.delete(container_id)
    assert await lab.runtime.state(container_id) is None
    await lab.runtime.delete(container_id)  # idempotent
    lab.conmon.cleanup(paths)
    lab.conmon.cleanup(paths)  # idempotent
    for path in paths.files():
        assert not os.path.lexists(path), path


@pytest_twisted.ensureDeferred
async def test_kill_reports_128_plus_signal(lab):
    container_id, _, monitor = await lab.run(["sleep", "100"])
    assert (await lab.runtime.state(container_id))["status"] == "running"
    await lab.runtime.kill(container_id, "KILL")
    code, _, oom = await exited(monitor)
    assert (code, oom) == (137, False)
    # Signalling a stopped or unknown container is not an error.
    await lab.runtime.kill(container_id, "KILL")
    await lab.runtime.kill(container_id, "TERM", all_processes=True)
    await lab.runtime.kill("no-such-container", "KILL")
    with pytest.raises(RuntimeFailure, match="container not running|cannot start"):
        await lab.runtime.start(container_id)


@pytest_twisted.ensureDeferred
async def test_missing_executable_fails_and_leaves_nothing(lab):
    with pytest.raises(RuntimeFailure) as info:
        await lab.create(["no-such-program", "arg"])
    message = str(info.value)
    assert "executable file not found" in message, message
    assert "level=error" not in message and "time=" not in message, message
    container_id = lab.ids[-1]
    assert await lab.runtime.state(container_id) is None
    await wait_for(lambda: not conmon_pids_for(lab.base), 5, "conmon to exit")
    paths = lab.conmon.paths(container_id, os.path.join(lab.base, "b-" + container_id))
    for path in paths.files():
        assert not os.path.lexists(path), path


@pytest_twisted.ensureDeferred
async def test_oom_kill_is_reported(lab):
    # dd's 32 MiB block buffer is faulted in by reading /dev/zero into it:
    # far more than the 8 MiB the container may use.
    container_id, bundle, monitor = await lab.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=4"],
        resources={"memory": {"limit": 8 * 1024 * 1024}},
    )
    code, _, oom = await exited(monitor)
    assert oom is True
    assert code == 137
    assert any(os.path.exists(p) for p in monitor.paths.oom_files)
    assert lab.conmon.read_exit(container_id, bundle)[2] is True


@pytest_twisted.ensureDeferred
async def test_update_resources(lab):
    container_id, _, monitor = await lab.run(["sleep", "100"])
    await lab.runtime.update(container_id, {"memory": {"limit": 64 * 1024 * 1024}})
    limit_file = os.path.join(lab.layout.v1["memory"], lab.cgroup_parent.lstrip("/"), container_id,
                              "memory.limit_in_bytes") if lab.layout.mode != "v2" else None
    if limit_file:
        with open(limit_file) as f:
            assert int(f.read()) == 64 * 1024 * 1024
    with pytest.raises(RuntimeFailure):
        await lab.runtime.update("no-such-container", {"memory": {"limit": 1 << 26}})
    await lab.runtime.kill(container_id, "KILL")
    assert (await exited(monitor))[0] == 137


@pytest_twisted.ensureDeferred
async def test_reopen_log_after_rotation(lab):
    container_id, _, monitor = await lab.run(
        ["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done"]
    )
    log_path = lab.log_path(container_id)
    await wait_for(lambda: len(lab.log_records(log_path)) >= 3, 10, "first log lines")
    rotated = log_path + ".1"
    os.rename(log_path, rotated)
    lab.conmon.reopen_log(monitor.paths)
    await wait_for(lambda: len(lab.log_records(log_path)) >= 3, 10, "lines in the reopened log")
    old = [text for _, _, text in lab.log_records(rotated)]
    new = [text for _, _, text in lab.log_records(log_path)]
    assert not set(old) & set(new)
    assert int(new[0].removeprefix("line")) > int(old[0].removeprefix("line"))
    # A resize of a container without a tty is harmless to conmon.
    lab.conmon.resize(monitor.paths, 40, 120)
    await lab.runtime.kill(container_id, "KILL")
    assert (await exited(monitor))[0] == 137
    with pytest.raises(RuntimeFailure, match="container is not running"):
        lab.conmon.reopen_log(monitor.paths)


@pytest_twisted.ensureDeferred
async def test_adopt_running_container(lab):
    container_id, bundle, monitor = await lab.run(["sleep", "100"])
    restarted = lab.new_conmon()  # a daemon that did not spawn this conmon
    adopted = restarted.adopt(container_id, bundle, monitor.conmon_pid, monitor.container_pid)
    assert adopted.adopted and adopted.running
    await sleep(0.3)
    assert not adopted.exited.called
    await lab.runtime.kill(container_id, "KILL")
    code, finished_at, oom = await exited(adopted)
    assert (code, oom) == (137, False)
    assert (await exited(monitor)) == (code, finished_at, oom)


@pytest_twisted.ensureDeferred
async def test_adopt_after_exit_while_nobody_watched(lab):
    container_id, bundle, monitor = await lab.run(["sh", "-c", "exit 4"])
    await exited(monitor)
    mtime = os.stat(monitor.paths.exit_file).st_mtime_ns
    restarted = lab.new_conmon()
    adopted = restarted.adopt(container_id, bundle, monitor.conmon_pid, monitor.container_pid)
    d = adopted.exited
    assert d.called  # at once, from the exit file
    assert (await d) == (4, mtime, False)


@pytest_twisted.ensureDeferred
async def test_adopt_without_exit_file_or_processes(lab):
    # The daemon's records name a conmon that is gone (pid reused by another
    # program, here this test process) and wrote no exit file.
    bundle = os.path.join(lab.base, "b-gone")
    os.makedirs(bundle)
    adopted = lab.new_conmon().adopt("gone", bundle, os.getpid(), 0)
    code, _, oom = await exited(adopted, 5)
    assert (code, oom, adopted.lost) == (UNKNOWN_EXIT_CODE, False, True)


@pytest_twisted.ensureDeferred
async def test_conmon_killed_while_its_container_runs(lab):
    # The monitor dies; the container runs on (it becomes this subreaper's
    # child) and its end is still seen, with an unknown exit code.
    container_id, _, monitor = await lab.run(["sleep", "100"])
    os.kill(monitor.conmon_pid, signal.SIGKILL)
    await wait_for(lambda: monitor.conmon_exited, 5, "conmon's end to be seen")
    assert proc_state(monitor.conmon_pid) is None  # reaped
    assert monitor.running and alive(monitor.container_pid)
    assert proc_state(monitor.container_pid)[2] == os.getpid()
    await lab.runtime.kill(container_id, "KILL")
    code, _, oom = await exited(monitor)
    assert (code, oom, monitor.lost) == (UNKNOWN_EXIT_CODE, False, True)
    assert proc_state(monitor.container_pid) is None  # reaped too


@pytest_twisted.ensureDeferred
async def test_delete_removes_what_a_killed_runc_left(lab):
    # runc killed during its create leaves a state dir it does not know,
    # and possibly the bind mount of its own binary it makes there.
    state_dir = os.path.join(lab.runtime.state_root, "half-made")
    os.makedirs(state_dir)
    clone = os.path.join(state_dir, "runc.Xy12Zw")
    open(clone, "w").close()
    mounts.mount(RUNC, clone, "", MS_BIND)
    try:
        assert mount_points_under(state_dir) == [clone]
        await lab.runtime.delete("half-made")
        assert mount_points_under(state_dir) == [] and not os.path.exists(state_dir)
    finally:
        mounts.unmount(clone)


@pytest_twisted.ensureDeferred
async def test_kill_created_container(lab):
    # StopContainer of a container that was never started.
    container_id, _, monitor = await lab.create(["sleep", "100"])
    await lab.runtime.kill(container_id, "KILL")
    assert (await exited(monitor))[0] == 137
    assert (await lab.runtime.state(container_id))["status"] == "stopped"


def _runc_pids(lab: Lab) -> list[int]:
    """Live runc processes (create, init) run with this test's state root."""
    return [pid for pid, cmdline in live_cmdlines()
            if lab.runc_root.encode() in cmdline and not cmdline.startswith(b"conmon")]


@pytest_twisted.ensureDeferred
async def test_failed_cgroup_placement_kills_conmon(lab):
    def refuse(pid: int) -> None:
        raise RuntimeFailure(f"no cgroup for {pid}")

    container_id = "cgfail"
    bundle = lab.bundle(container_id, ["sleep", "100"])
    with pytest.raises(RuntimeFailure, match="no cgroup for"):
        await lab.conmon.create(container_id, bundle, lab.log_path(container_id), cgroup=refuse)
    lab.ids.append(container_id)
    assert not conmon_pids_for(lab.base)
    assert await lab.runtime.state(container_id) is None
    assert not any(os.path.lexists(p) for p in lab.conmon.paths(container_id, bundle).files())


@pytest_twisted.ensureDeferred
async def test_create_timeout_before_the_monitor_leaves_nothing(lab):
    # The deadline strikes while the launcher has not forked the monitor yet.
    impatient = Conmon(reactor, lab.runtime, CONMON, exits_dir=lab.exits, socket_dir=lab.sockets,
                       create_timeout=0.0)
    container_id = "slow"
    lab.ids.append(container_id)
    bundle = lab.bundle(container_id, ["sleep", "100"])
    with pytest.raises(DeadlineExceeded, match=r"conmon did not start its monitor within 0s"):
        await impatient.create(container_id, bundle, lab.log_path(container_id), cgroup=lab.place_conmon)
    assert not conmon_pids_for(lab.base)
    await wait_for(lambda: not _runc_pids(lab), 5, "runc processes to end")
    assert await lab.runtime.state(container_id) is None
    assert not any(os.path.lexists(p) for p in impatient.paths(container_id, bundle).files())


@pytest_twisted.ensureDeferred
async def test_create_timeout_while_the_runtime_runs_leaves_nothing(lab):
    # The monitor runs a "runtime" whose create never ends: the deadline
    # kills the monitor and what it runs.
    slow_runtime = os.path.join(lab.base, "slow-runtime")
    marker = os.path.join(lab.base, "slow-runtime.pid")
    with open(slow_runtime, "w") as f:
        f.write(f'#!/bin/sh\ncase " $* " in *" create "*) echo $$ > {marker}; exec sleep 100;; esac\nexit 0\n')
    os.chmod(slow_runtime, 0o755)
    runtime = OCIRuntime(reactor, slow_runtime, os.path.join(lab.base, "slow-root"))
    impatient = Conmon(reactor, runtime, CONMON, exits_dir=lab.exits, socket_dir=lab.sockets, create_timeout=1.0)
    container_id = "stuck"
    bundle = lab.bundle(container_id, ["sleep", "100"])
    with pytest.raises(DeadlineExceeded, match=r"conmon did not report within 1s"):
        await impatient.create(container_id, bundle, lab.log_path(container_id), cgroup=lab.place_conmon)
    with open(marker) as f:
        stuck = int(f.read())
    assert not conmon_pids_for(lab.base)
    await wait_for(lambda: not alive(stuck), 5, "the runtime's create to be killed")
    assert not any(os.path.lexists(p) for p in impatient.paths(container_id, bundle).files())
