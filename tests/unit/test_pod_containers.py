"""ContainerManager on in-memory drivers (tests/unit/pod_world.py): the
container lifecycle, races with removals, events and snapshots. No root,
no processes; time is the world's Clock."""

from __future__ import annotations

import os
from dataclasses import FrozenInstanceError

import pytest

from rktlet.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from rktlet.oci.container_config import ContainerConfig, Resources, Security
from rktlet.pod import events
from rktlet.pod.container import CREATED, EXITED, RUNNING
from rktlet.pod.sandbox import READY
from tests.unit.pod_world import EPOCH_START, IMAGE, done, outcome, pending

NS = 1_000_000_000


def rootfs(c) -> str:
    return os.path.join(c.bundle, "rootfs")


def test_create_start_stop_with_grace_remove(world, pod):
    c = world.create(pod)
    assert c.state == CREATED and c.created_at == EPOCH_START * NS
    assert world.stored(world.container_record(c.id))["state"] == CREATED
    assert os.path.isfile(os.path.join(c.bundle, "config.json"))
    assert world.host.mounts[rootfs(c)].fstype == "overlay"
    assert c.user["uid"] == 0

    world.clock.advance(1)
    done(world.containers.start(c.id))
    assert c.state == RUNNING and c.started_at == (EPOCH_START + 1) * NS
    assert world.stored(world.container_record(c.id))["state"] == RUNNING
    assert world.runtime.containers[c.id].status == "running"
    conmon_pid = world.monitors.files.live[c.id]
    assert conmon_pid in world.host.procs["/sys/fs/cgroup" + pod.cgroup_parent]  # the monitor in the pod's cgroup

    world.runtime.ignore(c.id, "TERM")  # PID 1 without handlers
    stopping = pending(world.containers.stop(c.id, 5))
    world.clock.advance(4.9)
    assert not stopping.called and c.state == RUNNING
    world.clock.advance(0.1)
    assert outcome(stopping) is None
    assert (c.state, c.exit_code, c.reason) == (EXITED, 137, "Error")
    assert c.finished_at == (EPOCH_START + 6) * NS
    assert world.stored(world.container_record(c.id))["state"] == EXITED
    world.clock.advance(0)  # the exited container is deleted from the runtime soon after
    assert c.id not in world.runtime.containers

    done(world.containers.remove(c.id))
    assert world.containers.find(c.id) is None and world.stored(world.container_record(c.id)) is None
    assert not os.path.exists(c.bundle) and not os.path.exists(c.layer_dir)
    assert rootfs(c) not in world.host.mounts
    assert world.monitors.read_exit(c.id, c.bundle) is None  # the monitor's files too
    done(world.containers.remove(c.id))  # idempotent


@pytest.mark.parametrize("code, reason", [(0, "Completed"), (3, "Error")])
def test_the_app_exit_code_is_recorded(world, pod, code, reason):
    c = world.started(pod)
    world.clock.advance(2)
    world.runtime.exit(c.id, code)
    assert (c.state, c.exit_code, c.reason, c.finished_at) == (EXITED, code, reason, (EPOCH_START + 2) * NS)
    world.clock.advance(0)
    assert c.id not in world.runtime.containers


def test_a_start_failure_is_exited_start_error(world, pod):
    c = world.create(pod)
    world.runtime.fail_next("start", "exec format error")
    with pytest.raises(RuntimeFailure, match="exec format error"):
        done(world.containers.start(c.id))
    assert (c.state, c.exit_code, c.reason) == (EXITED, 128, "StartError")
    assert c.id not in world.runtime.containers
    with pytest.raises(FailedPrecondition, match="cannot be started again"):
        done(world.containers.start(c.id))


def test_a_failed_monitor_create_leaves_the_container_start_error(world, pod):
    c = world.create(pod)
    world.monitors.fail_next_create("runc create failed")
    with pytest.raises(RuntimeFailure, match="runc create failed"):
        done(world.containers.start(c.id))
    assert (c.state, c.reason) == (EXITED, "StartError")


def test_create_retries_conflicts_and_refusals(world, pod):
    c = world.create(pod)
    assert world.create(pod).id == c.id
    with pytest.raises(AlreadyExists, match="different config"):
        world.create(pod, fingerprint="other")
    with pytest.raises(NotFound, match="pull it first"):
        done(world.containers.create(pod.id, ContainerConfig(name="x"), "nothing:here", 0, "f", {}, {}, ""))
    # A named user needs the image's /etc/passwd; the fake host's root
    # filesystem is an empty mount point.
    with pytest.raises(InvalidArgument, match="www"):
        world.create(pod, "named", config=ContainerConfig(name="named", security=Security(run_as_username="www")))
    done(world.sandboxes.stop(pod.id))
    with pytest.raises(FailedPrecondition, match="not ready"):
        world.create(pod, "late")


def test_create_racing_pod_removal_fails_and_the_removal_waits(world, pod):
    world.threads.hold()  # the create stops at its bundle work
    creating = pending(world.containers.create(pod.id, ContainerConfig(name="app"), IMAGE, 0, "f", {}, {}, ""))
    removing = pending(world.sandboxes.remove(pod.id, world.containers))
    assert not creating.called and not removing.called  # the removal waits for the create's lock
    world.threads.release()
    failure = outcome(creating)
    assert failure.check(FailedPrecondition) and "being removed" in failure.getErrorMessage()
    assert outcome(removing) is None
    assert world.containers.containers == {} and world.sandboxes.find(pod.id) is None
    assert os.listdir(os.path.join(world.run_dir, "containers")) == []
    assert world.host.mounts == {}


