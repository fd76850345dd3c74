"""A misbehaving HTTP reverse proxy in front of a real registry, for tests.

Run as its own process::

    python -m harness.registry_proxy --upstream http://127.0.0.1:5000 --port 0 \\
        [--token-auth USER:PASS] [--rate BYTES_PER_SECOND] [--stall-after BYTES]

It listens on 127.0.0.1 only and prints its port on stdout as the first (and
only) line; one line per request (``METHOD PATH STATUS``) and any error go to
stderr.  Everything is forwarded to the upstream registry (method, headers,
body), with bodies streamed in both directions, never held whole in memory.

Options:

* ``--token-auth USER:PASS``: the proxy becomes a registry with Docker token
  authentication.  Every ``/v2/...`` request needs ``Authorization: Bearer
  <token>``; without a valid one the answer is ``401`` with a ``Bearer``
  challenge naming the proxy's own ``/token`` realm.  ``GET /token`` checks
  HTTP basic auth against USER:PASS and hands out random tokens (remembered in
  memory, valid 300 s, for the scopes asked).  The client's ``Authorization``
  is never forwarded upstream in this mode.
* ``--rate N``: blob bodies (``GET /v2/<name>/blobs/<digest>``) are sent at
  about N bytes per second, per response: slow, but always moving.
* ``--stall-after N``: blob responses send their headers and the first N
  bytes, then nothing more; the connection is held open until the client
  gives up.

:class:`RegistryProxy` runs this as a child process for a test and always
stops it by PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import binascii
import json
import os
import re
import secrets
import select
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from harness.processes import spawn, stop_process

__all__ = ["RegistryProxy", "main"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOKEN_LIFETIME = 300
SERVICE = "rktlet-test"

_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
        b"trailers", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip
_REPO_ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags|referrers)(?:/|$)")
_BLOB_ROUTE = re.compile(r"^/v2/.+/blobs/(?P<digest>[a-z0-9]+:[a-fA-F0-9]+)$")

# How often a throttled response releases data, and how much it may buffer
# ahead before the upstream connection is paused.
_TICK = 0.05
_HIGH_WATER = 256 * 1024


# -- the proxy process (twisted) ----------------------------------------------------


def _registry_error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def _build_site(reactor: Any, upstream: str, token_auth: Optional[tuple[str, str]], rate: Optional[float],
                stall_after: Optional[int], log: Any) -> Any:
    """The twisted.web site of the proxy (imports twisted lazily, so that the
    test-side wrapper does not need it)."""
    from twisted.internet.defer import CancelledError
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
    from twisted.web.http import HTTPChannel, PotentialDataLoss
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import UNKNOWN_LENGTH
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    upstream = upstream.rstrip("/")
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    agent = Agent(reactor, connectTimeout=10, pool=pool)
    # token -> (expiry, scopes)
    tokens: dict[str, tuple[float, frozenset[str]]] = {}

    class Relay(Protocol):
        """Copies one upstream response body to the client request, with
        backpressure both ways, optionally throttled or stalled."""

        def __init__(self, request: Any, throttle: Optional[float], stall: Optional[int]) -> None:
            self.request = request
            self.rate = throttle
            self.stall = stall
            self.pending = bytearray()
            self.sent = 0
            self.upstream_done = False
            self.upstream_failed = False
            self.closed = False  # the client went away, or we finished
            self.paused_by_client = False
            self.paused_by_buffer = False
            self.stalled = False
            self.timer: Any = None
            self.started = reactor.seconds()

        # the client side drives us as a producer (its socket buffer full/empty)
        def pauseProducing(self) -> None:
            self.paused_by_client = True
            self._update_upstream()

        def resumeProducing(self) -> None:
            self.paused_by_client = False
            self._update_upstream()
            self._pump()

        def stopProducing(self) -> None:
            self.client_gone()

        def _update_upstream(self) -> None:
            if self.transport is None or self.upstream_done or self.closed:
                return
            if self.paused_by_client or self.paused_by_buffer or self.stalled:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

        def connectionMade(self) -> None:
            self.request.registerProducer(self, True)
            self.request.notifyFinish().addErrback(lambda _: self.client_gone())
            if self.rate is not None:
                self.timer = reactor.callLater(_TICK, self._tick)

        def dataReceived(self, data: bytes) -> None:
            if self.closed or self.stalled:
                return
            self.pending += data
            if len(self.pending) > _HIGH_WATER and not self.paused_by_buffer:
                self.paused_by_buffer = True
                self._update_upstream()
            self._pump()

        def connectionLost(self, reason: Any = None) -> None:
            self.upstream_done = True
            if self.closed:
                return  # we dropped it: the client left
            if reason is not None and not reason.check(ResponseDone, PotentialDataLoss):
                self.upstream_failed = True
                log(f"upstream body failed after {self.sent + len(self.pending)} bytes: {reason.getErrorMessage()}")
            self._pump()

        def _allowance(self) -> int:
            limit = len(self.pending)
            if self.stall is not None:
                limit = min(limit, max(0, self.stall - self.sent))
            if self.rate is not None:
                elapsed = reactor.seconds() - self.started
                # A small burst allowance so the first bytes go out at once.
                budget = int(self.rate * (elapsed + _TICK)) - self.sent
                limit = min(limit, max(0, budget))
            return limit

        def _pump(self) -> None:
            if self.closed:
                return
            if not self.paused_by_client:
                n = self._allowance()
                if n:
                    chunk = bytes(self.pending[:n])
                    del self.pending[:n]
                    self.sent += n
                    self.request.write(chunk)
            if self.stall is not None and self.sent >= self.stall and not self.stalled:
                # Hold the connection open, sending nothing more, until the client leaves.
                self.stalled = True
                self.pending.clear()
                log(f"stalled {self.request.path.decode()} after {self.sent} bytes")
                self._update_upstream()
                return
            if self.paused_by_buffer and len(self.pending) < _HIGH_WATER // 2:
                self.paused_by_buffer = False
                self._update_upstream()
            if self.upstream_done and not self.pending and not self.stalled:
                self._finish()

        def _tick(self) -> None:
            self.timer = None
            if self.closed:
                return
            self._pump()
            if not self.closed:
                self.timer = reactor.callLater(_TICK, self._tick)

        def _finish(self) -> None:
            self.closed = True
            self._cancel_timer()
            self.request.unregisterProducer()
            if self.upstream_failed:
                # Let the client see the truncation instead of a clean end.
                self.request.channel.transport.abortConnection()
            else:
                self.request.finish()

        def _cancel_timer(self) -> None:
            if self.timer is not None and self.timer.active():
                self.timer.cancel()
            self.timer = None

        def client_gone(self) -> None:
            if self.closed:
                return
            self.closed = True
            self._cancel_timer()
            self.pending.clear()
            if self.transport is not None and not self.upstream_done:
                self.transport.stopProducing()

    class Proxy(Resource):
        isLeaf = True

        def render(self, request: Any) -> Any:
            path = request.uri.decode("latin-1")
            route = urlsplit(path).path
            if token_auth is not None:
                if route == "/token":
                    return self._token(request)
                if route == "/v2" or route.startswith("/v2/"):
                    denied = self._check_token(request, route)
                    if denied is not None:
                        return denied
            return self._forward(request, path, route)

        # -- token authentication -------------------------------------------------

        def _token(self, request: Any) -> bytes:
            assert token_auth is not None
            request.setHeader(b"Content-Type", b"application/json")
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            scheme, _, value = header.partition(" ")
            ok = False
            if scheme.lower() == "basic":
                try:
                    user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
                    ok = secrets.compare_digest(user, token_auth[0]) and secrets.compare_digest(password, token_auth[1])
                except (binascii.Error, UnicodeDecodeError):
                    ok = False
            if not ok:
                request.setResponseCode(401)
                request.setHeader(b"WWW-Authenticate", f'Basic realm="{SERVICE}"'.encode())
                log(f"GET /token 401 ({'wrong' if header else 'no'} credentials)")
                return _registry_error("UNAUTHORIZED", "invalid username or password")
            scopes = frozenset(s for arg in request.args.get(b"scope", []) for s in arg.decode().split(" ") if s)
            token = secrets.token_urlsafe(24)
            now = reactor.seconds()
            for stale in [t for t, (expiry, _) in tokens.items() if expiry <= now]:
                del tokens[stale]
            tokens[token] = (now + TOKEN_LIFETIME, scopes)
            log(f"GET /token 200 (scopes {sorted(scopes)})")
            return json.dumps({"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME}).encode()

        def _check_token(self, request: Any, route: str) -> Optional[bytes]:
            match = _REPO_ROUTE.match(route)
            repo = match.group("name") if match else None
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            scheme, _, value = header.partition(" ")
            granted = tokens.get(value.strip()) if scheme.lower() == "bearer" else None
            if granted is not None and granted[0] > reactor.seconds():
                if repo is None or any(
                    s.startswith(f"repository:{repo}:") and "pull" in s.rsplit(":", 1)[1].split(",")
                    for s in granted[1]
                ):
                    return None
            host = request.getHost()
            realm = f"http://{host.host}:{host.port}/token"
            challenge = f'Bearer realm="{realm}",service="{SERVICE}"'
            if repo is not None:
                challenge += f',scope="repository:{repo}:pull"'
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", challenge.encode())
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Docker-Distribution-API-Version", b"registry/2.0")
            log(f"{request.method.decode()} {route} 401")
            return _registry_error("UNAUTHORIZED", "authentication required")

        # -- forwarding -------------------------------------------------------------

        def _forward(self, request: Any, path: str, route: str) -> Any:
            headers = Headers()
            for name, values in request.requestHeaders.getAllRawHeaders():
                lower = name.lower()
                if lower in _HOP_BY_HOP or lower in (b"host", b"content-length"):
                    continue
                if lower == b"authorization" and token_auth is not None:
                    continue
                headers.setRawHeaders(name, values)
            body = None
            request.content.seek(0, os.SEEK_END)
            if request.content.tell() or request.method in (b"POST", b"PUT", b"PATCH"):
                request.content.seek(0)
                body = FileBodyProducer(request.content)
            is_blob = request.method == b"GET" and _BLOB_ROUTE.match(route) is not None
            d = agent.request(request.method, (upstream + path).encode("latin-1"), headers, body)
            gone = []
            request.notifyFinish().addErrback(lambda _: (gone.append(True), d.cancel()))

            def respond(response: Any) -> None:
                if gone:
                    response.deliverBody(Protocol())  # drop it
                    return
                request.setResponseCode(response.code, response.phrase)
                for name, values in response.headers.getAllRawHeaders():
                    if name.lower() in _HOP_BY_HOP:
                        continue
                    if name.lower() == b"location":
                        values = [self._rewrite_location(request, v) for v in values]
                    request.responseHeaders.setRawHeaders(name, values)
                # (For HEAD, Content-Length is among the headers copied above.)
                if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
                    request.responseHeaders.setRawHeaders(b"Content-Length", [str(response.length).encode()])
                log(f"{request.method.decode()} {route} {response.code}")
                ok_blob = is_blob and response.code == 200
                response.deliverBody(
                    Relay(request, rate if ok_blob else None, stall_after if ok_blob else None)
                )

            def failed(failure: Any) -> None:
                if gone or failure.check(CancelledError):
                    return
                log(f"{request.method.decode()} {route}: upstream failed: {failure.getErrorMessage()}")
                request.setResponseCode(502)
                request.setHeader(b"Content-Type", b"application/json")
                request.write(_registry_error("UNAVAILABLE", f"upstream failed: {failure.getErrorMessage()}"))
                request.finish()

            d.addCallbacks(respond, failed)
            d.addErrback(lambda f: log(f"proxy error: {f.getTraceback()}"))
            return NOT_DONE_YET

        def _rewrite_location(self, request: Any, value: bytes) -> bytes:
            text = value.decode("latin-1")
            if text.startswith(upstream):
                host = request.getHost()
                text = f"http://{host.host}:{host.port}" + text[len(upstream):]
            return text.encode("latin-1")

    class Channel(HTTPChannel):
        """Answers a TLS ClientHello at once with 400 and closes, as Go's
        net/http (docker-registry) does, instead of waiting for a request
        line that never comes: HTTPS-first clients then fall back at once."""

        _first = True

        def dataReceived(self, data: bytes) -> None:
            if self._first:
                self._first = False
                if data[:1] == b"\x16":
                    log("refused a TLS handshake (plain HTTP only)")
                    self.transport.write(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                    self.transport.loseConnection()
                    return
            super().dataReceived(data)

    class QuietSite(Site):
        protocol = Channel

        def log(self, request: Any) -> None:  # access lines are written by the resource
            pass

    return QuietSite(Proxy())


def _credentials(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASS")
    return user, password


def main(argv: Optional[list[str]] = None) -> int:
    """Run the proxy until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m harness.registry_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL of the registry, http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0, help="port to listen on, on 127.0.0.1 (0: any free one)")
    parser.add_argument("--token-auth", type=_credentials, metavar="USER:PASS", help="require bearer tokens")
    parser.add_argument("--rate", type=float, metavar="BYTES_PER_SECOND", help="throttle blob bodies")
    parser.add_argument("--stall-after", type=int, metavar="BYTES", help="stop blob bodies after BYTES")
    args = parser.parse_args(argv)
    parsed = urlsplit(args.upstream)
    if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--upstream must be an http:// URL on loopback")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if args.stall_after is not None and args.stall_after < 0:
        parser.error("--stall-after must not be negative")

    from twisted.internet import reactor

    def log(line: str) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        sys.stderr.flush()

    site = _build_site(reactor, args.upstream, args.token_auth, args.rate, args.stall_after, log)
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    sys.stdout.write(f"{port.getHost().port}\n")
    sys.stdout.flush()
    log(f"proxy on 127.0.0.1:{port.getHost().port} for {args.upstream} "
        f"(token_auth={args.token_auth is not None}, rate={args.rate}, stall_after={args.stall_after})")
    reactor.run()
    return 0


