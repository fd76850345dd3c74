"""Containers in pods: real images, runc under conmon, CRI logs."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import grpc
import pytest

from rktlet.cri.proto import pb
from rktlet.oci.procwatch import proc_state
from harness.containers import container_config, create, log_text, read_log, run_to_exit, start, status, wait_exited
from harness.daemon import Daemon
from harness.network import TestNetwork
from harness.pods import pod_config, remove_all_pods, run_pod


@pytest.fixture
def pod(daemon, test_network, pushed_images, tmp_path):
    """A running pod with the busybox image pulled; (daemon, pod id, pod config, image ref)."""
    image = pushed_images["busybox"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    logs = tmp_path / "logs"
    config = pod_config(log_directory=str(logs))
    return daemon, run_pod(daemon, config), config, image, str(logs)


def test_exit_codes_reasons_logs_env_and_workdir(pod):
    daemon, pod_id, pod_cfg, image, logs = pod
    config = container_config(
        "hello", image, command=["sh", "-c", 'echo "out $GREETING $(pwd)"; echo err >&2; exit 3'],
        envs=[pb.KeyValue(key="GREETING", value=b"hi")], working_dir="/tmp",
        labels={"io.kubernetes.container.name": "hello"}, annotations={"io.kubernetes.container.hash": "abc"},
    )
    s = run_to_exit(daemon, pod_id, pod_cfg, config)
    assert (s.exit_code, s.reason) == (3, "Error")
    assert s.started_at > s.created_at and s.finished_at >= s.started_at
    assert s.labels["io.kubernetes.container.name"] == "hello" and s.annotations["io.kubernetes.container.hash"] == "abc"
    assert s.log_path == os.path.join(logs, "hello.log")
    assert s.image_id.startswith("sha256:")
    assert log_text(s.log_path) == b"out hi /tmp\n"
    assert log_text(s.log_path, "stderr") == b"err\n"
    ts = read_log(s.log_path)[0][0]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+([+-]\d\d:\d\d|Z)$", ts)
    ok = run_to_exit(daemon, pod_id, pod_cfg, container_config("ok", image, command=["true"]))
    assert (ok.exit_code, ok.reason) == (0, "Completed")


def test_pod_status_carries_its_containers_statuses_and_a_timestamp(pod):
    """What the kubelet with EventedPLEG reads instead of a ContainerStatus
    call per container: PodSandboxStatus names every container of the pod,
    with its state, and a timestamp no later than the answer."""
    daemon, pod_id, pod_cfg, image, _ = pod
    running = create(daemon, pod_id, pod_cfg, container_config("runs", image, command=["sleep", "60"]))
    start(daemon, running)
    created = create(daemon, pod_id, pod_cfg, container_config("waits", image, command=["true"]))
    before = time.time_ns()
    response = daemon.runtime().PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
    after = time.time_ns()
    states = {c.id: (c.metadata.name, c.state) for c in response.containers_statuses}
    assert states == {running: ("runs", pb.CONTAINER_RUNNING), created: ("waits", pb.CONTAINER_CREATED)}
    assert before <= response.timestamp <= after
    assert all(c.image_ref and c.created_at for c in response.containers_statuses)


def test_start_error_for_missing_executable(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    cid = create(daemon, pod_id, pod_cfg, container_config("bad", image, command=["/no/such/binary"]))
    with pytest.raises(grpc.RpcError) as e:
        start(daemon, cid)
    assert "no/such/binary" in e.value.details()
    s = status(daemon, cid).status
    assert (s.state, s.exit_code, s.reason) == (pb.CONTAINER_EXITED, 128, "StartError")
    assert "no/such/binary" in s.message
    with pytest.raises(grpc.RpcError) as e:
        start(daemon, cid)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_started_twice_is_refused_and_stop_honours_grace(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    trap = container_config("trap", image, command=["sh", "-c", 'trap "echo bye; exit 0" TERM; while true; do sleep 0.1; done'])
    cid = create(daemon, pod_id, pod_cfg, trap)
    start(daemon, cid)
    with pytest.raises(grpc.RpcError) as e:
        start(daemon, cid)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    time.sleep(0.3)
    daemon.runtime().StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
    s = status(daemon, cid).status
    assert (s.exit_code, s.reason) == (0, "Completed")
    assert b"bye" in log_text(s.log_path)
    stubborn = create(daemon, pod_id, pod_cfg, container_config("stubborn", image, command=["sh", "-c", 'trap "" TERM; while true; do sleep 0.1; done']))
    start(daemon, stubborn)
    time.sleep(0.3)
    started = time.monotonic()
    daemon.runtime().StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30)
    assert 0.9 < time.monotonic() - started < 8
    assert status(daemon, stubborn).status.exit_code == 137
    daemon.runtime().StopContainer(pb.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30)  # idempotent


def test_oom_killed(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    config = container_config("hog", image, command=["sh", "-c", 'x=a; while true; do x="$x$x"; done'])
    config.linux.resources.memory_limit_in_bytes = 16 * 1024 * 1024
    s = run_to_exit(daemon, pod_id, pod_cfg, config, timeout=60)
    assert s.reason == "OOMKilled", (s.exit_code, s.reason)


def test_users_readonly_rootfs_and_capabilities(pod, pushed_images):
    daemon, pod_id, pod_cfg, image, _ = pod
    named = pushed_images["named-user"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=named)), timeout=60)
    s = run_to_exit(daemon, pod_id, pod_cfg, container_config("whoami", named, command=["id"]))
    assert b"uid=1234" in log_text(s.log_path)
    config = container_config("byname", image, command=["id", "-u"])
    config.linux.security_context.run_as_user.value = 4321
    assert log_text(run_to_exit(daemon, pod_id, pod_cfg, config).log_path).strip() == b"4321"
    ro = container_config("ro", image, command=["sh", "-c", "touch /x || echo refused"])
    ro.linux.security_context.readonly_rootfs = True
    assert b"refused" in log_text(run_to_exit(daemon, pod_id, pod_cfg, ro).log_path)
    caps = container_config("caps", image, command=["grep", "CapEff", "/proc/self/status"])
    caps.linux.security_context.capabilities.drop_capabilities.append("ALL")
    caps.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    assert log_text(run_to_exit(daemon, pod_id, pod_cfg, caps).log_path).split()[-1] == b"0000000000001000"


def test_seccomp_runtime_default_blocks_a_syscall(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    config = container_config("sec", image, command=["sh", "-c", "mount -t tmpfs none /tmp && echo mounted || echo blocked"])
    config.linux.security_context.capabilities.add_capabilities.append("SYS_ADMIN")
    config.linux.security_context.seccomp.profile_type = pb.SecurityProfile.RuntimeDefault
    assert b"blocked" in log_text(run_to_exit(daemon, pod_id, pod_cfg, config).log_path)
    config = container_config("nosec", image, command=["sh", "-c", "mount -t tmpfs none /tmp && echo mounted || echo blocked"])
    config.linux.security_context.capabilities.add_capabilities.append("SYS_ADMIN")
    config.linux.security_context.seccomp.profile_type = pb.SecurityProfile.Unconfined
    assert b"mounted" in log_text(run_to_exit(daemon, pod_id, pod_cfg, config).log_path)


def test_bind_mounts(pod, tmp_path):
    daemon, pod_id, pod_cfg, image, _ = pod
    host = tmp_path / "data"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    config = container_config("mnt", image, command=["sh", "-c", "cat /data/in.txt; echo written > /data/out.txt; touch /ro/x || echo ro"])
    config.mounts.add(container_path="/data", host_path=str(host), propagation=pb.PROPAGATION_PRIVATE)
    config.mounts.add(container_path="/ro", host_path=str(host), readonly=True)
    s = run_to_exit(daemon, pod_id, pod_cfg, config)
    assert log_text(s.log_path) == b"from host\nro\n"
    assert (host / "out.txt").read_text() == "written\n"
    bad = container_config("badmnt", image, command=["true"])
    bad.mounts.add(container_path="/x", host_path=str(tmp_path / "absent"))
    with pytest.raises(grpc.RpcError) as e:
        create(daemon, pod_id, pod_cfg, bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "absent" in e.value.details()


def test_recursive_read_only_mounts(pod, tmp_path):
    """``recursive_read_only``: mounts below the bind are read-only too
    (runc's rro); advertised per handler in Status; refused with writable
    or propagating mounts, naming the field."""
    import subprocess

    daemon, pod_id, pod_cfg, image, _ = pod
    handlers = daemon.runtime().Status(pb.StatusRequest(), timeout=10).runtime_handlers
    assert {h.name: h.features.recursive_read_only_mounts for h in handlers} == {"": True, "runc": True}
    host = tmp_path / "vol"
    (host / "tmpfs").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(host / "tmpfs")], check=True)
    try:
        for name, rro, expected in (("plain", False, b"written\n"), ("rro", True, b"read-only\n")):
            config = container_config(name, image, command=["sh", "-c", "touch /mnt/tmpfs/f && echo written || echo read-only"])
            config.mounts.add(container_path="/mnt", host_path=str(host), readonly=True, recursive_read_only=rro)
            s = run_to_exit(daemon, pod_id, pod_cfg, config)
            assert log_text(s.log_path) == expected, name
            assert [m.recursive_read_only for m in s.mounts] == [rro]
        for fields, words in (({"readonly": False}, "needs readonly"),
                              ({"readonly": True, "propagation": pb.PROPAGATION_HOST_TO_CONTAINER}, "PROPAGATION_PRIVATE")):
            bad = container_config("bad", image, command=["true"])
            bad.mounts.add(container_path="/mnt", host_path=str(host), recursive_read_only=True, **fields)
            with pytest.raises(grpc.RpcError) as e:
                create(daemon, pod_id, pod_cfg, bad)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()
            assert "mounts[0].recursive_read_only" in e.value.details()
    finally:
        subprocess.run(["umount", "-l", str(host / "tmpfs")], check=False)


def test_long_lines_and_binary_output(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    config = container_config("big", image, command=["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; printf '\\001\\002\\377\\n'"])
    s = run_to_exit(daemon, pod_id, pod_cfg, config)
    text = log_text(s.log_path)
    assert text == b"x" * 1048576 + b"\n" + b"\x01\x02\xff\n"
    tags = [r[2] for r in read_log(s.log_path)]
    assert "P" in tags and tags[-1] == "F"


def test_log_reopen_after_rename(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    cid = create(daemon, pod_id, pod_cfg, container_config("rot", image, command=["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done"]))
    start(daemon, cid)
    path = status(daemon, cid).status.log_path
    time.sleep(0.5)
    os.rename(path, path + ".1")
    daemon.runtime().ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
    time.sleep(0.5)
    assert os.path.exists(path) and b"line" in log_text(path)
    daemon.runtime().StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        daemon.runtime().ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_list_filters_remove_and_retry(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    config = container_config("sleeper", image, command=["sleep", "30"], labels={"app": "s"})
    cid = create(daemon, pod_id, pod_cfg, config)
    assert create(daemon, pod_id, pod_cfg, config) == cid  # a retried create
    different = container_config("sleeper", image, command=["sleep", "31"], labels={"app": "s"})
    with pytest.raises(grpc.RpcError) as e:
        create(daemon, pod_id, pod_cfg, different)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    start(daemon, cid)
    runtime = daemon.runtime()
    f = pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING), pod_sandbox_id=pod_id[:12],
                           label_selector={"app": "s"})
    assert [c.id for c in runtime.ListContainers(pb.ListContainersRequest(filter=f), timeout=10).containers] == [cid]
    assert runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(id=cid[:13])), timeout=10).containers[0].id == cid
    info = json.loads(status(daemon, cid, verbose=True).info["info"])
    assert info["pid"] > 0 and info["runtimeSpec"]["process"]["args"] == ["sleep", "30"]
    for _ in range(2):
        runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers == []
    assert not os.path.exists(f"/proc/{info['pid']}")
    # The files go right after the answer (off the request path).
    deadline = time.monotonic() + 10
    while os.listdir(os.path.join(daemon.run_dir, "containers")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(os.path.join(daemon.run_dir, "containers")) == []


def test_containers_survive_kill_9_and_exits_meanwhile_are_found(pushed_images, tmp_path):
    d = Daemon()
    network = TestNetwork(d.cni_conf_dir)
    network.write()
    try:
        d.start()
        image = pushed_images["busybox"].ref
        d.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        pod_cfg = pod_config(log_directory=str(tmp_path))
        pod_id = run_pod(d, pod_cfg)
        long = create(d, pod_id, pod_cfg, container_config("long", image, command=["sleep", "300"]))
        short = create(d, pod_id, pod_cfg, container_config("short", image, command=["sh", "-c", "sleep 2; exit 7"]))
        start(d, long)
        start(d, short)
        pid = json.loads(status(d, long, verbose=True).info["info"])["pid"]
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(3)  # "short" exits while nobody watches
        assert os.path.exists(f"/proc/{pid}")
        d.start()
        assert status(d, long).status.state == pb.CONTAINER_RUNNING
        s = wait_exited(d, short)
        assert s.exit_code == 7 and s.finished_at > s.started_at
        listed = d.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert sorted(c.id for c in listed) == sorted([long, short])
        d.runtime().StopContainer(pb.StopContainerRequest(container_id=long, timeout=0), timeout=30)
        assert status(d, long).status.exit_code == 137
    finally:
        remove_all_pods(d)
        d.cleanup()
        network.cleanup()


def test_monitors_are_the_daemons_children_and_are_reaped(pod):
    # conmon forks its monitor and exits; the daemon (a child subreaper)
    # gets the monitor as its child and reaps it when the container ends.
    daemon, pod_id, pod_cfg, image, _ = pod
    cid = create(daemon, pod_id, pod_cfg, container_config("watched", image, command=["sleep", "300"]))
    start(daemon, cid)
    info = json.loads(status(daemon, cid, verbose=True).info["info"])
    conmon = proc_state(info["conmonPid"])
    assert conmon is not None and conmon[0] == "conmon" and conmon[2] == daemon.process.pid
    daemon.runtime().StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert status(daemon, cid).status.exit_code == 137
    deadline = time.monotonic() + 5
    while proc_state(info["conmonPid"]) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc_state(info["conmonPid"]) is None, "the monitor was not reaped"


def test_an_exited_container_leaves_the_runtime_at_once(pod):
    # As containerd's shim does: runc's state and the container's cgroup go
    # when it exits; RemoveContainer has only files left to remove.
    daemon, pod_id, pod_cfg, image, _ = pod
    s = run_to_exit(daemon, pod_id, pod_cfg, container_config("brief", image, command=["true"]))
    runc_root = os.path.join(daemon.run_dir, "runtime", "runc")
    deadline = time.monotonic() + 5
    while os.path.exists(os.path.join(runc_root, s.id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(os.path.join(runc_root, s.id))
    assert status(daemon, s.id).status.exit_code == 0  # the record stays
    daemon.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=s.id), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        status(daemon, s.id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_to_daemon_leaves_containers_running(pod):
    daemon, pod_id, pod_cfg, image, _ = pod
    cid = create(daemon, pod_id, pod_cfg, container_config("keep", image, command=["sleep", "300"]))
    start(daemon, cid)
    pid = json.loads(status(daemon, cid, verbose=True).info["info"])["pid"]
    daemon.stop(signal.SIGTERM)
    assert os.path.exists(f"/proc/{pid}")
    # The daemon lets go of the monitors quietly: nothing ended.
    assert "without writing an exit file" not in daemon.log()
    daemon.start()
    assert status(daemon, cid).status.state == pb.CONTAINER_RUNNING


def test_removing_a_pod_leaves_other_pods_in_its_cgroup_alone(pod, tmp_path):
    daemon, _, _, image, logs = pod
    parent = f"/rktlet-shared-{os.getpid()}-{time.monotonic_ns() % 100000}"
    first_cfg, second_cfg = (pod_config(name=n, log_directory=logs) for n in ("first", "second"))
    for cfg in (first_cfg, second_cfg):
        cfg.linux.cgroup_parent = parent
    first = run_pod(daemon, first_cfg)  # makes the cgroup
    second = run_pod(daemon, second_cfg)
    cid = create(daemon, second, second_cfg, container_config("keep", image, command=["sleep", "300"]))
    start(daemon, cid)
    pid = json.loads(status(daemon, cid, verbose=True).info["info"])["pid"]
    memory_root = "/sys/fs/cgroup/memory"
    try:
        daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=first), timeout=30)
        daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=first), timeout=30)
        time.sleep(0.2)
        assert os.path.exists(f"/proc/{pid}") and proc_state(pid)[1] != "Z"
        assert status(daemon, cid).status.state == pb.CONTAINER_RUNNING
    finally:
        daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=second), timeout=30)
        daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=second), timeout=30)
    # The last pod in the cgroup removed what the first one made.
    if os.path.isdir(memory_root):
        assert not os.path.exists(memory_root + parent)


def test_cheap_calls_stay_quick_while_many_stops_wait_out_their_grace(pod):
    """40 StopContainer calls each waiting out a grace period (sleep as PID 1
    ignores SIGTERM) hold 40 gRPC workers; Status and ListContainers, which
    the kubelet makes every second, must still be answered at once."""
    import concurrent.futures

    daemon, pod_id, pod_cfg, image, _ = pod
    ids = []
    for i in range(40):
        cid = create(daemon, pod_id, pod_cfg, container_config(f"stubborn{i}", image, command=["sleep", "300"]))
        start(daemon, cid)
        ids.append(cid)
    grace = 10
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        stops = [pool.submit(daemon.runtime().StopContainer,
                             pb.StopContainerRequest(container_id=cid, timeout=grace), timeout=60) for cid in ids]
        time.sleep(1)  # every stop is now waiting
        worst = 0.0
        for _ in range(5):
            began = time.monotonic()
            daemon.runtime().Status(pb.StatusRequest(), timeout=30)
            daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=30)
            worst = max(worst, time.monotonic() - began)
        waiting = sum(not f.done() for f in stops)
        for f in stops:
            f.result()
    assert waiting == 40  # the stops were really holding their workers meanwhile
    # Well under the grace period: nothing waited for a worker to come free.
    assert worst < grace / 2, worst


def test_create_racing_pod_removal_leaves_no_orphan(daemon, test_network, pushed_images, tmp_path):
    """CreateContainer and RemovePodSandbox at the same moment: whichever
    wins, no container record, mount or bundle outlives the pod (also not
    across a restart)."""
    import concurrent.futures

    image = pushed_images["busybox"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(12):
            cfg = pod_config(name=f"race{i}", log_directory=str(tmp_path / "logs"))
            pod_id = run_pod(daemon, cfg)
            request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, sandbox_config=cfg,
                                                config=container_config("c", image, command=["sleep", "30"]))
            created = pool.submit(daemon.runtime().CreateContainer, request, timeout=30)
            time.sleep(0.002 * (i % 6))  # land the removal at different points of the create
            daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
            try:
                created.result()
            except grpc.RpcError as e:
                assert e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), e
            left = daemon.runtime().ListContainers(
                pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id)), timeout=10).containers
            assert list(left) == [], i
    daemon.stop()
    daemon.start()
    assert list(daemon.runtime().ListContainers(pb.ListContainersRequest(), timeout=10).containers) == []
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if f"{daemon.base}/" in line and "/containers/" in line]
