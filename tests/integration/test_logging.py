"""The daemon's log as JSON lines (``--log-format json``): every line parses,
carries time, level, logger, msg and the ids; every pod and container
lifecycle change and every failure of runc or a CNI plugin is there once."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections import Counter
from typing import Any

import grpc
import pytest

from rktlet.cri.proto import pb
from harness.containers import container_config, create, start, status, wait_exited
from harness.daemon import Daemon
from harness.network import TestNetwork
from harness.pods import pod_config, remove_all_pods, run_pod

pytestmark = pytest.mark.root

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
LEVELS = {"debug", "info", "warn", "error", "critical"}

# A CNI plugin that refuses ADD with a CNI error (code 11, "try again
# later"), releases nothing on DEL, and speaks CNI 1.0.0.
FAILING_PLUGIN = """#!/bin/sh
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
ADD) echo '{"cniVersion":"1.0.0","code":11,"msg":"injected failure","details":"the test plugin refuses ADD"}'
     exit 1 ;;
*) exit 0 ;;
esac
"""


def check_shape(records: list[dict[str, Any]]) -> None:
    for record in records:
        assert list(record)[:4] == ["time", "level", "logger", "msg"], record
        assert RFC3339_UTC.match(record["time"]), record
        assert record["level"] in LEVELS, record
        assert isinstance(record["logger"], str) and record["logger"], record
        assert isinstance(record["msg"], str), record


def lifecycle(records: list[dict[str, Any]], field: str, value: str) -> Counter[str]:
    """How often each lifecycle word was logged (info or above) for the
    pod (*field* ``pod_id``) or container (``container_id``) *value*."""
    logger = "rktlet.pod.sandboxes" if field == "pod_id" else "rktlet.pod.containers"
    words = ("ready", "failed to run", "stopped", "removed", "created", "started", "failed to start", "exited")
    seen: Counter[str] = Counter()
    for r in records:
        if r.get(field) != value or r["level"] == "debug" or r["logger"] != logger:
            continue
        for word in words:
            if re.search(rf"\b{word}\b", r["msg"]):
                seen[word] += 1
    return seen


def test_json_log_of_a_lifecycle_and_failures(pushed_images, tmp_path):
    d = Daemon(log_format="json")
    bin_dir = os.path.join(d.base, "cni-bin")
    os.makedirs(bin_dir)
    for plugin in ("bridge", "host-local", "portmap"):
        os.symlink(f"/usr/lib/cni/{plugin}", os.path.join(bin_dir, plugin))
    failing = os.path.join(bin_dir, "rktlet-test-failing")
    with open(failing, "w") as f:
        f.write(FAILING_PLUGIN)
    os.chmod(failing, 0o755)
    d.extra_args = ["--cni-bin-dir", bin_dir]
    network = TestNetwork(d.cni_conf_dir)
    network.write()
    try:
        d.start()
        image = pushed_images["busybox"].ref
        d.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        pod_cfg = pod_config(name="logged", log_directory=str(tmp_path))
        pod_id = run_pod(d, pod_cfg)
        app = create(d, pod_id, pod_cfg, container_config("app", image, command=["sleep", "300"]))
        start(d, app)
        d.runtime().StopContainer(pb.StopContainerRequest(container_id=app, timeout=0), timeout=30)
        assert wait_exited(d, app).exit_code == 137
        # runc refuses to start a command that is not there.
        bad = create(d, pod_id, pod_cfg, container_config("bad", image, command=["/no/such/binary"]))
        with pytest.raises(grpc.RpcError):
            start(d, bad)
        assert status(d, bad).status.reason == "StartError"
        d.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=app), timeout=30)
        d.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=bad), timeout=30)
        d.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        d.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        # A CNI plugin fails ADD: the pod is undone.
        network.write(extra_plugins=[{"type": "rktlet-test-failing"}])
        with pytest.raises(grpc.RpcError) as refused:
            run_pod(d, pod_config(name="refused", log_directory=str(tmp_path)))
        assert "injected failure" in refused.value.details()

        records = d.log_records()  # every line is a JSON object
        check_shape(records)
        assert lifecycle(records, "pod_id", pod_id) == {"ready": 1, "stopped": 1, "removed": 1}
        assert lifecycle(records, "container_id", app) == {"created": 1, "started": 1, "exited": 1, "removed": 1}
        assert lifecycle(records, "container_id", bad) == {"created": 1, "failed to start": 1, "removed": 1}

        [ready] = [r for r in records if r.get("pod_id") == pod_id and " ready " in r["msg"]]
        assert ready["level"] == "info" and ready["logger"] == "rktlet.pod.sandboxes"
        assert ready["pod_name"] == "logged" and ready["pod_namespace"] == "default"
        assert isinstance(ready["duration_ms"], float)
        [exited] = [r for r in records if r.get("container_id") == app and " exited " in r["msg"]]
        assert (exited["exit_code"], exited["reason"], exited["pod_id"], exited["name"]) == (137, "Error", pod_id, "app")

        # runc's failure: once, at warn, with the ids and runc's own words.
        [start_failure] = [r for r in records if r.get("container_id") == bad and "failed to start" in r["msg"]]
        assert start_failure["level"] == "warn" and start_failure["pod_id"] == pod_id
        assert "/no/such/binary" in start_failure["error"]
        assert not [r for r in records if r["level"] in ("error", "critical")
                    and "/no/such/binary" in str(r.get("error", "")) + r["msg"]]

        # The CNI plugin's failure: once, at warn, with the plugin's message.
        refusals = [r for r in records if "injected failure" in r["msg"] and r["level"] != "debug"]
        assert len(refusals) == 1, refusals
        [refusal] = refusals
        assert refusal["level"] == "warn" and refusal["logger"] == "rktlet.pod.sandboxes"
        assert refusal["pod_name"] == "refused" and refusal["pod_id"]
        assert "rktlet-test-failing" in refusal["error"] and "the test plugin refuses ADD" in refusal["error"]
        assert lifecycle(records, "pod_id", refusal["pod_id"]) == {"failed to run": 1}
        assert network.allocations() == []  # the chain was undone
    finally:
        remove_all_pods(d)
        d.cleanup()
        network.cleanup()


def rktlet_command() -> list[str] | None:
    beside = os.path.join(os.path.dirname(sys.executable), "rktlet")
    return [beside] if os.access(beside, os.X_OK) else ([found] if (found := shutil.which("rktlet")) else None)


@pytest.mark.parametrize("how", ["twistd", "rktlet"])
def test_json_log_from_both_commands(how):
    """``twistd -n rktlet`` and the ``rktlet`` command write the same JSON
    lines to stdout, from twistd's first line to its last."""
    command = None
    if how == "rktlet":
        command = rktlet_command()
        if command is None:
            pytest.skip("the rktlet command is not installed (pip install .)")
    d = Daemon(command=command, log_format="json", log_level="info")
    try:
        d.start()
        d.runtime().Version(pb.VersionRequest(), timeout=10)
        d.stop()
        records = d.log_records()
        check_shape(records)
        messages = [r["msg"] for r in records]
        assert any(m.startswith("twistd ") and "starting up" in m for m in messages)
        assert "rktlet ready" in messages
        assert messages[-1] == "Server Shut Down."
        assert not [r for r in records if r["level"] == "debug"]
        [listening] = [r for r in records if r["logger"] == "rktlet.cri.server" and "listening" in r["msg"]]
        assert listening["path"] == d.socket
    finally:
        d.cleanup()
