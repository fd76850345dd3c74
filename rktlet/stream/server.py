"""The streaming server: ``/exec/<token>``, ``/attach/<token>`` and
``/portforward/<token>`` on twisted.web, and the service that listens.

Plugging it in (the CRI side)::

    service = StreamService(reactor, "127.0.0.1:10241", backend)
    service.setServiceParent(parent)          # listens when started
    url = service.new_session(ExecRequest(container_id, cmd, tty=..., ...))
    # -> "http://127.0.0.1:10241/exec/Ab3_x-9Q", the Exec RPC's answer

``new_session`` runs on the reactor thread (it calls ``backend.validate``);
the RPC layer crosses over to it like for any engine call.

Per request: the token is taken out of the cache (unknown, used, expired or
wrong kind: 404), then the upgrade is negotiated — SPDY exactly as
``httpstream.Handshake`` does it (400 without ``X-Stream-Protocol-Version``,
403 when nothing offered is supported, 400 without the upgrade headers, 101
echoing the chosen version), or WebSocket (subprotocol chosen in the client's
order, 403 when none fits, the handshake itself answered by autobahn).

Before any of that, :mod:`rktlet.stream.httpchannel` refuses request bodies
unread and bounds the request head in size and time; the sessions bound
themselves (:mod:`rktlet.stream.spdy`, :mod:`rktlet.stream.portforward`).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from rktlet.config import split_address
from rktlet.errors import InvalidArgument, NotFound, StartupError
from rktlet.stream import portforward, remotecommand, websocket
from rktlet.stream.httpchannel import DEFAULT_HEAD_TIMEOUT, StreamSite, tls_options
from rktlet.stream.session import AttachRequest, Backend, ExecRequest, PortForwardRequest
from rktlet.stream.spdy import DEFAULT_MAX_STREAMS, SpdyConnection
from rktlet.stream.tokens import KINDS, TokenCache
from rktlet.stream.upgrade import (
    SPDY_UPGRADE,
    has_token,
    header_values,
    is_websocket,
    negotiate,
    replay_request,
    switching_protocols,
    take_over,
)

log = Logger()

DEFAULT_ADDRESS = "127.0.0.1:10241"
DEFAULT_IDLE_TIMEOUT = 4 * 3600.0


def kind_of(request: Any) -> str:
    """The URL path (and token kind) of a stored request."""
    if isinstance(request, ExecRequest):
        return "exec"
    if isinstance(request, AttachRequest):
        return "attach"
    if isinstance(request, PortForwardRequest):
        return "portforward"
    raise TypeError(f"not a streaming request: {request!r}")


def check_request(request: Any) -> None:
    """What the reference server rejects at RPC time.

    :raises InvalidArgument: naming the field.
    """
    if isinstance(request, PortForwardRequest):
        if not request.sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        for port in request.ports:
            if not 0 < port <= 65535:
                raise InvalidArgument(f"port {port} is out of range")
        return
    if not request.container_id:
        raise InvalidArgument("container_id is required")
    if isinstance(request, ExecRequest) and not request.cmd:
        raise InvalidArgument("cmd is required")
    if request.tty and request.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` → (host, port).

    :raises InvalidArgument: naming the address.
    """
    try:
        return split_address(address)
    except ValueError:
        raise InvalidArgument(f"streaming address {address!r} is not HOST:PORT") from None


