"""crictl runp / pods / inspectp / stopp / rmp against rktlet."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from harness.daemon import free_port
from harness.network import ping


def test_pod_lifecycle_with_crictl(crictl, daemon, test_network, tmp_path):
    host_port = free_port()
    config = {
        "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "crictl-pod-uid", "attempt": 1},
        "hostname": "crictl-pod",
        "log_directory": str(tmp_path / "logs"),
        "port_mappings": [{"protocol": 0, "container_port": 8080, "host_port": host_port}],
        "labels": {"tier": "e2e"},
        "linux": {"security_context": {"namespace_options": {"pid": 1}}},
    }
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(config))
    sandbox_id = crictl.run("runp", str(path)).stdout.strip()
    assert len(sandbox_id) == 64
    pods = crictl.json("pods")["items"]
    assert [p["id"] for p in pods] == [sandbox_id] and pods[0]["state"] == "SANDBOX_READY"
    assert sandbox_id[:13] in crictl.run("pods").stdout
    inspected = crictl.json("inspectp", sandbox_id[:13])
    ip = inspected["status"]["network"]["ip"]
    netns = inspected["info"]["netns"]
    server = subprocess.Popen(["nsenter", f"--net={netns}", "busybox", "nc", "-ll", "-p", "8080", "-e", "echo", "pod-says-hi"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", host_port), timeout=2) as s:
                    assert s.recv(100).strip() == b"pod-says-hi"
                break
            except (ConnectionRefusedError, socket.timeout):
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        server.kill()
        server.wait()
    assert ping(ip)
    crictl.run("stopp", sandbox_id)
    assert crictl.json("pods")["items"][0]["state"] == "SANDBOX_NOTREADY"
    crictl.run("rmp", sandbox_id)
    assert crictl.json("pods")["items"] == []
    assert test_network.allocations() == []
    assert os.listdir(os.path.join(daemon.run_dir, "pods")) == []
