"""Pod sandboxes with real namespaces and the real CNI plugins."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time

import grpc
import pytest

from rktlet.cri.proto import pb
from harness.daemon import Daemon, free_port
from harness.network import TestNetwork, nat_rules_mentioning, ping
from harness.pods import in_netns, pod_config, pod_status, remove_all_pods, run_pod


def pinned_mounts(base: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(base + "/")]


def test_pod_lifecycle(daemon, test_network):
    config = pod_config(
        hostname="web-1",
        dns_config=pb.DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"]),
        labels={"app": "web"},
        annotations={"note": "x"},
    )
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    sandbox_id = run_pod(daemon, config)
    assert len(sandbox_id) == 64 and all(c in "0123456789abcdef" for c in sandbox_id)
    response = pod_status(daemon, sandbox_id, verbose=True)
    status = response.status
    assert status.state == pb.SANDBOX_READY
    assert status.metadata.name == "web" and status.labels["app"] == "web" and status.annotations["note"] == "x"
    assert status.linux.namespaces.options.network == pb.POD
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(test_network.subnet)
    info = json.loads(response.info["info"])
    netns = info["netns"]
    # The host reaches the pod through the bridge.
    assert ping(status.network.ip)
    assert in_netns(netns, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").stdout.strip() == "80"
    uts = info["namespaces"]["uts"]
    assert subprocess.run(["nsenter", f"--uts={uts}", "hostname"], capture_output=True, text=True).stdout.strip() == "web-1"
    with open(info["files"]["resolv.conf"]) as f:
        resolv = f.read()
    assert "nameserver 10.96.0.10" in resolv and "search default.svc.cluster.local" in resolv and "ndots:5" in resolv
    assert in_netns(netns, "ip", "-o", "link", "show", "lo").stdout.count("UP") >= 1
    # Prefix lookup, list filters.
    assert pod_status(daemon, sandbox_id[:13]).status.id == sandbox_id
    listed = daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert [p.id for p in listed] == [sandbox_id]
    f = pb.PodSandboxFilter(label_selector={"app": "other"})
    assert daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(filter=f), timeout=10).items == []
    # Stop: network released, idempotent.
    daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    assert pod_status(daemon, sandbox_id).status.state == pb.SANDBOX_NOTREADY
    assert test_network.allocations() == []
    assert not os.path.exists(netns) or netns not in pinned_mounts(daemon.base)
    f = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(filter=f), timeout=10).items == []
    # Remove: everything gone, idempotent; unknown ids are fine too.
    for _ in range(2):
        daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="ab" * 32), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        pod_status(daemon, sandbox_id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert pinned_mounts(daemon.base) == []
    assert os.listdir(os.path.join(daemon.run_dir, "pods")) == []
    assert os.listdir(os.path.join(daemon.root, "pods")) == []


def test_host_port_mapping_answers_on_loopback(daemon, test_network):
    host_port = free_port()
    config = pod_config(port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=host_port)])
    sandbox_id = run_pod(daemon, config)
    response = pod_status(daemon, sandbox_id, verbose=True)
    netns = json.loads(response.info["info"])["netns"]
    server = subprocess.Popen(["nsenter", f"--net={netns}", "busybox", "nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-pod"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for target in ((response.status.network.ip, 8080), ("127.0.0.1", host_port)):
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(target, timeout=2) as s:
                        assert s.recv(100).strip() == b"hello-from-pod"
                    break
                except (ConnectionRefusedError, AssertionError, socket.timeout):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
    finally:
        server.kill()
        server.wait()
    assert nat_rules_mentioning(str(host_port))
    daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    assert nat_rules_mentioning(str(host_port)) == []


def test_host_network_pod(daemon, test_network):
    sandbox_id = run_pod(daemon, pod_config(network=pb.NODE, ipc=pb.NODE))
    status = pod_status(daemon, sandbox_id).status
    assert status.linux.namespaces.options.network == pb.NODE
    assert status.linux.namespaces.options.ipc == pb.NODE
    assert status.network.ip == ""
    assert test_network.allocations() == []


def test_shared_pid_namespace_gets_an_infra_process(daemon, test_network):
    sandbox_id = run_pod(daemon, pod_config(pid=pb.POD))
    info = json.loads(pod_status(daemon, sandbox_id, verbose=True).info["info"])
    pid = info["pid"]
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "catatonit"
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(info["netns"]).st_ino
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    with open(f"/proc/{pid}/status") as f:
        nspid = [line for line in f if line.startswith("NSpid:")][0]
    assert nspid.split()[-1] == "1"  # PID 1 of the pod's PID namespace
    daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    assert not os.path.exists(f"/proc/{pid}")


def test_pods_without_shared_pid_leave_no_process(daemon, test_network):
    before = set(os.listdir("/proc"))
    run_pod(daemon, pod_config())
    time.sleep(0.2)
    new = [p for p in set(os.listdir("/proc")) - before if p.isdigit()]
    lingering = []
    for pid in new:
        try:
            with open(f"/proc/{pid}/status") as f:
                if f"PPid:\t{daemon.process.pid}" in f.read():
                    lingering.append(pid)
        except OSError:
            pass
    assert lingering == []


def test_retry_returns_the_same_sandbox_and_conflict_is_refused(daemon, test_network):
    config = pod_config(name="retry", uid="u-1")
    first = run_pod(daemon, config)
    assert run_pod(daemon, config) == first
    other = pod_config(name="retry", uid="u-1", hostname="different")
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, other)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in e.value.details()


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda c: c.metadata.ClearField("name"), "config.metadata.name"),
        (lambda c: c.metadata.ClearField("uid"), "config.metadata.uid"),
        (lambda c: c.metadata.ClearField("namespace"), "config.metadata.namespace"),
        (lambda c: c.port_mappings.add(container_port=0), "config.port_mappings[0].container_port"),
        (lambda c: c.linux.sysctls.__setitem__("kernel.panic", "1"), "kernel.panic"),
    ],
)
def test_invalid_configs_name_the_field_and_leave_nothing(daemon, test_network, mutate, field):
    config = pod_config()
    mutate(config)
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, config)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in e.value.details()
    assert pinned_mounts(daemon.base) == []
    assert os.listdir(os.path.join(daemon.root, "pods")) == []
    assert test_network.allocations() == []


def test_unknown_runtime_handler(daemon, test_network):
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, pod_config(), handler="kata")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kata" in e.value.details()
    config = pod_config(annotations={"rkt.alpha.kubernetes.io/stage1-name-override": "runc"})
    assert pod_status(daemon, run_pod(daemon, config)).status.runtime_handler == "runc"


def test_failing_plugin_leaves_nothing_behind(daemon, test_network):
    # tuning with a sysctl that does not exist fails after bridge allocated an IP.
    test_network.write(extra_plugins=[{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}])
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, pod_config(port_mappings=[pb.PortMapping(container_port=80, host_port=free_port())]))
    assert "tuning" in e.value.details()
    assert test_network.allocations() == []
    assert pinned_mounts(daemon.base) == []
    assert nat_rules_mentioning(test_network.subnet.rsplit(".", 1)[0] + ".") == []
    assert os.listdir(os.path.join(daemon.run_dir, "pods")) == []
    assert daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []


def test_missing_plugin_is_reported(daemon, test_network):
    test_network.write(extra_plugins=[{"type": "no-such-plugin"}])
    conditions = {c.type: c for c in daemon.runtime().Status(pb.StatusRequest(), timeout=10).status.conditions}
    assert conditions["NetworkReady"].status is False and "no-such-plugin" in conditions["NetworkReady"].message
    with pytest.raises(grpc.RpcError) as e:
        run_pod(daemon, pod_config())
    assert "no-such-plugin" in e.value.details()
    assert pinned_mounts(daemon.base) == []


def test_cni_del_failure_does_not_wedge_the_pod():
    d = Daemon()
    bin_dir = os.path.join(d.base, "cni-bin")
    os.makedirs(bin_dir)
    for plugin in ("bridge", "host-local", "portmap"):
        os.symlink(f"/usr/lib/cni/{plugin}", os.path.join(bin_dir, plugin))
    d.extra_args = ["--cni-bin-dir", bin_dir, "--cni-del-retry-interval", "1"]
    network = TestNetwork(d.cni_conf_dir)
    network.write()

    def pending() -> list[str]:
        info = d.runtime().Status(pb.StatusRequest(verbose=True), timeout=10).info
        return json.loads(info["cni"])["pendingDeletes"]

    try:
        d.start()
        sandbox_id = run_pod(d, pod_config())
        os.unlink(os.path.join(bin_dir, "portmap"))
        d.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        d.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        assert "CNI DEL" in d.log() and "portmap" in d.log()
        assert d.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
        assert network.allocations() == []  # bridge's DEL still ran
        # The failed DEL is not forgotten: it is retried until it succeeds.
        time.sleep(1.5)
        assert pending() == [sandbox_id]
        os.symlink("/usr/lib/cni/portmap", os.path.join(bin_dir, "portmap"))
        deadline = time.monotonic() + 10
        while pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pending() == [] and "done on retry" in d.log()
    finally:
        remove_all_pods(d)
        d.cleanup()
        network.cleanup()


def test_pods_survive_kill_9_and_restart():
    d = Daemon()
    network = TestNetwork(d.cni_conf_dir)
    network.write()
    try:
        d.start()
        sandbox_id = run_pod(d, pod_config(pid=pb.POD))
        before = pod_status(d, sandbox_id, verbose=True)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        d.start()
        after = pod_status(d, sandbox_id, verbose=True)
        assert after.status.state == pb.SANDBOX_READY
        assert after.status.network.ip == before.status.network.ip
        assert json.loads(after.info["info"])["pid"] == json.loads(before.info["info"])["pid"]
        assert ping(after.status.network.ip)
        d.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        assert network.allocations() == []
    finally:
        remove_all_pods(d)
        d.cleanup()
        network.cleanup()


SLOW_PLUGIN = """#!/usr/bin/env python3
import json, os, sys, time
conf = json.load(sys.stdin)
command = os.environ.get("CNI_COMMAND")
if command == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}))
elif command == "ADD":
    with open(os.path.join(os.path.dirname(sys.argv[0]), "slow.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(8)
    print(json.dumps(conf["prevResult"]))
"""


def test_pod_half_made_by_a_crash_is_undone_at_start():
    d = Daemon()
    bin_dir = os.path.join(d.base, "cni-bin")
    os.makedirs(bin_dir)
    for plugin in ("bridge", "host-local", "portmap"):
        os.symlink(f"/usr/lib/cni/{plugin}", os.path.join(bin_dir, plugin))
    with open(os.path.join(bin_dir, "slow"), "w") as f:
        f.write(SLOW_PLUGIN)
    os.chmod(os.path.join(bin_dir, "slow"), 0o755)
    d.extra_args = ["--cni-bin-dir", bin_dir]
    network = TestNetwork(d.cni_conf_dir)
    network.write(extra_plugins=[{"type": "slow"}])
    try:
        d.start()
        import threading

        threading.Thread(target=lambda: _ignore_errors(run_pod, d, pod_config(), timeout=60), daemon=True).start()
        deadline = time.monotonic() + 20
        while not network.allocations():  # bridge has run: the pod is half made
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.05)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        assert pinned_mounts(d.base), "the crash should have left the pod's namespaces behind"
        d.start()
        deadline = time.monotonic() + 20
        while pinned_mounts(d.base) or network.allocations():
            assert time.monotonic() < deadline, (pinned_mounts(d.base), network.allocations(), d.log())
            time.sleep(0.1)
        assert d.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
        assert os.listdir(os.path.join(d.root, "pods")) == []
        assert "left half-made by a crash" in d.log()
    finally:
        try:  # the plugin the crash orphaned: ours to end
            with open(os.path.join(bin_dir, "slow.pid")) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        remove_all_pods(d)
        d.cleanup()
        network.cleanup()


def _ignore_errors(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception:
        pass


def test_update_pod_sandbox_resources_sets_pod_cgroup_limits(daemon, test_network):
    sandbox_id = run_pod(daemon, pod_config())
    request = pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=sandbox_id,
        resources=pb.LinuxContainerResources(memory_limit_in_bytes=256 * 1024 * 1024, cpu_shares=512),
    )
    daemon.runtime().UpdatePodSandboxResources(request, timeout=10)
    cgroup = json.loads(pod_status(daemon, sandbox_id, verbose=True).info["info"])["cgroupParent"]
    with open(f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes") as f:
        assert int(f.read()) == 256 * 1024 * 1024
    with open(f"/sys/fs/cgroup/cpu{cgroup}/cpu.shares") as f:
        assert int(f.read()) == 512
