"""The daemon killed (SIGKILL) at each step of the pod and container
operations, then started again: it recovers by the rules of
``rktlet.pod.recovery`` — every container ends in the state its step
implies, and once the pods are removed nothing is left (no mount, bundle,
writable layer, runtime state, conmon, IP address or record).

The crash comes from a debug point (``rktlet.debugpoints``) armed through
the daemon's environment for its first life only. A pause at a point lands a
racing request exactly there (the last test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Callable

import grpc
import pytest

from rktlet import debugpoints as points
from rktlet.cri.proto import pb
from harness.runc import test_runc
from harness.containers import container_config, create, start, status
from harness.daemon import Daemon
from harness.network import TestNetwork
from harness.pods import pod_config, pod_status, remove_all_pods, run_pod
from harness.processes import MONITOR_NAMES, processes_mentioning, reap_orphans


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)


class Crashing:
    """A daemon whose first life ends at a debug point, with a test network
    and the busybox image pulled; the pod config (``self.pod``) logs into
    a temporary dir."""

    def __init__(self, image: str, logs: str) -> None:
        self.d = Daemon()
        self.network = TestNetwork(self.d.cni_conf_dir)
        self.network.write()
        self.image = image
        self.pod = pod_config(log_directory=logs)

    def start(self, point: str = "", pause: bool = False) -> "Crashing":
        """Start with *point* armed (if any): a crash there, or with *pause*
        a pause until :attr:`pause_file` is removed."""
        self.pause_file = os.path.join(self.d.base, "paused")
        if not point:
            self.d.env = {}
        elif pause:
            self.d.env = {points.PAUSE_ENV: point, points.PAUSE_FILE_ENV: self.pause_file}
        else:
            self.d.env = {points.CRASH_ENV: point}
        self.d.start()
        self.d.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=self.image)), timeout=60)
        return self

    def with_container(self, point: str = "", command: tuple[str, ...] = ("sleep", "300")) -> tuple[str, str]:
        """Started with *point* armed, a pod and a created container in it:
        ``(pod id, container id)``."""
        self.start(point)
        pod_id = run_pod(self.d, self.pod)
        return pod_id, create(self.d, pod_id, self.pod, self.container(command=command))

    def crash(self, call: Callable[[], object]) -> None:
        """*call* is cut short: the daemon kills itself inside it."""
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        assert self.d.process.wait(timeout=20) == -signal.SIGKILL
        assert "crashing (SIGKILL) on purpose" in self.d.log()
        self.d.stop()
        self.d.env = {}

    def restart(self) -> None:
        self.d.start()

    def container(self, name: str = "c", command: tuple[str, ...] = ("sleep", "300")) -> pb.ContainerConfig:
        return container_config(name, self.image, command=list(command))

    # -- what may be left -----------------------------------------------------

    def mounts(self, under: str = "") -> list[str]:
        """Mount points under the daemon's dirs (with *under* in their path)."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if f" {self.d.base}/" in line]
        return [p for p in points if under in p]

    def containers_dirs(self) -> list[str]:
        found = []
        for place in (os.path.join(self.d.run_dir, "containers"), os.path.join(self.d.root, "containers"),
                      os.path.join(self.d.run_dir, "exits"), os.path.join(self.d.run_dir, "s")):
            if os.path.isdir(place):
                found += [os.path.join(place, n) for n in os.listdir(place)]
        return found

    def in_runtime(self) -> list[str]:
        out = subprocess.run([test_runc(), "--root", os.path.join(self.d.run_dir, "runtime", "runc"), "list", "-q"],
                             capture_output=True, text=True, check=True).stdout
        return out.split()

    def assert_nothing_left(self, *container_ids: str) -> None:
        """Everything removed through the CRI, then: nothing of any
        container or pod is left anywhere."""
        runtime = self.d.runtime()
        for c in runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers:
            runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=30)
        for p in runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
            runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=30)
            runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=30)
        # Files of removed containers go after the answer, and a half-made
        # pod is undone after the restart (CNI DEL first, then its
        # namespaces and /dev/shm): wait a moment.
        wait_until(lambda: not self.mounts() and not self.containers_dirs(),
                   "the removed containers' and pods' files removed", timeout=10)
        assert self.mounts() == []
        assert self.containers_dirs() == []
        assert self.in_runtime() == []
        assert os.listdir(os.path.join(self.d.run_dir, "pods")) == []
        assert [n for n in os.listdir(os.path.join(self.d.root, "pods"))] == []
        assert self.network.allocations() == []
        for cid in container_ids:
            assert processes_mentioning(cid) == [], cid

    def close(self) -> None:
        remove_all_pods(self.d)
        self.d.cleanup()
        # Should recovery have failed, monitors of this daemon may be left:
        # kill them (with their process group: a runc init) by PID.
        for pid in processes_mentioning(self.d.base + "/"):
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                    break
                except (ProcessLookupError, PermissionError):
                    continue
        self.network.cleanup()
        reap_orphans(MONITOR_NAMES)


