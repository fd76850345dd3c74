"""rktlet restarted under a running kubelet; many pods created and deleted."""

from __future__ import annotations

import os
import time

import pytest

from tests.kubelet.conftest import BUSYBOX, mounts_under, wait_for
from harness.processes import processes_mentioning

pytestmark = pytest.mark.root

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def _statuses(env, name):
    pod = env.kubelet.pod(name)
    return {s["name"]: (s["containerID"], s["restartCount"], "running" in s["state"]) for s in pod["status"]["containerStatuses"]}


def test_rktlet_restart_changes_nothing(env):
    """8. Stop and start rktlet while the kubelet runs: same containers, no
    restarts, the kubelet keeps reporting the pod and can exec in it."""
    env.kubelet.write_manifest("steady", {"containers": [{"name": "c", "image": BUSYBOX, "command": SLEEPER}]})
    env.wait_running("steady")
    time.sleep(2)
    before = _statuses(env, "steady")
    (sandbox,) = env.sandboxes("steady")

    env.daemon.stop()
    time.sleep(3)  # several kubelet relists against a missing runtime
    env.daemon.start()
    time.sleep(5)  # and several against the restarted one

    assert _statuses(env, "steady") == before
    assert [s.id for s in env.sandboxes("steady")] == [sandbox.id]
    status, body = env.kubelet.run("steady", "c", "echo still-here")
    assert (status, body) == (200, b"still-here\n")
    wait_for(lambda: env.kubelet.healthz() == "ok", 30, "kubelet healthz ok")
    runningpods = env.kubelet.get_json("/runningpods/")
    assert any(p["metadata"]["name"].startswith("steady-") for p in runningpods["items"]), runningpods


def test_thirty_pods_created_and_deleted(env):
    """9. 30 pods in three waves of 10, each created and deleted; the kubelet
    relists every second: PLEG stays healthy, nothing leaks."""
    start = len(env.kubelet.log())
    for wave in range(3):
        names = [f"loop{wave}-{i}" for i in range(10)]
        for name in names:
            env.kubelet.write_manifest(name, {"containers": [{"name": "c", "image": BUSYBOX, "command": SLEEPER}]})
        for name in names:
            env.wait_running(name, timeout=90)
        for name in names:
            env.kubelet.remove_manifest(name)
        wait_for(lambda: not any(env.kubelet.pod(n) for n in names), 60, f"wave {wave} gone from the kubelet")
    # The kubelet's container GC (once a minute) removes the stopped sandboxes.
    wait_for(lambda: not env.sandboxes() and not env.containers(), 75, "rktlet to have no pods left", interval=1)
    assert env.kubelet.healthz() == "ok"
    for check in ("/healthz", "/healthz/syncloop"):
        status, body = env.kubelet.request("GET", check)
        assert (status, body.strip()) == (200, b"ok"), (check, status, body)
    log = env.kubelet.log()[start:]
    assert "PLEG is not healthy" not in log
    assert not mounts_under(env.daemon.base), mounts_under(env.daemon.base)
    assert not env.network.allocations(), env.network.allocations()
    # conmon monitors, runc, pod infra processes: none left (rktlet itself excepted)
    left = [p for p in processes_mentioning(env.daemon.base + "/") if p != env.daemon.process.pid]
    assert not left, [open(f"/proc/{p}/cmdline", "rb").read() for p in left]
    pods_dir = os.path.join(env.kubelet.root_dir, "pods")
    wait_for(lambda: not os.listdir(pods_dir), 30, "the kubelet's pod dirs removed")
