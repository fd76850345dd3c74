"""Static pods through a real standalone kubelet on rktlet: lifecycle and
cleanup, shared volumes, restarts with back-off, probes, host network and
resource limits."""

from __future__ import annotations

import os
import time

import pytest

from rktlet.oci import cgroups
from tests.kubelet.conftest import BUSYBOX, NODE_NAME, WEB, container, mounts_under, wait_for
from harness.processes import processes_mentioning

pytestmark = pytest.mark.root

def test_pod_runs_logs_and_is_removed_without_leftovers(env):
    """1. Running; logs through the kubelet; removing the manifest stops the
    pod, and the kubelet's garbage collection removes it from rktlet, leaving
    no mounts, netns, processes or IP behind."""
    env.kubelet.write_manifest("life", {"containers": [container("c")]})
    pod = env.wait_running("life")
    assert pod["status"]["podIP"].startswith(env.network.subnet.rsplit(".", 2)[0])
    ip = pod["status"]["podIP"]
    wait_for(lambda: "started-life" in env.logs("life", "c"), 20, "the container's log line")
    # The pod status names the image as the manifest did (not its digest),
    # and its id as the digest-qualified name.
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["image"] == BUSYBOX, cs
    assert cs["imageID"].startswith(BUSYBOX.rsplit(":", 1)[0] + "@sha256:"), cs

    cid = env.container_id(pod, "c")
    info = env.container_info(cid)
    pid = info["pid"]
    (sandbox,) = env.sandboxes("life")
    sb_info = env.sandbox_info(sandbox.id)
    netns = sb_info.get("netns")
    assert ip in env.network.allocations()
    assert os.path.exists(f"/proc/{pid}")

    env.kubelet.remove_manifest("life")
    wait_for(lambda: env.kubelet.pod("life") is None, 30, "the kubelet to forget the pod")
    # Container GC runs once a minute (kubelet ContainerGCPeriod): it removes
    # the stopped sandbox of a deleted pod.
    wait_for(lambda: not env.sandboxes("life") and not env.containers("life"), 75,
             "the kubelet to remove the sandbox (container GC)", interval=1)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the container process to be gone")
    assert not [m for m in mounts_under(env.daemon.base) if sandbox.id in m or cid in m]
    assert not mounts_under(env.daemon.base), mounts_under(env.daemon.base)
    if netns:
        assert not os.path.exists(netns), netns
    assert not processes_mentioning(sandbox.id) and not processes_mentioning(cid)
    assert ip not in env.network.allocations()
    uid = pod["metadata"]["uid"]
    wait_for(lambda: not os.path.exists(os.path.join(env.kubelet.root_dir, "pods", uid)), 30,
             "the kubelet's pod dir to be removed")


def test_two_containers_share_an_emptydir(env):
    """2. One container writes into an emptyDir, the other reads it."""
    env.kubelet.write_manifest("share", {
        "volumes": [{"name": "data", "emptyDir": {}}],
        "containers": [
            container("writer", ["sh", "-c", "echo shared-$((6*7)) > /data/file; trap 'exit 0' TERM; while true; do sleep 1; done"],
                      volumeMounts=[{"name": "data", "mountPath": "/data"}]),
            container("reader", ["sh", "-c", "while [ ! -f /data/file ]; do sleep 0.2; done; cat /data/file; trap 'exit 0' TERM; while true; do sleep 1; done"],
                      volumeMounts=[{"name": "data", "mountPath": "/data", "readOnly": True}]),
        ],
    })
    env.wait_running("share")
    wait_for(lambda: "shared-42" in env.logs("share", "reader"), 20, "the reader to print the file")
    status, body = env.kubelet.run("share", "reader", "cat /data/file")
    assert status == 200 and body.strip() == b"shared-42", (status, body)
    status, body = env.kubelet.run("share", "reader", "touch /data/other")
    assert b"Read-only file system" in body, (status, body)


def test_exiting_container_is_restarted_with_backoff(env):
    """3. restartPolicy Always: a container exiting 3 is restarted, with
    CrashLoopBackOff between attempts; restartCount and CRI attempts grow."""
    env.kubelet.write_manifest("crash", {"restartPolicy": "Always",
                                         "containers": [container("c", ["sh", "-c", "echo attempt; sleep 0.5; exit 3"])]})
    reasons = set()

    def restarted_thrice():
        pod = env.kubelet.pod("crash")
        if not pod or not pod.get("status", {}).get("containerStatuses"):
            return None
        (cs,) = pod["status"]["containerStatuses"]
        reasons.update(s.get("reason") for s in cs.get("state", {}).values())
        return cs if cs.get("restartCount", 0) >= 3 else None

    cs = wait_for(restarted_thrice, 60, "restartCount >= 3", interval=0.2)
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert "CrashLoopBackOff" in reasons, reasons
    attempts = {c.metadata.attempt for c in env.containers("crash", "c")}
    assert max(attempts) >= 3, attempts
    if env.crictl:
        listed = env.crictl.json("ps", "-a", "--label", f"io.kubernetes.pod.name=crash-{NODE_NAME}")["containers"]
        assert max(c["metadata"]["attempt"] for c in listed) >= 3
    # The kubelet keeps restarting it.
    count = cs["restartCount"]
    wait_for(lambda: env.kubelet.pod("crash")["status"]["containerStatuses"][0]["restartCount"] > count, 30,
             "another restart")


