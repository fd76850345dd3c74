"""The metrics endpoint of a real daemon (``--metrics-address``), scraped
while pods and containers come and go through the real crictl: the values
move as they should. Also over TLS, and no listener without the option."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rktlet.cri.proto import pb
from harness.daemon import Daemon, free_port, serve
from harness.fake_registry import self_signed_certificate
from harness.images import WEB_INDEX_HTML

pytestmark = pytest.mark.root

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str, context: ssl.SSLContext | None = None) -> Samples:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(samples: Samples, method: str, code: str = "OK", service: str = "RuntimeService") -> float:
    return get(samples, "rktlet_cri_requests_total", service=service, method=method, code=code)


def wait_for(url: str, check, timeout: float = 20.0) -> Samples:
    """Scrape until *check(samples)* holds (the exit of a container is
    learnt from its monitor a moment after it happens)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


@pytest.fixture
def metrics_port():
    return free_port()


@pytest.fixture
def daemon(metrics_port):
    """A daemon serving metrics on 127.0.0.1 (the crictl and test_network
    fixtures use it)."""
    yield from serve(Daemon(["--metrics-address", f"127.0.0.1:{metrics_port}"]))


def write(tmp_path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_values_move_as_pods_and_containers_come_and_go(crictl, daemon, test_network, pushed_images, metrics_port,
                                                        tmp_path):
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    before = scrape(url)
    assert get(before, "rktlet_pods", state="ready") == 0
    assert get(before, "rktlet_process_resident_memory_bytes") > 0
    assert get(before, "rktlet_process_threads") > 1

    # Pulls: one that works, one of an image that is not there.
    web = pushed_images["web"]
    crictl.run("pull", web.ref)
    missing = web.ref.rsplit("/", 1)[0] + "/no-such-image:1"
    assert crictl.run("pull", missing, check=False).returncode != 0
    s = scrape(url)
    assert get(s, "rktlet_image_pull_duration_seconds_count") == 1
    assert get(s, "rktlet_image_pull_bytes_total") > 0
    assert get(s, "rktlet_image_pull_failures_total", reason="not_found") == 1
    assert get(s, "rktlet_image_pulls_in_flight") == 0
    assert get(s, "rktlet_images") == 1 and get(s, "rktlet_image_store_bytes") > 0
    assert rpc(s, "PullImage", service="ImageService") == 1
    assert rpc(s, "PullImage", "NOT_FOUND", service="ImageService") == 1

    # A pod, with a server, a container that completes, one that fails, one
    # that cannot start.
    pod = {"metadata": {"name": "metrics", "namespace": "default", "uid": "metrics-uid", "attempt": 1},
           "log_directory": str(tmp_path)}
    pod_json = write(tmp_path, "pod.json", pod)
    pod_id = crictl.run("runp", pod_json).stdout.strip()
    s = scrape(url)
    assert get(s, "rktlet_pods", state="ready") == 1
    assert get(s, "rktlet_cni_operation_duration_seconds_count", operation="add") == 1
    assert get(s, "rktlet_cni_operation_failures_total", operation="add") == 0
    assert rpc(s, "RunPodSandbox") == 1

    ids = {}
    for name, command in (("httpd", None), ("done", ["sh", "-c", "exit 0"]), ("fail", ["sh", "-c", "exit 3"]),
                          ("broken", ["/no/such/program"])):
        ctr = {"metadata": {"name": name}, "image": {"image": web.ref}, "log_path": f"{name}.log"}
        if command:
            ctr["command"] = command
        ids[name] = crictl.run("create", pod_id, write(tmp_path, f"{name}.json", ctr), pod_json).stdout.strip()
        crictl.run("start", ids[name], check=False)
    s = wait_for(url, lambda s: get(s, "rktlet_container_exits_total", reason="Completed") == 1
                 and get(s, "rktlet_container_exits_total", reason="Error") == 1)
    assert get(s, "rktlet_container_exits_total", reason="Completed") == 1
    assert get(s, "rktlet_container_exits_total", reason="Error") == 1
    assert get(s, "rktlet_container_exits_total", reason="StartError") == 1
    assert get(s, "rktlet_container_exits_total", reason="OOMKilled") == 0
    assert get(s, "rktlet_containers", state="running") == 1
    assert get(s, "rktlet_containers", state="exited") == 3
    assert rpc(s, "StartContainer") == 3 and rpc(s, "StartContainer", "FAILED_PRECONDITION") == 1

    # A CRI error is counted under its code.
    with pytest.raises(grpc.RpcError) as e:
        daemon.runtime().ContainerStatus(pb.ContainerStatusRequest(container_id="f" * 64))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc(scrape(url), "ContainerStatus", "NOT_FOUND") == 1

    # Streaming: an exec and a port-forward.
    result = crictl.run("exec", ids["httpd"], "sh", "-c", "echo hello-metrics")
    assert result.stdout == "hello-metrics\n"
    local = free_port()
    forward = subprocess.Popen([crictl.binary, "--config", crictl.config_path, "--runtime-endpoint",
                                f"unix://{crictl.socket}", "port-forward", pod_id, f"{local}:80"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline and forward.poll() is None
                time.sleep(0.2)
        assert body == WEB_INDEX_HTML
    finally:
        forward.kill()
        forward.wait()
    s = wait_for(url, lambda s: get(s, "rktlet_streaming_sessions_open", kind="exec") == 0
                 and get(s, "rktlet_streaming_sessions_open", kind="port-forward") == 0)
    assert get(s, "rktlet_streaming_sessions_total", kind="exec") == 1
    assert get(s, "rktlet_streaming_bytes_total", kind="exec", direction="out") == len("hello-metrics\n")
    assert get(s, "rktlet_streaming_sessions_total", kind="port-forward") >= 1
    assert get(s, "rktlet_streaming_bytes_total", kind="port-forward", direction="out") >= len(WEB_INDEX_HTML)
    assert get(s, "rktlet_streaming_bytes_total", kind="port-forward", direction="in") > 0
    assert get(s, "rktlet_streaming_sessions_open", kind="exec") == 0
    assert get(s, "rktlet_streaming_sessions_open", kind="port-forward") == 0

    # Stop and remove: the server exits (killed: Error), the pod goes.
    crictl.run("stop", ids["httpd"])
    crictl.run("rm", ids["done"])
    s = scrape(url)
    assert get(s, "rktlet_containers", state="running") == 0
    assert get(s, "rktlet_containers", state="exited") == 3
    assert get(s, "rktlet_container_exits_total", reason="Error") == 2
    crictl.run("stopp", pod_id)
    assert get(scrape(url), "rktlet_pods", state="notready") == 1
    crictl.run("rmp", pod_id)
    s = scrape(url)
    assert get(s, "rktlet_pods", state="ready") == get(s, "rktlet_pods", state="notready") == 0
    assert sum(get(s, "rktlet_containers", state=state) for state in ("created", "running", "exited")) == 0
    assert get(s, "rktlet_cni_operation_duration_seconds_count", operation="del") >= 1
    assert get(s, "rktlet_cni_operation_failures_total", operation="del") == 0
    assert get(s, "rktlet_cni_pending_deletes") == 0
    assert get(s, "rktlet_reactor_lag_seconds_count") >= 1
    before_sum = sum(v for (name, _), v in before.items() if name == "rktlet_cri_requests_total")
    after_sum = sum(v for (name, _), v in s.items() if name == "rktlet_cri_requests_total")
    assert after_sum > before_sum


def test_only_get_and_only_metrics(daemon, metrics_port):
    base = f"http://127.0.0.1:{metrics_port}"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/", timeout=10)
    assert e.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", data=b"x" * 10, method="POST"), timeout=10)
    assert e.value.code == 413  # refused before the body is read
    filtered = urllib.request.urlopen(f"{base}/metrics?name[]=rktlet_pods", timeout=10).read().decode()
    assert "rktlet_pods{" in filtered and "rktlet_containers" not in filtered


@pytest.fixture
def tls_daemon(tmp_path):
    key_pem, cert_pem = self_signed_certificate()
    cert, key = tmp_path / "metrics.crt", tmp_path / "metrics.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    os.chmod(key, 0o600)
    port = free_port()
    for d in serve(Daemon(["--metrics-address", f"127.0.0.1:{port}", "--metrics-tls-cert", str(cert),
                           "--metrics-tls-key", str(key)])):
        yield d, port, str(cert)


def test_tls(tls_daemon):
    daemon, port, cert = tls_daemon
    context = ssl.create_default_context(cafile=cert)
    samples = scrape(f"https://127.0.0.1:{port}/metrics", context)
    assert get(samples, "rktlet_pods", state="ready") == 0
    assert get(samples, "rktlet_process_open_fds") > 0
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process *pid* listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_without_the_option_there_is_no_listener():
    for d in serve(Daemon()):
        assert listening_ports(d.process.pid) == {d.stream_port}


def test_with_the_option_the_endpoint_has_its_own_listener(daemon, metrics_port):
    assert listening_ports(daemon.process.pid) == {daemon.stream_port, metrics_port}


def test_monitors_readopted_after_a_restart_are_counted(crictl, daemon, test_network, pushed_images, metrics_port,
                                                        tmp_path):
    web = pushed_images["web"]
    crictl.run("pull", web.ref)
    pod_json = write(tmp_path, "pod.json", {"metadata": {"name": "again", "namespace": "default", "uid": "again-uid",
                                                         "attempt": 1}, "log_directory": str(tmp_path)})
    pod_id = crictl.run("runp", pod_json).stdout.strip()
    ctr = write(tmp_path, "c.json", {"metadata": {"name": "httpd"}, "image": {"image": web.ref},
                                     "log_path": "httpd.log"})
    cid = crictl.run("create", pod_id, ctr, pod_json).stdout.strip()
    crictl.run("start", cid)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    assert get(scrape(url), "rktlet_monitor_readoptions_total") == 0
    daemon.stop()
    daemon.start()
    s = scrape(url)
    assert get(s, "rktlet_monitor_readoptions_total") == 1
    assert get(s, "rktlet_monitors_lost_total") == 0
    assert get(s, "rktlet_containers", state="running") == 1
    assert get(s, "rktlet_pods", state="ready") == 1
    assert get(s, "rktlet_images") == 1
