"""The streaming server driven by the real crictl.

A fake CRI runtime (``harness/fake_stream_runtime.py``) serves the
streaming RPCs with rktlet's StreamService and a backend that runs host
processes; crictl execs, attaches and port-forwards through it over SPDY and
WebSocket, like against a real runtime. No container runtime is involved.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from rktlet.cri.proto import pb, pb_grpc
from rktlet.stream.testing import upgrade_request
from harness.crictl import find_crictl

pytestmark = pytest.mark.root

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRANSPORTS = ["spdy", "websocket"]
MiB = 1024 * 1024


class Runtime:
    """The fake runtime process and a crictl bound to it."""

    def __init__(self, tmp, name: str, *extra: str) -> None:
        self.socket = str(tmp / f"{name}.sock")
        self.events_path = str(tmp / f"{name}.events")
        self.config = str(tmp / f"{name}-crictl.yaml")
        with open(self.config, "w") as f:
            f.write(f"runtime-endpoint: unix://{self.socket}\nimage-endpoint: unix://{self.socket}\ntimeout: 20\n")
        open(self.events_path, "w").close()
        self.crictl_binary = find_crictl()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.fake_stream_runtime"]
            + ["--socket", self.socket, "--events", self.events_path, *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=open(str(tmp / f"{name}.log"), "w"),
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake runtime did not start: {line!r}")
        self.base_url = line.split()[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def argv(self, *args: str) -> list[str]:
        return [self.crictl_binary, "--config", self.config, *args]

    def crictl(self, *args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), input=input, capture_output=True, timeout=timeout)

    def events(self) -> list[dict]:
        with open(self.events_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def wait_event(self, predicate, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no such event in {self.events()}")

    def stub(self) -> pb_grpc.RuntimeServiceStub:
        return pb_grpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{self.socket}"))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    if find_crictl() is None:
        pytest.skip("crictl not installed (go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0)")
    rt = Runtime(tmp_path_factory.mktemp("stream"), "main")
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture(scope="module")
def web_server():
    """A web server on 127.0.0.1 for port-forwarding: /small and /big."""
    big = os.urandom(MiB) * 4

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = big if self.path == "/big" else f"hello from {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], big
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortForward:
    """``crictl port-forward`` running in the background."""

    def __init__(self, runtime: Runtime, transport: str, remote_port: int, pod: str = "pod1") -> None:
        self.local_port = free_port()
        self.proc = subprocess.Popen(
            runtime.argv("port-forward", "-r", transport, pod, f"{self.local_port}:{remote_port}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("Forwarding from"), line

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read()


# -- exec ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_splits_stdout_and_stderr_and_reports_the_exit_code(runtime, transport):
    result = runtime.crictl("exec", "-r", transport, "ctr", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.stdout == b"out\n"
    assert b"err\n" in result.stderr
    assert b"command terminated with exit code 3" in result.stderr
    assert result.returncode == 1  # crictl's own status for any error
    ok = runtime.crictl("exec", "-r", transport, "ctr", "sh", "-c", "echo fine")
    assert (ok.returncode, ok.stdout) == (0, b"fine\n")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_stdin_comes_back_and_eof_ends_the_command(runtime, transport):
    data = b"".join(b"line %d %s\n" % (i, b"x" * (i % 300)) for i in range(20000))  # ~3 MiB
    result = runtime.crictl("exec", "-r", transport, "-i", "ctr", "cat", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_exec_of_a_missing_container_fails_at_the_rpc(runtime):
    result = runtime.crictl("exec", "missing-1", "true")
    assert result.returncode == 1 and b"NotFound" in result.stderr


def _read_until(fd: int, needle: bytes, buffer: bytearray, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while needle not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not in tty output {bytes(buffer)!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"tty closed before {needle!r}: {bytes(buffer)!r}")
            buffer += chunk


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_tty_delivers_tty_output_and_resizes(runtime, transport):
    master, slave = pty.openpty()
    _set_size(master, 30, 100)

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    marker = f"tty-{transport}"
    script = f": {marker}; read a; stty size; read b; stty size; echo done-$a-$b"
    proc = subprocess.Popen(
        runtime.argv("exec", "-r", transport, "-it", "ctr", "sh", "-c", script),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_tty,
    )
    os.close(slave)
    output = bytearray()
    try:
        started = runtime.wait_event(lambda e: e["event"] == "exec" and marker in " ".join(e["cmd"]))
        assert started["tty"] is True
        pid = started["pid"]

        def resized(width, height):
            return lambda e: e["event"] == "resize" and e.get("pid") == pid and (e["width"], e["height"]) == (width, height)

        runtime.wait_event(resized(100, 30), timeout=20)  # the client's size, sent at once
        os.write(master, b"x\r")
        _read_until(master, b"30 100\r\n", output)
        _set_size(master, 40, 120)  # the kernel sends crictl SIGWINCH
        runtime.wait_event(resized(120, 40), timeout=20)
        os.write(master, b"y\r")
        _read_until(master, b"done-x-y\r\n", output)
        assert b"40 120\r\n" in output
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


# -- attach ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_talks_to_the_main_process(runtime, transport):
    container = f"attach-{transport}"
    result = runtime.crictl("attach", "-r", transport, "-i", container, input=b"hello\nquit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got hello\ngot quit\n"
    assert b"err hello\n" in result.stderr
    runtime.wait_event(lambda e: e["event"] == "container_exit" and e["container"] == container and e["code"] == 7)


# -- port-forward ---------------------------------------------------------------------------


def fetch(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as response:
        return response.read()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_sequential_and_concurrent_requests(runtime, web_server, transport):
    port, big = web_server
    forward = PortForward(runtime, transport, port)
    try:
        for i in range(15):
            assert fetch(forward.local_port, f"/seq{i}") == f"hello from /seq{i}\n".encode()
        with ThreadPoolExecutor(max_workers=12) as pool:
            paths = [f"/par{i}" for i in range(40)]
            results = list(pool.map(lambda p: fetch(forward.local_port, p), paths))
        assert results == [f"hello from {p}\n".encode() for p in paths]
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert all(r == big for r in pool.map(lambda _: fetch(forward.local_port, "/big"), range(4)))
        assert forward.proc.poll() is None
    finally:
        out = forward.stop()
    assert "Handling connection" in out and "error" not in out.lower()


def test_port_forward_to_a_closed_port_reports_the_error(runtime):
    forward = PortForward(runtime, "spdy", free_port())
    try:
        with pytest.raises(OSError):
            fetch(forward.local_port, "/")
        forward.proc.wait(10)  # kubectl and crictl end the session on an error message
    finally:
        out = forward.stop()
    assert "error forwarding port" in out and "connection refused" in out.lower()


# -- tokens ----------------------------------------------------------------------------------


def _http_status(base_url: str, path: str) -> int:
    host, port = base_url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(upgrade_request(path, ["v4.channel.k8s.io"]))
        return int(s.recv(4096).split(b" ", 2)[1])


def test_a_token_works_once(runtime):
    request = pb.ExecRequest(container_id="ctr", cmd=["true"], stdout=True, stderr=True)
    url = runtime.stub().Exec(request, timeout=10).url
    assert url.startswith(runtime.base_url + "/exec/")
    path = url[len(runtime.base_url) :]
    assert _http_status(runtime.base_url, path) == 101
    assert _http_status(runtime.base_url, path) == 404


def test_an_expired_token_is_404(tmp_path):
    short = Runtime(tmp_path, "short", "--token-ttl", "0.5")
    try:
        url = short.stub().Attach(pb.AttachRequest(container_id="ctr", stdout=True), timeout=10).url
        time.sleep(0.7)
        assert _http_status(short.base_url, url[len(short.base_url) :]) == 404
    finally:
        short.stop()


# -- clients that go away -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_killing_the_client_mid_stream_ends_the_process(runtime, transport):
    marker = f"sleep-{transport}"
    argv = runtime.argv("exec", "-r", transport, "ctr", "sh", "-c", f"echo {marker}; exec sleep 1000")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == marker.encode() + b"\n"
        started = runtime.wait_event(lambda e: e["event"] == "exec" and marker in " ".join(e["cmd"]))
        proc.kill()
        proc.wait()
        runtime.wait_event(lambda e: e["event"] == "terminate" and e["pid"] == started["pid"])
        runtime.wait_event(lambda e: e["event"] == "exit" and e["pid"] == started["pid"])
        with pytest.raises(ProcessLookupError):
            os.kill(started["pid"], 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- back-pressure -------------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def _settle_rss(pid: int) -> int:
    """RSS once it stopped moving (the session reached its steady state)."""
    last = _rss(pid)
    for _ in range(50):
        time.sleep(0.2)
        now = _rss(pid)
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_stops_reading_pauses_the_process(runtime, transport):
    marker = f"slow-reader-{transport}"
    argv = runtime.argv("exec", "-r", transport, "ctr", "sh", "-c", f"echo {marker}; exec cat /dev/zero")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == marker.encode() + b"\n"
        cat = runtime.wait_event(lambda e: e["event"] == "exec" and marker in " ".join(e["cmd"]))["pid"]
        # crictl is not read: its pipe, its socket, then ours fill up, and
        # the server stops reading cat's stdout instead of buffering.
        before = _settle_rss(runtime.proc.pid)
        time.sleep(1)
        assert _rss(runtime.proc.pid) - before < 4 * MiB
        assert "pipe_write" in _wchan(cat)
        # reading again resumes it
        assert len(proc.stdout.read(20 * MiB)) == 20 * MiB
    finally:
        proc.kill()
        proc.wait()
    runtime.wait_event(lambda e: e["event"] == "exit" and e["pid"] == cat)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_process_that_does_not_read_stdin_pauses_the_client(runtime, transport):
    marker = f"not-reading-{transport}"
    with open("/dev/zero", "rb") as zero:
        proc = subprocess.Popen(
            runtime.argv("exec", "-r", transport, "-i", "ctr", "sh", "-c", f"echo {marker}; exec sleep 1000"),
            stdin=zero,
            stdout=subprocess.PIPE,
        )
    try:
        assert proc.stdout.readline() == marker.encode() + b"\n"
        before = _settle_rss(runtime.proc.pid)
        time.sleep(1)
        assert _rss(runtime.proc.pid) - before < 4 * MiB  # stdin is not piling up in the server
        # the server still answers other sessions meanwhile
        assert runtime.crictl("exec", "-r", transport, "ctr", "echo", "alive").stdout == b"alive\n"
    finally:
        proc.kill()
        proc.wait()
    sleeper = runtime.wait_event(lambda e: e["event"] == "exec" and marker in " ".join(e["cmd"]))["pid"]
    runtime.wait_event(lambda e: e["event"] == "exit" and e["pid"] == sleeper)


# -- TLS ---------------------------------------------------------------------------------------


def _self_signed(tmp_path) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path.write_bytes(pem)
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_over_tls(tmp_path, transport):
    cert, key = _self_signed(tmp_path)
    tls = Runtime(tmp_path, "tls", "--tls-cert", cert, "--tls-key", key)
    try:
        assert tls.base_url.startswith("https://127.0.0.1:")
        flags = ["--tls-ca", cert, "--tls-cert", cert, "--tls-key", key]
        result = tls.crictl("exec", "-r", transport, *flags, "-i", "ctr", "sh", "-c", "cat; exit 4", input=b"secret\n")
        assert result.stdout == b"secret\n"
        assert b"exit code 4" in result.stderr
    finally:
        tls.stop()


# -- throughput (figures printed, not asserted) ---------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_throughput_exec_cat_100_MiB(runtime, tmp_path, transport):
    block = os.urandom(MiB)
    source = tmp_path / "100MiB"
    with open(source, "wb") as f:
        for _ in range(100):
            f.write(block)
    expected = hashlib.sha256(block * 100).hexdigest()
    started = time.monotonic()
    with open(source, "rb") as stdin:
        argv = runtime.argv("exec", "-r", transport, "-i", "ctr", "cat")
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        digest, size = hashlib.sha256(), 0
        while chunk := proc.stdout.read(MiB):
            digest.update(chunk)
            size += len(chunk)
        stderr = proc.stderr.read()
        assert proc.wait(30) == 0, stderr
    elapsed = time.monotonic() - started
    assert size == 100 * MiB and digest.hexdigest() == expected
    print(f"\nexec cat over {transport}: 100 MiB in {elapsed:.2f}s = {100 * MiB / elapsed / 1e6:.0f} MB/s each way")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_throughput_port_forward_100_MiB(runtime, transport):
    block = os.urandom(MiB)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            for _ in range(100):
                conn.sendall(block)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    forward = PortForward(runtime, transport, listener.getsockname()[1])
    try:
        started = time.monotonic()
        digest, size = hashlib.sha256(), 0
        with socket.create_connection(("127.0.0.1", forward.local_port), timeout=30) as s:
            while chunk := s.recv(MiB):
                digest.update(chunk)
                size += len(chunk)
        elapsed = time.monotonic() - started
    finally:
        forward.stop()
        listener.close()
        thread.join(5)
    assert size == 100 * MiB and digest.hexdigest() == hashlib.sha256(block * 100).hexdigest()
    print(f"\nport-forward over {transport}: 100 MiB in {elapsed:.2f}s = {100 * MiB / elapsed / 1e6:.0f} MB/s")


# -- what a client can make the server hold (issue 12) ---------------------------------------


def _stream_socket(base_url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = base_url.split("//")[1].rsplit(":", 1)
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((host, int(port)))
    return s


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_a_request_body_is_refused_before_it_is_read(runtime):
    with _stream_socket(runtime.base_url) as s:
        s.settimeout(5)
        s.sendall(b"POST /exec/AAAAAAAA HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        # The answer comes without waiting for the body (which would be
        # spooled to disk first), and the connection is closed.
        head, rest = _read_head(s)
        assert head.startswith(b"HTTP/1.1 413 ")
        while s.recv(4096):
            pass


def _port_forward_session(runtime, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    url = runtime.stub().PortForward(pb.PortForwardRequest(pod_sandbox_id="pod1"), timeout=10).url
    s = _stream_socket(runtime.base_url, rcvbuf)
    s.sendall(upgrade_request(url[len(runtime.base_url) :], ["portforward.k8s.io"]))
    head, rest = _read_head(s)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s, rest


def test_a_spdy_client_that_reads_nothing_cannot_queue_ping_replies(runtime):
    from rktlet.stream import spdyframes as f
    from rktlet.stream.testing import SpdyClient

    s, _ = _port_forward_session(runtime, rcvbuf=4096)
    with s:
        before = _settle_rss(runtime.proc.pid)
        pings = SpdyClient().encode(f.Ping(1)) * 10_000
        s.setblocking(False)
        deadline, sent = time.monotonic() + 4, 0
        while time.monotonic() < deadline:
            try:
                sent += s.send(pings)
            except BlockingIOError:
                time.sleep(0.01)
        # The server stopped reading once its replies could not go out:
        # what the client sent waits in the kernel, not in the server.
        grown = _rss(runtime.proc.pid) - before
        assert grown < 6 * MiB, f"{grown} bytes more after {sent} bytes of PINGs"


def test_spdy_port_forward_pairs_waiting_past_the_limit_end_the_connection(runtime):
    from rktlet.stream import portforward
    from rktlet.stream import spdyframes as f
    from rktlet.stream.testing import SpdyClient

    s, rest = _port_forward_session(runtime)
    with s:
        client = SpdyClient()
        wire = b"".join(
            client.open({"streamtype": "error", "port": "80", "requestid": str(i)}, fin=True)[1]
            for i in range(portforward.MAX_PENDING_PAIRS + 1)
        )
        s.sendall(wire)
        frames = client.receive(rest)
        while chunk := s.recv(65536):
            frames += client.receive(chunk)
    goaway = [fr for fr in frames if isinstance(fr, f.GoAway)]
    assert goaway and goaway[0].status == f.GOAWAY_PROTOCOL_ERROR
    assert len(client.replied) == portforward.MAX_PENDING_PAIRS
