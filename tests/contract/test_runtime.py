"""The ``Runtime`` contract (:mod:`rktlet.pod.drivers`): FakeRuntime and
runc (through OCIRuntime), containers created by their monitor driver."""

from __future__ import annotations

import pytest
import pytest_twisted

from rktlet.errors import RuntimeFailure
from rktlet.pod import recovery

ABSENT = "c" + "0" * 12


@pytest_twisted.ensureDeferred
async def test_an_absent_container_has_no_state_and_deletes_and_kills_fine(oci):
    assert await oci.runtime.state(ABSENT) is None
    await oci.runtime.delete(ABSENT, force=True)
    await oci.runtime.delete(ABSENT, force=False)
    await oci.runtime.kill(ABSENT, "KILL")
    await oci.runtime.kill(ABSENT, "TERM", all_processes=True)


@pytest_twisted.ensureDeferred
async def test_starting_or_updating_an_absent_container_fails(oci):
    with pytest.raises(RuntimeFailure):
        await oci.runtime.start(ABSENT)
    with pytest.raises(RuntimeFailure):
        await oci.runtime.update(ABSENT, {"pids": {"limit": 100}})


@pytest_twisted.ensureDeferred
async def test_created_started_killed_deleted(oci):
    container_id, bundle, monitor = await oci.create()
    state = await oci.runtime.state(container_id)
    assert state["status"] == "created" and state["pid"] == monitor.container_pid > 0
    assert recovery.runc_created_ns(state) is not None  # what start-up recovery reads
    assert container_id in await oci.runtime.list_ids()

    await oci.runtime.start(container_id)
    assert (await oci.runtime.state(container_id))["status"] == "running"
    with pytest.raises(RuntimeFailure):
        await oci.runtime.start(container_id)  # once only

    await oci.runtime.kill(container_id, "KILL")
    code, _, _ = await oci.wait(monitor.exited)
    assert code == 137
    assert (await oci.runtime.state(container_id))["status"] == "stopped"
    await oci.runtime.kill(container_id, "KILL")  # not running: fine

    await oci.runtime.delete(container_id, force=False)  # stopped: no force needed
    assert await oci.runtime.state(container_id) is None
    assert container_id not in await oci.runtime.list_ids()
    await oci.runtime.delete(container_id)  # idempotent


@pytest_twisted.ensureDeferred
async def test_a_running_container_is_deleted_only_by_force(oci):
    container_id, _, monitor = await oci.started()
    with pytest.raises(RuntimeFailure):
        await oci.runtime.delete(container_id, force=False)
    assert (await oci.runtime.state(container_id))["status"] == "running"
    await oci.runtime.delete(container_id, force=True)
    code, _, _ = await oci.wait(monitor.exited)
    assert code == 137
    assert await oci.runtime.state(container_id) is None


@pytest_twisted.ensureDeferred
async def test_a_created_container_is_deleted_without_force(oci):
    container_id, _, _ = await oci.create()
    await oci.runtime.delete(container_id, force=False)
    assert await oci.runtime.state(container_id) is None


@pytest_twisted.ensureDeferred
async def test_an_ignored_signal_leaves_it_running_and_kill_all_ends_it(oci):
    container_id, _, monitor = await oci.started()
    await oci.runtime.kill(container_id, "TERM")  # PID 1 without a handler
    assert (await oci.runtime.state(container_id))["status"] == "running"
    assert not monitor.exited.called
    await oci.runtime.kill(container_id, "KILL", all_processes=True)
    code, _, _ = await oci.wait(monitor.exited)
    assert code == 137


@pytest_twisted.ensureDeferred
async def test_an_unknown_signal_is_refused(oci):
    container_id, _, _ = await oci.started()
    with pytest.raises(RuntimeFailure):
        await oci.runtime.kill(container_id, "NOSUCHSIGNAL")


@pytest_twisted.ensureDeferred
async def test_update_of_a_running_container(oci):
    container_id, _, _ = await oci.started()
    await oci.runtime.update(container_id, {"pids": {"limit": 100}})


@pytest_twisted.ensureDeferred
async def test_features_are_known_once_probed(oci):
    """``runc features`` (runc ≥ 1.1) lists the mount options: this
    machine's runc and the fake both know ``rro``; nothing is claimed
    before the probe."""
    assert oci.runtime.features.recursive_read_only_mounts is False
    features = await oci.runtime.probe_features()
    assert features is oci.runtime.features and features.recursive_read_only_mounts
    assert "ro" in features.mount_options