@pytest.fixture
def crashing(pushed_images, tmp_path):
    c = Crashing(pushed_images["busybox"].ref, str(tmp_path / "logs"))
    try:
        yield c
    finally:
        c.close()


def only_container_id(c: Crashing) -> str:
    names = os.listdir(os.path.join(c.d.run_dir, "containers"))
    assert len(names) == 1, names
    return names[0]


def state_of(c: Crashing, cid: str) -> int:
    return status(c.d, cid).status.state


def test_crash_after_the_bundle_is_made_leaves_nothing(crashing):
    c = crashing.start(points.CONTAINER_CREATE_BUNDLE_MADE)
    pod_id = run_pod(c.d, c.pod)
    c.crash(lambda: create(c.d, pod_id, c.pod, c.container()))
    cid = only_container_id(c)
    assert c.mounts("/containers/"), "the crash left the root filesystem mounted (else this test proves nothing)"
    c.restart()
    wait_until(lambda: not c.mounts("/containers/") and not c.containers_dirs(), "the half-made container swept away")
    assert list(c.d.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
    assert "which a crash left without a record" in c.d.log()
    c.assert_nothing_left(cid)


def test_crash_after_the_record_is_saved_leaves_a_container_that_starts(crashing):
    c = crashing.start(points.CONTAINER_CREATE_SAVED)
    pod_id = run_pod(c.d, c.pod)
    c.crash(lambda: create(c.d, pod_id, c.pod, c.container()))
    cid = only_container_id(c)
    c.restart()
    assert state_of(c, cid) == pb.CONTAINER_CREATED
    start(c.d, cid)
    assert state_of(c, cid) == pb.CONTAINER_RUNNING
    c.assert_nothing_left(cid)


def with_image_volume(c: Crashing) -> pb.ContainerConfig:
    """The container, with the busybox image mounted at /mnt/image as well."""
    config = c.container()
    config.mounts.append(pb.Mount(container_path="/mnt/image", readonly=True, image=pb.ImageSpec(image=c.image)))
    return config


def test_crash_with_an_image_volume_mounted_leaves_nothing(crashing):
    c = crashing.start(points.CONTAINER_CREATE_BUNDLE_MADE)
    pod_id = run_pod(c.d, c.pod)
    c.crash(lambda: create(c.d, pod_id, c.pod, with_image_volume(c)))
    cid = only_container_id(c)
    assert c.mounts("/volumes/"), "the crash left the image volume mounted (else this test proves nothing)"
    c.restart()
    wait_until(lambda: not c.mounts("/containers/") and not c.containers_dirs(), "the half-made container swept away")
    c.assert_nothing_left(cid)


def test_crash_after_a_record_with_an_image_volume_leaves_a_container_that_starts(crashing):
    c = crashing.start(points.CONTAINER_CREATE_SAVED)
    pod_id = run_pod(c.d, c.pod)
    c.crash(lambda: create(c.d, pod_id, c.pod, with_image_volume(c)))
    cid = only_container_id(c)
    c.restart()
    assert state_of(c, cid) == pb.CONTAINER_CREATED
    start(c.d, cid)
    r = c.d.runtime().ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ls", "/mnt/image/bin"], timeout=10), timeout=30)
    assert b"busybox" in r.stdout
    c.assert_nothing_left(cid)


def test_crash_before_runc_start_undoes_the_start(crashing):
    c = crashing
    _, cid = c.with_container(points.CONTAINER_START_RUNC_CREATED)
    c.crash(lambda: start(c.d, cid))
    assert cid in c.in_runtime()
    c.restart()
    start(c.d, cid)  # waits for the reconciliation (it holds the container)
    s = status(c.d, cid, verbose=True)
    assert s.status.state == pb.CONTAINER_RUNNING
    conmon_pid = json.loads(s.info["info"])["conmonPid"]
    monitors = [p for p in processes_mentioning(cid) if open(f"/proc/{p}/comm").read().strip() == "conmon"]
    assert monitors == [conmon_pid]  # the first start's monitor is gone
    c.d.runtime().StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert status(c.d, cid).status.exit_code == 137
    c.assert_nothing_left(cid)


def test_crash_after_runc_start_finds_the_container_running(crashing):
    c = crashing
    _, cid = c.with_container(points.CONTAINER_START_RUNC_STARTED)
    c.crash(lambda: start(c.d, cid))
    c.restart()
    wait_until(lambda: state_of(c, cid) == pb.CONTAINER_RUNNING, "the started container re-adopted")
    s = status(c.d, cid, verbose=True).status
    assert s.started_at >= s.created_at > 0
    pid = json.loads(status(c.d, cid, verbose=True).info["info"])["pid"]
    assert pid and os.path.exists(f"/proc/{pid}")
    c.d.runtime().StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    s = status(c.d, cid).status
    assert (s.state, s.exit_code) == (pb.CONTAINER_EXITED, 137)
    assert not os.path.exists(f"/proc/{pid}")
    c.assert_nothing_left(cid)


def test_crash_while_stopping_records_the_exit(crashing):
    c = crashing
    _, cid = c.with_container(points.CONTAINER_STOP_SIGNALLED)
    start(c.d, cid)
    c.crash(lambda: c.d.runtime().StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30))
    c.restart()
    wait_until(lambda: state_of(c, cid) == pb.CONTAINER_EXITED, "the exit found")
    assert status(c.d, cid).status.exit_code == 137
    c.assert_nothing_left(cid)


