"""crictl exec / attach / port-forward against rktlet, over SPDY and WebSocket."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pty
import select
import subprocess
import time
import urllib.request

import pytest

from harness.daemon import free_port
from harness.images import WEB_INDEX_HTML


@pytest.fixture
def web(crictl, daemon, test_network, pushed_images, tmp_path):
    """A pod running the web image (busybox httpd on port 80) and a shell
    container; returns (pod id, web container id, shell container id)."""
    image = pushed_images["web"].ref
    crictl.run("pull", image)
    pod = {"metadata": {"name": "web", "namespace": "default", "uid": "web-uid", "attempt": 1},
           "log_directory": str(tmp_path), "linux": {"security_context": {"namespace_options": {"pid": 1}}}}
    (tmp_path / "pod.json").write_text(json.dumps(pod))
    pod_id = crictl.run("runp", str(tmp_path / "pod.json")).stdout.strip()
    ids = []
    for name, extra in (("httpd", {}), ("shell", {"command": ["sh"], "stdin": True, "tty": True})):
        ctr = {"metadata": {"name": name}, "image": {"image": image}, "log_path": f"{name}.log", **extra}
        (tmp_path / f"{name}.json").write_text(json.dumps(ctr))
        cid = crictl.run("create", pod_id, str(tmp_path / f"{name}.json"), str(tmp_path / "pod.json")).stdout.strip()
        crictl.run("start", cid)
        ids.append(cid)
    return pod_id, ids[0], ids[1]


def crictl_argv(crictl, *args):
    return [crictl.binary, "--config", crictl.config_path, "--runtime-endpoint", f"unix://{crictl.socket}",
            "--image-endpoint", f"unix://{crictl.socket}", *args]


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec(crictl, web, transport):
    _, cid, _ = web
    result = crictl.run("exec", "-r", transport, cid, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    # crictl exits 1 and names the command's exit code.
    assert result.returncode != 0 and "exit code 3" in result.stderr, result
    assert result.stdout == "out\n" and "err" in result.stderr
    piped = subprocess.run(crictl_argv(crictl, "exec", "-r", transport, "-i", cid, "cat"), input="through stdin\n",
                           capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0 and piped.stdout == "through stdin\n", piped


def test_exec_sync_and_timeout(crictl, web):
    _, cid, _ = web
    assert crictl.run("exec", "-s", cid, "sh", "-c", "echo sync").stdout.strip() == "sync"
    result = crictl.run("exec", "-s", cid, "sh", "-c", "exit 4", check=False)
    assert result.returncode != 0 and "exited with 4" in result.stderr, result
    started = time.monotonic()
    result = crictl.run("exec", "-s", "--timeout", "1", cid, "sleep", "30", check=False)
    assert result.returncode != 0 and time.monotonic() - started < 15
    assert "timed out" in (result.stdout + result.stderr).lower() or "deadline" in result.stderr.lower()
    # Output over the caps on both streams still comes back, truncated, in
    # one gRPC message (crictl's receive limit is 16 MiB, like the kubelet's).
    result = crictl.run("exec", "-s", cid, "sh", "-c",
                        "head -c 17000000 /dev/zero; head -c 17000000 /dev/zero >&2", check=False, text=False)
    assert result.returncode == 0, result.stderr[-500:]
    both = result.stdout + result.stderr  # crictl prints the two streams together
    assert (16 << 20) - 8192 < len(both) < 16 << 20
    assert b"stdout truncated at 8 MiB" in both and b"stderr truncated at 8 MiB" in both


def _pty_session(argv, send: bytes, expect: bytes, timeout: float = 20) -> bytes:
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    seen = b""
    try:
        deadline = time.monotonic() + timeout
        sent = False
        while expect not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
            if not sent and time.monotonic() > deadline - timeout + 1:
                os.write(fd, send)
                sent = True
        return seen
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)


def test_exec_tty_shell(crictl, web):
    _, cid, _ = web
    out = _pty_session(crictl_argv(crictl, "exec", "-it", cid, "sh"), b"echo $((6*7)); stty size; exit\n", b"42")
    assert b"42" in out


def test_attach_to_an_interactive_shell(crictl, web):
    _, _, shell = web
    out = _pty_session(crictl_argv(crictl, "attach", "-it", shell), b"echo attached-$((2+3))\n", b"attached-5")
    assert b"attached-5" in out
    assert crictl.json("inspect", shell)["status"]["state"] == "CONTAINER_RUNNING"  # detaching leaves it running


def test_port_forward_serves_the_pod_web_page(crictl, web):
    pod_id, _, _ = web
    port = free_port()
    forward = subprocess.Popen(crictl_argv(crictl, "port-forward", pod_id, f"{port}:80"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline and forward.poll() is None
                time.sleep(0.2)
        assert body == WEB_INDEX_HTML
        for _ in range(10):
            assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() == WEB_INDEX_HTML
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            bodies = list(pool.map(lambda _: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read(),
                                   range(10)))
        assert bodies == [WEB_INDEX_HTML] * 10
    finally:
        forward.kill()
        forward.wait()


def test_killed_client_leaves_no_process(crictl, web):
    _, cid, _ = web
    client = subprocess.Popen(crictl_argv(crictl, "exec", "-i", cid, "sh", "-c", "echo started; exec sleep 271"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert client.stdout.readline() == b"started\n"
        running = crictl.run("exec", "-s", cid, "ps").stdout
        assert "sleep 271" in running
    finally:
        client.kill()
        client.wait()
    deadline = time.monotonic() + 10
    while "sleep 271" in crictl.run("exec", "-s", cid, "ps").stdout:
        assert time.monotonic() < deadline, "the exec's process outlived its client"
        time.sleep(0.2)