class StreamServer:
    """The request handling, without the listening (tests serve it from
    memory).

    :param clock: the reactor (timers, autobahn's timers).
    :param backend: the runtime.
    :param idle_timeout: seconds without traffic before a session is closed.
    :param stream_creation_timeout: seconds a SPDY client has to open all
        streams of a session (or both streams of a port-forward pair).
    :param finish_timeout: seconds to wait, after the final status, for the
        client to read everything and close.
    :param head_timeout: seconds a client has to send its request head.
    :param max_streams: most SPDY streams open at once on one connection.
    :param max_pending_pairs: most port-forward connections waiting for
        their second stream on one SPDY connection, and most ports of one
        WebSocket port-forward session.
    """

    def __init__(
        self,
        clock,
        backend: Backend,
        tokens: TokenCache | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        stream_creation_timeout: float = 30.0,
        finish_timeout: float = 900.0,
        head_timeout: float | None = DEFAULT_HEAD_TIMEOUT,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_pending_pairs: int = portforward.MAX_PENDING_PAIRS,
    ) -> None:
        self.clock = clock
        self.backend = backend
        self.tokens = tokens if tokens is not None else TokenCache(clock.seconds)
        self.idle_timeout = idle_timeout
        self.stream_creation_timeout = stream_creation_timeout
        self.finish_timeout = finish_timeout
        self.head_timeout = head_timeout
        self.max_streams = max_streams
        self.max_pending_pairs = max_pending_pairs
        self.ws_factory = websocket.make_factory(clock, finish_timeout)
        self.sessions: set[Any] = set()

    def resource(self) -> Resource:
        return _Root(self)

    def site(self, timeout: float | None = 60.0) -> StreamSite:
        """The twisted.web site serving this server (see
        :mod:`rktlet.stream.httpchannel` for what it refuses).

        :param timeout: seconds a connection may stay silent before it is
            upgraded.
        """
        return StreamSite(self.resource(), timeout=timeout, reactor=self.clock, head_timeout=self.head_timeout)

    def _port_forward_handler(self, sandbox_id: str):
        def handler(conn: SpdyConnection):
            return portforward.SpdyPortForwardHandler(
                conn, self.backend, sandbox_id, self.clock, self.stream_creation_timeout, self.max_pending_pairs
            )

        return handler

    def _spdy_connection(self, handler) -> SpdyConnection:
        return SpdyConnection(
            handler, self.clock, self.idle_timeout, on_closed=self._forget, max_streams=self.max_streams
        )

    def store(self, request: Any) -> tuple[str, str]:
        """Validate *request* and store it: (kind, token)."""
        check_request(request)
        validate = getattr(self.backend, "validate", None)
        if validate is not None:
            validate(request)
        kind = kind_of(request)
        return kind, self.tokens.insert(kind, request)

    def abort_all(self) -> None:
        """Drop every live session (the service is stopping)."""
        for session in list(self.sessions):
            session.abort()

    def _forget(self, session: Any) -> None:
        self.sessions.discard(session)

    # -- request handling ---------------------------------------------------------

    def serve(self, request: Request) -> bytes | int:
        parts = request.postpath
        if len(parts) != 2 or parts[0].decode("latin-1") not in KINDS:
            return _error(request, 404, "404 page not found")
        kind = parts[0].decode("latin-1")
        token = parts[1].decode("latin-1")
        try:
            stored = self.tokens.consume(kind, token)
        except NotFound as e:
            log.info("streaming request refused: {error}", error=e)
            return _error(request, 404, "404 page not found")
        if is_websocket(request):
            return self._websocket(request, kind, stored)
        return self._spdy(request, kind, stored)

    def _spdy(self, request: Request, kind: str, stored: Any) -> bytes | int:
        offered = header_values(request, "X-Stream-Protocol-Version")
        if not offered:
            return _error(request, 400, "unable to upgrade: X-Stream-Protocol-Version is required")
        supported = [portforward.PROTOCOL] if kind == "portforward" else list(remotecommand.SPDY_PROTOCOLS)
        chosen = negotiate(offered, supported)
        if chosen is None:
            for name in supported:
                request.responseHeaders.addRawHeader(b"X-Accepted-Stream-Protocol-Versions", name.encode())
            return _error(
                request,
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, server accepts {supported}",
            )
        if not (has_token(request, "Connection", "upgrade") and has_token(request, "Upgrade", SPDY_UPGRADE)):
            return _error(request, 400, "unable to upgrade: missing upgrade headers in request")

        if kind == "portforward":
            handler = self._port_forward_handler(stored.sandbox_id)
        else:
            version = remotecommand.SPDY_PROTOCOLS[chosen]

            def handler(conn: SpdyConnection):
                return remotecommand.SpdyCommandHandler(
                    conn,
                    self.backend,
                    stored,
                    version,
                    self.clock,
                    self.stream_creation_timeout,
                    self.finish_timeout,
                )

        conn = self._spdy_connection(handler)
        request.channel.transport.write(
            switching_protocols(
                [("Connection", "Upgrade"), ("Upgrade", SPDY_UPGRADE), ("X-Stream-Protocol-Version", chosen)]
            )
        )
        self.sessions.add(conn)
        take_over(request, conn)
        return NOT_DONE_YET

    def _websocket(self, request: Request, kind: str, stored: Any) -> bytes | int:
        if request.method != b"GET":
            return _error(request, 400, "a WebSocket upgrade must be a GET")
        if kind == "portforward":
            supported = [websocket.TUNNEL_PROTOCOL] + [p for p in websocket.PORTFORWARD_PROTOCOLS if p]
        else:
            supported = [p for p in websocket.COMMAND_PROTOCOLS if p]
        if request.requestHeaders.hasHeader(b"Sec-WebSocket-Protocol"):
            offered = header_values(request, "Sec-WebSocket-Protocol")
            chosen = negotiate(offered, supported)
            if chosen is None:
                return _error(
                    request,
                    403,
                    f"unable to upgrade: unable to negotiate protocol: client supports {offered}, server accepts {supported}",
                )
        else:
            chosen = ""
        options = websocket.SessionOptions(chosen, self.clock, self.idle_timeout, self._forget)
        proto: websocket.SessionProtocol
        if kind != "portforward":
            proto = websocket.CommandProtocol(options, self.backend, stored)
        elif chosen == websocket.TUNNEL_PROTOCOL:
            proto = websocket.TunnelProtocol(
                options, self._port_forward_handler(stored.sandbox_id), self.max_streams
            )
        else:
            try:
                ports = stored.ports or _query_ports(request)
            except InvalidArgument as e:
                return _error(request, 400, str(e))
            if not ports:
                return _error(request, 400, "at least one port must be given (query parameter port)")
            if len(ports) > self.max_pending_pairs:
                log.info(
                    "WebSocket port-forward refused: {n} ports, more than the limit of {limit}",
                    n=len(ports),
                    limit=self.max_pending_pairs,
                )
                return _error(request, 400, f"too many ports ({len(ports)}, at most {self.max_pending_pairs})")
            proto = websocket.PortForwardProtocol(options, self.backend, stored.sandbox_id, ports)
        proto.factory = self.ws_factory
        self.sessions.add(proto)
        take_over(request, proto, first=replay_request(request))
        return NOT_DONE_YET


