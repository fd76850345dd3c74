"""A busybox pod with two containers, driven by crictl end to end."""

from __future__ import annotations

import json
import time


def wait_state(crictl, cid, state, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        got = crictl.json("inspect", cid)["status"]["state"]
        if got == state:
            return
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def test_pod_with_two_containers(crictl, daemon, test_network, pushed_images, tmp_path):
    image = pushed_images["busybox"].ref
    crictl.run("pull", image)
    pod = {
        "metadata": {"name": "two", "namespace": "default", "uid": "two-uid", "attempt": 1},
        "log_directory": str(tmp_path / "logs"),
        "linux": {"security_context": {"namespace_options": {"pid": 1}}},
    }
    pod_path = tmp_path / "pod.json"
    pod_path.write_text(json.dumps(pod))
    pod_id = crictl.run("runp", str(pod_path)).stdout.strip()
    ids = []
    for name, command in (("talker", ["sh", "-c", "for i in 1 2 3; do echo hello-$i; done; sleep 300"]),
                          ("sleeper", ["sleep", "300"])):
        config = {"metadata": {"name": name}, "image": {"image": image}, "command": command, "log_path": f"{name}.log"}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        ids.append(crictl.run("create", pod_id, str(path), str(pod_path)).stdout.strip())
    for cid in ids:
        crictl.run("start", cid)
        wait_state(crictl, cid, "CONTAINER_RUNNING")
    listed = crictl.json("ps")["containers"]
    assert sorted(c["id"] for c in listed) == sorted(ids)
    assert ids[0][:13] in crictl.run("ps").stdout
    deadline = time.monotonic() + 10
    while "hello-3" not in crictl.run("logs", ids[0]).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert crictl.run("logs", ids[0]).stdout.split() == ["hello-1", "hello-2", "hello-3"]
    crictl.run("update", "--memory", str(64 * 1024 * 1024), ids[1])
    inspected = crictl.json("inspect", ids[1])
    assert int(inspected["status"]["resources"]["linux"]["memoryLimitInBytes"]) == 64 * 1024 * 1024
    crictl.run("stop", "--timeout", "1", ids[0])
    wait_state(crictl, ids[0], "CONTAINER_EXITED")
    crictl.run("rm", ids[0])
    crictl.run("stopp", pod_id)
    assert crictl.json("inspect", ids[1])["status"]["state"] == "CONTAINER_EXITED"
    crictl.run("rmp", pod_id)
    assert crictl.json("ps", "-a")["containers"] == []


def test_image_volume_with_crictl(crictl, daemon, test_network, pushed_images, tmp_path):
    """A container config file with an image volume, as crictl users write
    it: the image mounted read-only, by sub path, shown by inspect."""
    image, data = pushed_images["busybox"].ref, pushed_images["multi-layer"].ref
    crictl.run("pull", image)
    crictl.run("pull", data)
    data_id = crictl.json("inspecti", data)["status"]["id"]
    pod = {"metadata": {"name": "vol", "namespace": "default", "uid": "vol-uid", "attempt": 1},
           "log_directory": str(tmp_path / "logs")}
    pod_path = tmp_path / "pod.json"
    pod_path.write_text(json.dumps(pod))
    pod_id = crictl.run("runp", str(pod_path)).stdout.strip()
    config = {"metadata": {"name": "reader"}, "image": {"image": image}, "command": ["sleep", "300"],
              "mounts": [{"container_path": "/data", "readonly": True, "image": {"image": data},
                          "image_sub_path": "data"}]}
    path = tmp_path / "reader.json"
    path.write_text(json.dumps(config))
    cid = crictl.run("create", pod_id, str(path), str(pod_path)).stdout.strip()
    crictl.run("start", cid)
    wait_state(crictl, cid, "CONTAINER_RUNNING")
    assert crictl.run("exec", "-s", cid, "cat", "/data/keep.txt").stdout.split() == ["keep"]
    assert crictl.run("exec", "-s", cid, "touch", "/data/x", check=False).returncode != 0
    (mount,) = crictl.json("inspect", cid)["status"]["mounts"]
    assert mount["image"]["image"] == data_id and mount["imageSubPath"] == "data" and mount["readonly"]
    rw = dict(config, metadata={"name": "writer"}, mounts=[dict(config["mounts"][0], readonly=False)])
    path.write_text(json.dumps(rw))
    refused = crictl.run("create", pod_id, str(path), str(pod_path), check=False)
    assert refused.returncode != 0 and "readonly must be true" in refused.stderr
    crictl.run("stopp", pod_id)
    crictl.run("rmp", pod_id)
    assert crictl.json("ps", "-a")["containers"] == []
