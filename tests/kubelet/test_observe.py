"""What the kubelet reads and streams from rktlet: /stats/summary (CRI stats),
/run (ExecSync), and exec, attach and port-forward upgraded through the
kubelet to rktlet's streaming server."""

from __future__ import annotations

import json
import struct
import time
import urllib.parse

import pytest

from tests.kubelet.conftest import BUSYBOX, NODE_NAME, WEB, wait_for
from tests.kubelet.wsclient import WebSocket
from harness.images import WEB_INDEX_HTML

pytestmark = pytest.mark.root

LOOP = ["sh", "-c", "trap 'exit 0' TERM; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done"]


def _pod_stats(env, name):
    summary = env.kubelet.get_json("/stats/summary")
    for p in summary.get("pods") or []:
        if p["podRef"]["name"] == f"{name}-{NODE_NAME}":
            return summary, p
    return summary, None


def test_stats_summary(env):
    """6. CPU, memory, filesystem and network, for the pod and its container."""
    env.kubelet.write_manifest("stats", {"containers": [
        {"name": "busy", "image": BUSYBOX, "command": ["sh", "-c", "trap 'exit 0' TERM; dd if=/dev/zero of=/tmp/f bs=1k count=512; while true; do :; done"],
         "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}},
    ]})
    env.wait_running("stats")

    def complete():
        summary, pod = _pod_stats(env, "stats")
        if pod is None or not pod.get("containers"):
            return None
        c = pod["containers"][0]
        have = (
            pod.get("cpu", {}).get("usageNanoCores") is not None
            and pod.get("cpu", {}).get("usageCoreNanoSeconds", 0) > 0
            and pod.get("memory", {}).get("workingSetBytes", 0) > 0
            and (pod.get("network") or {}).get("interfaces")
            and c.get("cpu", {}).get("usageCoreNanoSeconds", 0) > 0
            and c.get("cpu", {}).get("usageNanoCores") is not None
            and c.get("memory", {}).get("workingSetBytes", 0) > 0
            and c.get("rootfs", {}).get("usedBytes", 0) > 0
            and c.get("logs", {}).get("usedBytes") is not None
            and pod.get("ephemeral-storage", {}).get("usedBytes") is not None
        )
        return (summary, pod) if have else None

    try:
        summary, pod = wait_for(complete, 40, "complete pod stats in /stats/summary", interval=1)
    except AssertionError:
        raise AssertionError(json.dumps(_pod_stats(env, "stats")[1], indent=1)[:4000]) from None
    c = pod["containers"][0]
    assert c["name"] == "busy"
    assert c["rootfs"]["usedBytes"] >= 512 * 1024  # the file dd wrote in its writable layer
    assert c["memory"]["workingSetBytes"] < 64 * 1024 * 1024
    assert any(i.get("name") == "eth0" for i in pod["network"]["interfaces"]), pod["network"]
    node = summary["node"]
    assert node["nodeName"] == NODE_NAME
    assert node.get("runtime", {}).get("imageFs", {}).get("usedBytes", 0) > 0, node.get("runtime")


def _exec_path(name, container, command, **flags):
    query = [("command", c) for c in command] + [(k, "1") for k, v in flags.items() if v]
    return f"/exec/default/{name}-{NODE_NAME}/{container}?{urllib.parse.urlencode(query)}"


def test_run_exec_attach_port_forward(env):
    """7. /run (ExecSync); exec over WebSocket: v4 passed through to rktlet's
    WebSocket server, v5 translated by the kubelet to SPDY; attach; a
    port-forward to the web container."""
    env.kubelet.write_manifest("stream", {"containers": [
        {"name": "c", "image": BUSYBOX, "command": LOOP},
        {"name": "web", "image": WEB},
    ]})
    env.wait_running("stream")

    status, body = env.kubelet.run("stream", "c", "echo via-run")
    assert (status, body) == (200, b"via-run\n")
    status, body = env.kubelet.run("stream", "c", "false")
    assert status != 200

    # exec, WebSocket v4 (the kubelet proxies the upgrade to rktlet)
    ws = WebSocket(env.kubelet.port, _exec_path("stream", "c", ["sh", "-c", "echo out-v4; echo err-v4 >&2"], output=True, error=True),
                   ["v4.channel.k8s.io"])
    assert ws.protocol == "v4.channel.k8s.io"
    channels, _ = ws.channels_until_close()
    ws.close()
    assert channels.get(1) == b"out-v4\n", channels
    assert channels.get(2) == b"err-v4\n", channels
    assert json.loads(channels[3])["status"] == "Success", channels

    # exec, WebSocket v5 (the kubelet translates to SPDY towards rktlet); exit code 7
    ws = WebSocket(env.kubelet.port, _exec_path("stream", "c", ["sh", "-c", "echo out-v5; exit 7"], output=True),
                   ["v5.channel.k8s.io"])
    assert ws.protocol == "v5.channel.k8s.io"
    channels, _ = ws.channels_until_close()
    ws.close()
    assert channels.get(1) == b"out-v5\n", channels
    status = json.loads(channels[3])
    assert status["status"] == "Failure" and status["details"]["causes"][0]["message"] == "7", status

    # attach (v4): the looping container's output arrives
    ws = WebSocket(env.kubelet.port, f"/attach/default/stream-{NODE_NAME}/c?output=1", ["v4.channel.k8s.io"])
    data = b""
    deadline = time.monotonic() + 10
    while b"tick-" not in data and time.monotonic() < deadline:
        _, msg = ws.recv()
        if msg[:1] == b"\x01":
            data += msg[1:]
    ws.close()
    assert b"tick-" in data

    # port-forward (v4 WebSocket): an HTTP request to the web container's port 80
    ws = WebSocket(env.kubelet.port, f"/portForward/default/stream-{NODE_NAME}?port=80", ["v4.channel.k8s.io"])
    got: dict[int, bytes] = {}
    for _ in range(2):  # each channel first announces its port
        _, msg = ws.recv()
        assert struct.unpack("<H", msg[1:3])[0] == 80, msg
        got[msg[0]] = b""
    ws.send(b"\x00GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
    response = b""
    deadline = time.monotonic() + 10
    while WEB_INDEX_HTML not in response and time.monotonic() < deadline:
        op, msg = ws.recv()
        if op == 8:
            break
        if msg[:1] == b"\x00":
            response += msg[1:]
        elif msg[:1] == b"\x01" and msg[1:]:
            raise AssertionError(f"port-forward error: {msg[1:]!r}")
    ws.close()
    assert response.startswith(b"HTTP/1.") and WEB_INDEX_HTML in response, response[:500]