def test_crash_after_the_runtime_deleted_a_removed_container_leaves_it_removable(crashing):
    c = crashing
    _, cid = c.with_container(points.CONTAINER_REMOVE_RUNTIME_DELETED, ("true",))
    start(c.d, cid)
    wait_until(lambda: state_of(c, cid) == pb.CONTAINER_EXITED, "the container exited")
    c.crash(lambda: c.d.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30))
    c.restart()
    s = status(c.d, cid).status
    assert (s.state, s.exit_code) == (pb.CONTAINER_EXITED, 0)
    c.d.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    c.assert_nothing_left(cid)


@pytest.mark.parametrize("started", [True, False])
def test_crash_after_a_removed_containers_record_is_deleted_sweeps_its_files(crashing, started):
    c = crashing
    _, cid = c.with_container(points.CONTAINER_REMOVE_RECORD_DELETED, ("true",) if started else ("sleep", "300"))
    if started:
        start(c.d, cid)
        wait_until(lambda: state_of(c, cid) == pb.CONTAINER_EXITED, "the container exited")
    c.crash(lambda: c.d.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30))
    assert c.mounts("/containers/"), "the crash left the root filesystem mounted (else this test proves nothing)"
    c.restart()
    assert list(c.d.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
    wait_until(lambda: not c.mounts("/containers/") and not c.containers_dirs(), "the removed container's files swept")
    c.assert_nothing_left(cid)


def test_a_container_whose_bundle_vanished_while_down_is_reported_ended(crashing):
    """What a reboot does to a created container (the run dir is a tmpfs):
    its bundle and root filesystem mount are gone; it can never start."""
    c = crashing
    _, cid = c.with_container()
    c.d.stop()
    bundle = os.path.join(c.d.run_dir, "containers", cid)
    subprocess.run(["umount", os.path.join(bundle, "rootfs")], check=True)
    shutil.rmtree(bundle)
    c.restart()
    wait_until(lambda: state_of(c, cid) == pb.CONTAINER_EXITED, "the container without a bundle ended")
    s = status(c.d, cid).status
    assert s.exit_code == 255 and "bundle was lost" in s.message
    c.assert_nothing_left(cid)


def test_crash_after_the_pod_network_is_attached_undoes_the_pod(crashing):
    c = crashing.start(points.POD_RUN_NETWORK_ATTACHED)
    c.crash(lambda: run_pod(c.d, c.pod))
    assert c.network.allocations(), "the crash left an address allocated (else this test proves nothing)"
    c.restart()
    wait_until(lambda: not c.network.allocations(), "the half-made pod's address released")
    assert list(c.d.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items) == []
    c.assert_nothing_left()


def test_crash_while_removing_a_pod_leaves_it_removable(crashing):
    c = crashing
    pod_id, cid = c.with_container(points.POD_REMOVE_TORN_DOWN)
    start(c.d, cid)
    c.crash(lambda: c.d.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30))
    c.restart()
    assert pod_status(c.d, pod_id).status.state == pb.SANDBOX_NOTREADY
    assert list(c.d.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
    c.assert_nothing_left(cid)


def test_pod_removal_waits_for_a_container_being_created(crashing):
    """RemovePodSandbox arriving while CreateContainer has made the bundle
    but not saved the record: the removal waits for the create, which then
    refuses (the pod is going); no record, mount or bundle outlives the pod."""
    import concurrent.futures

    c = crashing.start(points.CONTAINER_CREATE_BUNDLE_MADE, pause=True)
    pod_id = run_pod(c.d, c.pod)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        creating = pool.submit(create, c.d, pod_id, c.pod, c.container())
        wait_until(lambda: os.path.exists(c.pause_file), "the create paused")
        removing = pool.submit(c.d.runtime().RemovePodSandbox,
                               pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        time.sleep(0.5)
        assert not removing.done(), "the pod was removed under a container being created"
        os.unlink(c.pause_file)
        removing.result()
        with pytest.raises(grpc.RpcError) as e:
            creating.result()
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "being removed" in e.value.details()
    assert list(c.d.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
    c.assert_nothing_left()
    c.d.stop()
    c.d.start()  # nothing comes back either
    assert list(c.d.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
