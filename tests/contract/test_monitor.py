"""The ``MonitorDriver`` and ``Monitor`` contract (:mod:`rktlet.pod.drivers`):
FakeMonitorDriver and conmon (through Conmon)."""

from __future__ import annotations

import pytest
import pytest_twisted

from rktlet.errors import InvalidArgument, RuntimeFailure


@pytest_twisted.ensureDeferred
async def test_create_start_kill_reports_the_signal_exit(oci):
    container_id, bundle, monitor = await oci.create()
    assert monitor.conmon_pid > 0 and monitor.container_pid > 0
    assert not monitor.exited.called
    await oci.runtime.start(container_id)
    assert oci.driver.read_exit(container_id, bundle) is None
    await oci.runtime.kill(container_id, "KILL")
    code, finished_at, oom = await oci.wait(monitor.exited)
    assert (code, oom) == (137, False)
    assert finished_at > 0
    assert oci.driver.read_exit(container_id, bundle) == (137, finished_at, False)
    assert (await oci.wait(monitor.exited)) == (137, finished_at, False)  # every waiter, later too


@pytest_twisted.ensureDeferred
async def test_an_exit_of_its_own_gives_its_code(oci):
    container_id, bundle, monitor = await oci.started()
    oci.let_exit(container_id, bundle, 3)
    code, _, oom = await oci.wait(monitor.exited)
    assert (code, oom) == (3, False)


@pytest_twisted.ensureDeferred
async def test_a_wait_cancelled_leaves_the_others(oci):
    container_id, bundle, monitor = await oci.started()
    impatient = monitor.exited
    impatient.cancel()
    impatient.addErrback(lambda f: None)
    oci.let_exit(container_id, bundle, 4)
    code, _, _ = await oci.wait(monitor.exited)
    assert code == 4


@pytest_twisted.ensureDeferred
async def test_after_a_restart_the_exit_file_tells_an_exit_that_came_meanwhile(oci):
    container_id, bundle, monitor = await oci.started()
    conmon_pid, container_pid = monitor.conmon_pid, monitor.container_pid
    driver = oci.restart()  # the daemon is down: nobody watches
    oci.let_exit(container_id, bundle, 5)
    adopted = driver.adopt(container_id, bundle, conmon_pid, container_pid)
    code, finished_at, _ = await oci.wait(adopted.exited)
    assert code == 5
    assert driver.read_exit(container_id, bundle) == (5, finished_at, False)


@pytest_twisted.ensureDeferred
async def test_an_adopted_running_monitor_reports_the_end(oci):
    container_id, bundle, monitor = await oci.started()
    driver = oci.restart()
    adopted = driver.adopt(container_id, bundle, monitor.conmon_pid, monitor.container_pid)
    assert not adopted.exited.called
    await oci.runtime.kill(container_id, "KILL")
    code, _, _ = await oci.wait(adopted.exited)
    assert code == 137


@pytest_twisted.ensureDeferred
async def test_cleanup_removes_the_exit_file_and_is_idempotent(oci):
    container_id, bundle, monitor = await oci.started()
    await oci.runtime.kill(container_id, "KILL")
    await oci.wait(monitor.exited)
    await oci.runtime.delete(container_id)
    paths = oci.driver.paths(container_id, bundle)
    oci.driver.cleanup(paths)
    oci.driver.cleanup(paths)
    assert oci.driver.read_exit(container_id, bundle) is None
    oci.driver.forget(container_id)
    oci.driver.forget(container_id)


@pytest_twisted.ensureDeferred
async def test_log_reopen_needs_a_live_monitor(oci):
    container_id, bundle, monitor = await oci.started()
    paths = oci.driver.paths(container_id, bundle)
    oci.driver.reopen_log(paths)
    await oci.runtime.kill(container_id, "KILL")
    await oci.wait(monitor.exited)
    with pytest.raises(RuntimeFailure, match="not running"):
        oci.driver.reopen_log(paths)
    with pytest.raises(RuntimeFailure, match="not running"):
        oci.driver.resize(paths, 24, 80)


@pytest_twisted.ensureDeferred
async def test_kill_leftover_kills_an_unadopted_monitor_once(oci):
    container_id, bundle, monitor = await oci.started()
    driver = oci.restart()
    assert driver.kill_leftover(container_id, bundle) == monitor.conmon_pid
    assert driver.kill_leftover(container_id, bundle) is None
    await oci.runtime.delete(container_id, force=True)
    assert await oci.runtime.state(container_id) is None


@pytest_twisted.ensureDeferred
async def test_leftover_pid_names_a_live_monitor_only(oci):
    container_id, bundle, monitor = await oci.started()
    driver = oci.restart()
    assert driver.leftover_pid(container_id, bundle) == monitor.conmon_pid
    other_id, other_bundle = oci.bundle()
    assert driver.leftover_pid(other_id, other_bundle) is None  # never started
    oci.let_exit(container_id, bundle, 0)
    adopted = driver.adopt(container_id, bundle, monitor.conmon_pid, monitor.container_pid)
    await oci.wait(adopted.exited)  # fires once the monitor is gone
    assert driver.leftover_pid(container_id, bundle) is None


@pytest_twisted.ensureDeferred
async def test_create_wants_an_absolute_log_path_and_leaves_nothing(oci):
    container_id, bundle = oci.bundle()
    with pytest.raises(InvalidArgument):
        await oci.driver.create(container_id, bundle, "relative.log", cgroup=oci.place)
    assert await oci.runtime.state(container_id) is None


@pytest_twisted.ensureDeferred
async def test_a_bad_container_id_is_refused(oci):
    with pytest.raises(InvalidArgument):
        oci.driver.paths("../escape", "/nowhere")