def test_stop_racing_remove(world, pod):
    c = world.started(pod)
    world.runtime.ignore(c.id, "TERM")
    stopping = pending(world.containers.stop(c.id, 30))
    removing = pending(world.containers.remove(c.id))
    assert outcome(removing) is None and outcome(stopping) is None  # the removal's KILL ends the wait
    assert world.containers.find(c.id) is None and c.id not in world.runtime.containers


def test_two_removes(world, pod):
    c = world.started(pod)
    world.runtime.exit_delay = 1.0  # the KILL takes a second to end it
    first, second = pending(world.containers.remove(c.id)), pending(world.containers.remove(c.id))
    assert not first.called and not second.called
    world.clock.advance(1)
    assert outcome(first) is None and outcome(second) is None
    assert world.containers.find(c.id) is None and world.runtime.calls.count(("delete", c.id)) <= 2
    assert not os.path.exists(c.bundle)


def test_removing_the_pod_removes_its_containers(world, pod):
    c = world.started(pod)
    done(world.sandboxes.remove(pod.id, world.containers))
    assert world.containers.find(c.id) is None and world.runtime.containers == {}
    assert world.host.mounts == {} and world.host.pinned == set()


def test_events_carry_frozen_snapshots(world, pod):
    subscription = world.containers.events.subscribe()
    c = world.started(pod)
    world.clock.advance(3)
    done(world.containers.stop(c.id, 0))
    done(world.containers.remove(c.id))
    subscription.close()
    seen = list(subscription)
    assert [e.kind for e in seen] == [events.CREATED, events.STARTED, events.STOPPED, events.DELETED]
    assert all(e.container_id == c.id for e in seen)
    assert seen[2].created_at == (EPOCH_START + 3) * NS
    states = [next(x.state for x in e.containers if x.id == c.id) for e in seen[:3]]
    assert states == [CREATED, RUNNING, EXITED]  # as they were then
    assert seen[0].sandbox.state == READY
    with pytest.raises(FrozenInstanceError):
        seen[0].containers[0].state = RUNNING
    with pytest.raises(FrozenInstanceError):
        seen[0].sandbox.state = "x"


def test_snapshots_do_not_follow_the_live_record(world, pod):
    c = world.started(pod)
    listed, status = world.containers.list()[0], world.containers.status(c.id)
    world.runtime.exit(c.id, 1)
    assert (listed.state, status.state, c.state) == (RUNNING, RUNNING, EXITED)
    assert world.containers.status(c.id).state == EXITED
    assert [x.id for x in world.containers.list(state=EXITED, sandbox_prefix=pod.id[:12])] == [c.id]
    with pytest.raises(FrozenInstanceError):
        status.exit_code = 0


def test_resources_of_a_running_container_go_to_the_runtime(world, pod):
    c = world.started(pod)
    done(world.containers.update_resources(c.id, Resources(cpu_shares=512)))
    assert world.runtime.containers[c.id].resources.get("cpu", {}).get("shares") == 512


@pytest.mark.parametrize("release_fails", [False, True])
def test_remove_does_not_wait_for_the_release_of_an_exited_container(world, pod, monkeypatch, release_fails):
    """An exited container is deleted from the runtime right after its exit;
    a RemoveContainer arriving meanwhile answers at once, and the files
    follow once that delete is over (done again if it failed)."""
    from twisted.internet.defer import Deferred

    c = world.started(pod)
    real_delete, gate = world.runtime.delete, Deferred()

    async def slow_delete(container_id: str, force: bool = True) -> None:
        await gate
        await real_delete(container_id, force)

    monkeypatch.setattr(world.runtime, "delete", slow_delete)
    world.runtime.exit(c.id, 0)
    world.clock.advance(0)  # the release starts and waits on the gate
    done(world.containers.remove(c.id))  # answered without waiting for it
    assert world.containers.find(c.id) is None and world.stored(world.container_record(c.id)) is None
    assert os.path.exists(c.bundle) and c.id in world.runtime.containers  # not yet
    assert set(c.chain_ids) <= set(world.containers.layers_in_use())  # its layers kept meanwhile
    monkeypatch.setattr(world.runtime, "delete", real_delete)
    if release_fails:
        gate.errback(RuntimeFailure("runc delete: injected failure"))
    else:
        gate.callback(None)
    assert c.id not in world.runtime.containers  # deleted (again, after a failed release)
    assert not os.path.exists(c.bundle) and rootfs(c) not in world.host.mounts
    assert world.containers.layers_in_use() == []


def test_a_recursive_read_only_mount_needs_a_runtime_that_knows_rro(world, pod):
    """rro goes into the bind's options when the handler's runtime lists it
    (``runc features``); otherwise CreateContainer refuses, naming the handler."""
    import json

    from rktlet.oci.container_config import Mount
    from rktlet.oci.runtime import RuntimeFeatures

    mount = Mount("/mnt", world.base, readonly=True, recursive_read_only=True)
    done(world.runtime.probe_features())
    c = world.create(pod, name="rro", config=ContainerConfig(name="rro", mounts=(mount,)))
    with open(os.path.join(c.bundle, "config.json")) as f:
        spec = json.load(f)
    assert [m["options"] for m in spec["mounts"] if m["destination"] == "/mnt"] == [["rbind", "rprivate", "ro", "rro"]]
    world.runtime.supported = RuntimeFeatures()
    done(world.runtime.probe_features())
    with pytest.raises(InvalidArgument, match="recursive read-only mounts are not supported by runtime handler"):
        world.create(pod, name="rro2", config=ContainerConfig(name="rro2", mounts=(mount,)))
