"""The ``/metrics`` endpoint: Prometheus' text format over HTTP, or HTTPS
with a certificate and key, on a listener of its own (never the streaming
server's).

The exposition is prometheus_client's WSGI application (content
negotiation, gzip, ``name[]`` filters) under twisted.web, run in a small
thread pool of its own: collecting reads snapshots, ``/proc`` and the CNI
cache directory, never the reactor's state, and a scrape never waits
behind the daemon's blocking file-system work. (That is what
``prometheus_client.twisted.MetricsResource`` does too, but on the global
reactor and its shared thread pool; here the reactor is injected.) At most
:data:`MAX_SCRAPES` scrapes are served at once; more are answered 503.
Requests carry no body and their heads are bounded, as on the streaming
server (:mod:`rktlet.stream.httpchannel`).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import make_wsgi_app
from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.wsgi import WSGIResource

from rktlet import logs
from rktlet.config import split_address
from rktlet.errors import InvalidArgument, StartupError
from rktlet.stream.httpchannel import StreamSite, tls_options

log = logs.logger("rktlet.metrics")

PATH = b"metrics"
#: Scrapes served at once; more wait for none of them (503).
MAX_SCRAPES = 4
#: Threads collecting (a scrape takes one while it collects).
THREADS = 2
#: Seconds a connection may stay silent (between requests, or sending one).
HTTP_TIMEOUT = 60.0


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` → (host, port).

    :raises InvalidArgument: naming the address.
    """
    try:
        return split_address(address)
    except ValueError:
        raise InvalidArgument(f"metrics address {address!r} is not HOST:PORT") from None


class _Scrapes(Resource):
    """The exposition, GET and HEAD only, :data:`MAX_SCRAPES` at a time."""

    isLeaf = True

    def __init__(self, exposition: Resource, limit: int = MAX_SCRAPES) -> None:
        super().__init__()
        self._exposition = exposition
        self._limit = limit
        self._busy = 0

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return b"405 method not allowed\n"
        if self._busy >= self._limit:
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"1")
            return f"{self._busy} scrapes in progress already; try again\n".encode()
        self._busy += 1
        request.notifyFinish().addBoth(self._done)
        return self._exposition.render(request)

    def _done(self, _: Any) -> None:
        self._busy -= 1


class _Site(StreamSite):
    """The endpoint's site: no access log (a scrape every few seconds is not news)."""

    def log(self, request: Request) -> None:
        pass


class MetricsService(Service):
    """Serves *registry* at ``/metrics`` on *address* (TLS when *tls_cert*
    and *tls_key*, PEM file paths, are given).

    :param reactor: the reactor (listening, the thread handoff).
    :param address: ``HOST:PORT``; port 0 picks a free port (see :attr:`port`).
    :param registry: the metric families served.
    :param probes: started and stopped with the service (the reactor-lag
        probe: ``start()``/``stop()``).
    :raises InvalidArgument: a malformed address, or only one of the TLS files.
    """

    name = "metrics"

    def __init__(
        self,
        reactor: Any,
        address: str,
        registry: CollectorRegistry,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        probes: tuple[Any, ...] = (),
    ) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise InvalidArgument("TLS for the metrics endpoint needs both a certificate and a key "
                                  "(metrics-tls-cert, metrics-tls-key)")
        self._reactor = reactor
        self.host, self._requested_port = parse_address(address)
        self._registry = registry
        self._tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self._probes = probes
        self._pool: ThreadPool | None = None
        self._listening: Any = None
        self.port: int | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls else "http"

    def _site(self, pool: ThreadPool) -> StreamSite:
        root = Resource()
        root.putChild(PATH, _Scrapes(WSGIResource(self._reactor, pool, make_wsgi_app(self._registry))))
        return _Site(root, timeout=HTTP_TIMEOUT, reactor=self._reactor)

    def startService(self) -> None:
        pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="metrics")
        site = self._site(pool)
        interface = self.host or "0.0.0.0"
        try:
            if self._tls:
                self._listening = self._reactor.listenSSL(self._requested_port, site, tls_options(*self._tls, "metrics endpoint"),
                                                          interface=interface)
            else:
                self._listening = self._reactor.listenTCP(self._requested_port, site, interface=interface)
        except CannotListenError as e:
            raise StartupError(f"metrics endpoint cannot listen on {interface}:{self._requested_port}: "
                               f"{e.socketError}") from None
        pool.start()
        self._pool = pool
        self.port = self._listening.getHost().port
        for probe in self._probes:
            probe.start()
        super().startService()
        log.info("metrics served on {scheme}://{host}:{port}/metrics", scheme=self.scheme, host=interface,
                 port=self.port)

    def stopService(self) -> Any:
        super().stopService()
        for probe in self._probes:
            probe.stop()
        listening, self._listening = self._listening, None
        pool, self._pool = self._pool, None
        d = listening.stopListening() if listening is not None else None
        if pool is not None:
            # Not joined here: a scrape still writing waits for the reactor
            # thread (WSGI's writes cross over to it), which would wait for it.
            threading.Thread(target=pool.stop, name="metrics-stop", daemon=True).start()
        return d
