"""crictl stats / statsp / events against rktlet."""

from __future__ import annotations

import json
import subprocess
import time


def test_stats_statsp_and_events(crictl, daemon, test_network, pushed_images, tmp_path):
    image = pushed_images["busybox"].ref
    crictl.run("pull", image)
    pod = {"metadata": {"name": "st", "namespace": "default", "uid": "st-uid", "attempt": 1},
           "log_directory": str(tmp_path), "linux": {"security_context": {"namespace_options": {"pid": 1}}}}
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    pod_id = crictl.run("runp", str(tmp_path / "pod.json")).stdout.strip()
    events = subprocess.Popen(
        [crictl.binary, "--config", crictl.config_path, "--runtime-endpoint", f"unix://{crictl.socket}", "events",
         "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1)
        ctr = {"metadata": {"name": "busy"}, "image": {"image": image}, "command": ["sh", "-c", "while :; do :; done"]}
        (tmp_path / "ctr.json").write_text(json.dumps(ctr))
        cid = crictl.run("create", pod_id, str(tmp_path / "ctr.json"), str(tmp_path / "pod.json")).stdout.strip()
        crictl.run("start", cid)
        time.sleep(1.5)
        stats = crictl.json("stats")["stats"]
        assert [s["attributes"]["id"] for s in stats] == [cid]
        assert int(stats[0]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
        assert int(stats[0]["memory"]["workingSetBytes"]["value"]) > 0
        statsp = crictl.json("statsp")["stats"]
        assert statsp[0]["attributes"]["id"] == pod_id
        assert "CPU" in crictl.run("stats").stdout.upper()
        crictl.run("stop", "--timeout", "0", cid)
        crictl.run("rm", cid)
        time.sleep(0.5)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=10)
    assert "CONTAINER_CREATED_EVENT" in out and "CONTAINER_STARTED_EVENT" in out
    assert "CONTAINER_STOPPED_EVENT" in out and "CONTAINER_DELETED_EVENT" in out