def _query_ports(request: Request) -> tuple[int, ...]:
    """Ports named in the query (``port``/``ports``, repeated or comma lists)
    — used only when the stored request named none."""
    ports = []
    for key in (b"port", b"ports"):
        for raw in request.args.get(key, []):
            for text in raw.decode("latin-1").split(","):
                text = text.strip()
                if not text:
                    continue
                if not text.isdigit() or not 0 < int(text) <= 65535:
                    raise InvalidArgument(f"invalid port {text!r}")
                ports.append(int(text))
    return tuple(ports)


def _error(request: Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    return (message + "\n").encode()


class _Root(Resource):
    """Every path goes to the server; GET and POST only (others: 405)."""

    isLeaf = True

    def __init__(self, server: StreamServer) -> None:
        super().__init__()
        self._server = server

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"POST"):
            request.setHeader(b"Allow", b"GET, POST")
            return _error(request, 405, "405 method not allowed")
        return self._server.serve(request)


class StreamService(Service):
    """The streaming server as a service: listens on *address* (TLS when
    *tls_cert* and *tls_key*, PEM file paths, are given) and hands out
    session URLs.

    :param reactor: the reactor (listening, timers, the token clock).
    :param address: ``HOST:PORT``; port 0 picks a free port (see :attr:`port`).
    :param backend: the runtime side (:class:`~rktlet.stream.session.Backend`).
    :param idle_timeout: seconds without traffic before a session is closed.
    :param token_ttl: seconds a session URL stays valid.
    :param max_in_flight: most session URLs handed out and not yet used.
    """

    name = "stream"

    def __init__(
        self,
        reactor,
        address: str = DEFAULT_ADDRESS,
        backend: Backend | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        stream_creation_timeout: float = 30.0,
        finish_timeout: float = 900.0,
        token_ttl: float = 60.0,
        max_in_flight: int = 1000,
        http_timeout: float = 60.0,
    ) -> None:
        if backend is None:
            raise InvalidArgument("the streaming server needs a backend")
        if (tls_cert is None) != (tls_key is None):
            raise InvalidArgument("TLS for the streaming server needs both a certificate and a key")
        self._reactor = reactor
        self.host, self._requested_port = parse_address(address)
        self._tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self._http_timeout = http_timeout
        self.server = StreamServer(
            reactor,
            backend,
            TokenCache(reactor.seconds, token_ttl, max_in_flight),
            idle_timeout,
            stream_creation_timeout,
            finish_timeout,
        )
        self._listening = None
        self.port: int | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` as clients dial it (a wildcard address is
        advertised as loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        port = self.port if self.port is not None else self._requested_port
        return f"{self.scheme}://{host}:{port}"

    def url(self, kind: str, token: str) -> str:
        return f"{self.base_url}/{kind}/{token}"

    def new_session(self, request: ExecRequest | AttachRequest | PortForwardRequest) -> str:
        """Validate and store *request*; the URL the client must dial.

        :raises InvalidArgument: a malformed request.
        :raises NotFound, FailedPrecondition: from ``backend.validate``.
        :raises ResourceExhausted: too many URLs in flight.
        """
        kind, token = self.server.store(request)
        return self.url(kind, token)

    def startService(self) -> None:
        site = self.server.site(self._http_timeout)
        interface = self.host or "0.0.0.0"
        if self._tls:
            options = tls_options(*self._tls, "streaming server")
            endpoint = SSL4ServerEndpoint(self._reactor, self._requested_port, options, interface=interface)
        elif ":" in interface:
            endpoint = TCP6ServerEndpoint(self._reactor, self._requested_port, interface=interface)
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, self._requested_port, interface=interface)
        try:
            self._listening = _now(endpoint.listen(site))
        except CannotListenError as e:
            raise StartupError(f"streaming server cannot listen on {interface}:{self._requested_port}: "
                               f"{e.socketError}") from None
        self.port = self._listening.getHost().port
        super().startService()
        log.info("streaming server listening on {url}", url=self.base_url)

    def stopService(self) -> Deferred:
        super().stopService()
        self.server.abort_all()
        if self._listening is None:
            return succeed(None)
        listening, self._listening = self._listening, None
        return maybeDeferred(listening.stopListening)


def _now(d: Deferred) -> Any:
    """The result of a Deferred that has already fired (the TCP/SSL
    endpoints listen synchronously), so a listening error fails
    ``startService`` itself."""
    results: list = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("the endpoint did not listen synchronously")
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