def test_probes(env):
    """4. HTTP, TCP and exec probes pass on a web server (Ready); a failing
    readiness probe keeps a container unready; a failing liveness probe
    restarts its container."""
    probe = {"periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 2}
    env.kubelet.write_manifest("probed", {"containers": [
        container("web", [], image=WEB,
                  readinessProbe={"httpGet": {"path": "/index.html", "port": 80}, **probe},
                  livenessProbe={"tcpSocket": {"port": 80}, **probe},
                  startupProbe={"exec": {"command": ["cat", "/www/index.html"]}, **probe}),
        container("unready", readinessProbe={"httpGet": {"path": "/", "port": 8081}, **probe}),
    ]})
    pod = wait_for(lambda: _ready_map(env.kubelet.pod("probed")), 60, "the web container Ready")
    assert pod == {"web": True, "unready": False}
    time.sleep(3)
    assert _ready_map(env.kubelet.pod("probed")) == {"web": True, "unready": False}
    p = env.kubelet.pod("probed")
    assert all(cs["restartCount"] == 0 for cs in p["status"]["containerStatuses"])

    env.kubelet.write_manifest("liveness", {"containers": [container(
        "c", ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; trap 'exit 0' TERM; while true; do sleep 1; done"],
        livenessProbe={"exec": {"command": ["test", "-f", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 1},
    )]})

    def restarted():
        pod = env.kubelet.pod("liveness")
        cs = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return cs[0] if cs[0].get("restartCount", 0) >= 1 else None

    cs = wait_for(restarted, 60, "the liveness probe to restart the container")
    assert "terminated" in cs["lastState"], cs


def _ready_map(pod):
    if not pod:
        return None
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if len(statuses) != 2 or not all("running" in s.get("state", {}) for s in statuses):
        return None
    ready = {s["name"]: s["ready"] for s in statuses}
    return ready if ready.get("web") else None


def test_host_network_pod(env):
    """5a. hostNetwork: the container is in the host's network namespace."""
    env.kubelet.write_manifest("hostnet", {"hostNetwork": True, "containers": [container("c")]})
    pod = env.wait_running("hostnet")
    pid = env.container_info(env.container_id(pod, "c"))["pid"]
    assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    status, body = env.kubelet.run("hostnet", "c", "cat /proc/net/dev")
    assert status == 200 and b"lo:" in body


def test_resource_limits_in_cgroupfs(env):
    """5b. requests/limits end up in the container's v1 cgroups."""
    env.kubelet.write_manifest("limited", {"containers": [container(
        "c", resources={"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "250m", "memory": "64Mi"}})]})
    pod = env.wait_running("limited")
    assert pod["status"]["qosClass"] == "Burstable"
    pid = env.container_info(env.container_id(pod, "c"))["pid"]
    layout = cgroups.detect()
    with open(f"/proc/{pid}/cgroup") as f:
        paths = {}
        for line in f.read().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                paths[c] = path

    def read(controller: str, name: str) -> int:
        with open(os.path.join(layout.v1[controller], paths[controller].lstrip("/"), name)) as f:
            return int(f.read())

    assert read("cpu", "cpu.cfs_quota_us") == 25000
    assert read("cpu", "cpu.cfs_period_us") == 100000
    assert read("cpu", "cpu.shares") == 102
    assert read("memory", "memory.limit_in_bytes") == 64 * 1024 * 1024
    # The kubelet reads back what rktlet reports.
    cs = pod["status"]["containerStatuses"][0]
    if "resources" in cs:
        assert cs["resources"]["limits"]["memory"] == "64Mi", cs["resources"]


def test_image_volume(env):
    """6. An ``image`` volume (KEP-4639): the kubelet pulls the image and
    mounts it read-only, whole and by subPath; the pod's removal leaves no
    mount behind."""
    env.kubelet.write_manifest("imgvol", {
        "volumes": [{"name": "site", "image": {"reference": WEB, "pullPolicy": "IfNotPresent"}}],
        "containers": [container("c", volumeMounts=[{"name": "site", "mountPath": "/site"},
                                                    {"name": "site", "mountPath": "/www", "subPath": "www"}])],
    })
    pod = env.wait_running("imgvol")
    status, body = env.kubelet.run("imgvol", "c", "cat /site/www/index.html /www/index.html")
    assert status == 200 and body.count(b"<html") == 2, (status, body)
    status, body = env.kubelet.run("imgvol", "c", "touch /site/x")
    assert b"Read-only file system" in body, (status, body)
    cid = env.container_id(pod, "c")
    volumes = [m for m in mounts_under(env.daemon.base) if "/volumes/" in m]
    assert len(volumes) == 2, volumes
    env.kubelet.remove_manifest("imgvol")
    wait_for(lambda: not [m for m in mounts_under(env.daemon.base) if "/volumes/" in m or cid in m], 90,
             "the kubelet to remove the container and its image volumes", interval=1)