# -- the test-side wrapper --------------------------------------------------------------

_START_TIMEOUT = 15.0
_STOP_GRACE = 3.0
_LIVE: "set[RegistryProxy]" = set()


class RegistryProxy:
    """The proxy as a child process of the test.

    ::

        with RegistryProxy(registry.url, rate=500_000) as proxy:
            pull(f"{proxy.host}/busybox:latest")

    :param upstream_url: the registry, ``http://127.0.0.1:PORT``.
    :param token_auth: ``(user, password)`` or ``"user:password"``.
    :param rate: bytes per second for blob bodies.
    :param stall_after: bytes of a blob body sent before it stalls.
    """

    def __init__(
        self,
        upstream_url: str,
        token_auth: Union[tuple[str, str], str, None] = None,
        rate: Optional[float] = None,
        stall_after: Optional[int] = None,
    ) -> None:
        if isinstance(token_auth, tuple):
            token_auth = f"{token_auth[0]}:{token_auth[1]}"
        self.upstream_url = upstream_url
        self.token_auth = token_auth
        self.rate = rate
        self.stall_after = stall_after
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        self._log_path: Optional[str] = None

    @property
    def argv(self) -> list[str]:
        """The command line of the proxy process."""
        argv = [sys.executable, "-m", "harness.registry_proxy", "--upstream", self.upstream_url, "--port", "0"]
        if self.token_auth is not None:
            argv += ["--token-auth", self.token_auth]
        if self.rate is not None:
            argv += ["--rate", str(self.rate)]
        if self.stall_after is not None:
            argv += ["--stall-after", str(self.stall_after)]
        return argv

    @property
    def pid(self) -> Optional[int]:
        """PID of the proxy process, or ``None`` when not running."""
        return self.process.pid if self.process is not None else None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references through the proxy."""
        if self.port is None:
            raise RuntimeError("registry proxy is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    def start(self) -> "RegistryProxy":
        """Start the process and wait for the port it prints."""
        if self.process is not None:
            return self
        fd, self._log_path = tempfile.mkstemp(prefix="rktlet-registry-proxy-", suffix=".log")
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.process = spawn(self.argv, stdout=subprocess.PIPE, stderr=fd, env=env, cwd=REPO)
        finally:
            os.close(fd)
        _LIVE.add(self)
        try:
            line = self._first_line()
            self.port = int(line)
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        out = self.process.stdout
        deadline = time.monotonic() + _START_TIMEOUT
        data = b""
        try:
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"registry proxy printed no port within {_START_TIMEOUT:.0f}s:\n{self.log()}")
                ready, _, _ = select.select([out], [], [], left)
                if not ready:
                    continue
                chunk = os.read(out.fileno(), 64)
                if not chunk:
                    self.process.wait(timeout=_STOP_GRACE)
                    raise RuntimeError(f"registry proxy exited with {self.process.returncode}:\n{self.log()}")
                data += chunk
        finally:
            out.close()  # the proxy prints nothing more
        return data.split(b"\n", 1)[0].decode().strip()

    def log(self) -> str:
        """What the proxy wrote to stderr so far (one line per request)."""
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def requests(self, method: str = "GET", contains: str = "") -> list[str]:
        """Access lines ``METHOD PATH STATUS`` logged so far, filtered."""
        lines = []
        for line in self.log().splitlines():
            parts = line.split(" ", 1)
            if len(parts) == 2 and parts[1].startswith(method + " ") and contains in parts[1]:
                lines.append(parts[1])
        return lines

    def stop(self) -> Optional[int]:
        """Stop the process by PID (SIGTERM, then SIGKILL); remove its log.

        Idempotent.  :returns: its exit status.
        """
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            stop_process(proc, _STOP_GRACE)
            if proc.stdout is not None and not proc.stdout.closed:
                proc.stdout.close()
            code = proc.returncode
        _LIVE.discard(self)
        if self._log_path is not None:
            try:
                os.unlink(self._log_path)
            except FileNotFoundError:
                pass
            self._log_path = None
        return code

    def __enter__(self) -> "RegistryProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RegistryProxy {self.host if self.port else '-'} -> {self.upstream_url} pid={self.pid}>"


@atexit.register
def _stop_leftovers() -> None:
    for proxy in list(_LIVE):
        proxy.stop()


if __name__ == "__main__":
    sys.exit(main())
