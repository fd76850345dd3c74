"""SandboxManager on in-memory drivers (tests/unit/pod_world.py): the pod
lifecycle, its records, the undo of a failed RunPodSandbox, CNI DELs kept
for a retry, snapshots. No root, no processes."""

from __future__ import annotations

import os
import time
from dataclasses import FrozenInstanceError

import pytest
from twisted.internet import reactor

from rktlet.errors import AlreadyExists, RuntimeFailure
from rktlet.pod.sandbox import CREATING, MODE_POD, NOTREADY, READY
from rktlet.pod.sandboxes import SandboxManager
from tests.unit.pod_world import EPOCH_START, InlineThreads, done, pod_spec


def pod_cgroup(sb) -> str:
    return "/sys/fs/cgroup" + sb.cgroup_parent


def test_run_stop_remove_with_the_records_at_each_step(world):
    sb = world.run_pod()
    assert sb.state == READY and sb.ips == ["10.89.0.2"]
    assert sb.created_at == EPOCH_START * 1_000_000_000  # the injected clock's, in ns
    assert world.stored(world.pod_record(sb.id))["state"] == READY
    assert set(sb.namespaces) == {"net", "ipc", "uts"}
    assert set(sb.namespaces.values()) <= world.host.pinned
    assert world.host.hostnames[sb.namespaces["uts"]] == "web"
    assert sb.netns in world.host.loopback
    assert world.host.mounts[sb.shm].fstype == "tmpfs"
    assert pod_cgroup(sb) in world.host.cgroups
    assert os.path.isfile(os.path.join(sb.dir, "hosts"))

    done(world.sandboxes.stop(sb.id))
    assert world.sandboxes.get(sb.id).state == NOTREADY
    assert world.stored(world.pod_record(sb.id))["state"] == NOTREADY
    assert sb.netns not in world.host.pinned  # the network is released at stop
    assert world.network.allocated() == []
    done(world.sandboxes.stop(sb.id))  # idempotent

    done(world.sandboxes.remove(sb.id))
    assert world.sandboxes.find(sb.id) is None and world.sandboxes.list() == []
    assert world.stored(world.pod_record(sb.id)) is None
    assert world.host.pinned == set() and world.host.mounts == {}
    assert pod_cgroup(sb) not in world.host.cgroups
    assert not os.path.exists(sb.dir)
    done(world.sandboxes.remove(sb.id))  # idempotent


def test_a_retried_run_returns_the_same_pod_and_another_config_is_refused(world):
    sb = world.run_pod()
    assert world.run_pod().id == sb.id
    with pytest.raises(AlreadyExists, match="different config"):
        world.run_pod(pod_spec(fingerprint="another"))
    done(world.sandboxes.stop(sb.id))
    with pytest.raises(AlreadyExists, match="remove it first"):
        world.run_pod()


def test_a_failing_cni_add_undoes_the_pod(world):
    world.network.fail_next_add()
    with pytest.raises(RuntimeFailure, match="CNI ADD"):
        world.run_pod()
    assert world.sandboxes.list() == [] and world.sandboxes.sandboxes == {}
    assert os.listdir(os.path.join(world.root, "pods")) == []
    assert world.host.mounts == {} and world.host.pinned == set()
    assert world.host.cgroups <= {"/sys/fs/cgroup/rktlet"}  # the shared parent stays
    assert world.network.allocated() == []
    assert world.run_pod().state == READY  # the name is free again


def test_a_failing_cni_del_at_removal_is_kept_and_retried(world):
    sb = world.run_pod()
    world.network.fail_next_delete()
    done(world.sandboxes.remove(sb.id))
    assert world.sandboxes.find(sb.id) is None
    assert world.host.pinned == set() and world.host.mounts == {}  # the rest is released anyway
    assert world.sandboxes.pending_cni_deletes() == [sb.id]
    assert world.network.allocated() == ["10.89.0.2"]
    world.network.fail_next_delete()
    done(world.sandboxes.retry_cni_deletes())
    assert world.sandboxes.pending_cni_deletes() == [sb.id]  # failed again: still pending
    done(world.sandboxes.retry_cni_deletes())
    assert world.sandboxes.pending_cni_deletes() == [] and world.network.allocated() == []


def test_a_pod_pid_namespace_has_an_infra_process_in_the_pod_cgroup(world):
    sb = world.run_pod(pod_spec(pid_mode=MODE_POD))
    assert sb.infra_pid in world.host.infra
    assert sb.infra_pid in world.host.procs[pod_cgroup(sb)]
    done(world.sandboxes.stop(sb.id))
    assert sb.infra_pid not in world.host.infra


def test_pod_resources_go_to_its_cgroup(world):
    sb = world.run_pod()
    done(world.sandboxes.update_resources(sb.id, {"memory": {"limit": 1 << 30}}))
    assert world.host.resources[sb.cgroup_parent] == {"memory": {"limit": 1 << 30}}


def test_snapshots_do_not_follow_the_live_record(world):
    sb = world.run_pod()
    listed, status = world.sandboxes.list()[0], world.sandboxes.status(sb.id)
    done(world.sandboxes.stop(sb.id))
    assert (listed.state, status.state) == (READY, READY)
    assert world.sandboxes.status(sb.id).state == NOTREADY
    with pytest.raises(FrozenInstanceError):
        status.state = CREATING
    assert world.sandboxes.list(state=READY) == []


def test_a_pod_that_lost_its_namespaces_is_notready_after_a_restart(world):
    sb = world.run_pod()
    world.host.pinned.clear()  # a reboot
    again = world.restarted()
    assert again.sandboxes.get(sb.id).state == NOTREADY
    assert again.stored(again.pod_record(sb.id))["state"] == NOTREADY


def test_a_pod_left_creating_by_a_crash_is_undone_at_start_up(world):
    sb = world.run_pod()
    sb.state = CREATING  # as if the daemon died before the last commit
    world.sandboxes._store.save(sb)
    again = world.restarted()
    assert again.sandboxes.find(sb.id) is None and again.stored(again.pod_record(sb.id)) is None
    assert again.host.pinned == set() and again.host.mounts == {}
    assert pod_cgroup(sb) not in again.host.cgroups
    assert again.network.allocated() == [] and not os.path.exists(sb.dir)


def test_an_intact_pod_stays_ready_after_a_restart(world):
    sb = world.run_pod(pod_spec(pid_mode=MODE_POD))
    again = world.restarted()
    assert again.sandboxes.get(sb.id).state == READY


def test_times_are_ns_since_the_epoch_with_the_real_reactor(world):
    manager = SandboxManager(reactor, InlineThreads(), world.config, world.sandboxes._store, world.network,
                             world.sandboxes.handlers, world.host)
    assert abs(manager._now_ns() - time.time_ns()) < 1_000_000_000
