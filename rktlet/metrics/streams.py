"""Streaming sessions (exec, attach, port-forward) and the bytes they move,
measured around the streaming server's backend (:class:`MeteredBackend`
wraps :class:`rktlet.pod.streaming.StreamingBackend` at wiring time)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

EXEC = "exec"
ATTACH = "attach"
PORT_FORWARD = "port-forward"
KINDS = (EXEC, ATTACH, PORT_FORWARD)
#: Towards the container (stdin, bytes to the pod's port) and back.
IN = "in"
OUT = "out"


class StreamMetrics:
    """``rktlet_streaming_sessions_open{kind}``,
    ``rktlet_streaming_sessions_total{kind}`` and
    ``rktlet_streaming_bytes_total{kind,direction}`` (reactor thread).

    A session is an exec or attach, or one forwarded connection of a
    port-forward. Bytes are the payload: stdin and output of exec and
    attach, the forwarded connection's data (not the SPDY/WebSocket framing).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._open = Gauge(
            "rktlet_streaming_sessions_open",
            "Streaming sessions open: exec and attach sessions, port-forwarded connections.",
            ["kind"], registry=registry,
        )
        self._total = Counter(
            "rktlet_streaming_sessions", "Streaming sessions started, by kind.", ["kind"], registry=registry
        )
        self._bytes = Counter(
            "rktlet_streaming_bytes",
            "Bytes moved by streaming sessions: direction in is towards the container, out is from it.",
            ["kind", "direction"], registry=registry,
        )
        self._counters = {(k, d): self._bytes.labels(k, d) for k in KINDS for d in (IN, OUT)}
        for kind in KINDS:
            self._open.labels(kind)
            self._total.labels(kind)

    def wrap(self, backend: Any) -> "MeteredBackend":
        """*backend* (:class:`~rktlet.stream.session.Backend`), its sessions measured."""
        return MeteredBackend(backend, self)

    def opened(self, kind: str) -> None:
        self._open.labels(kind).inc()
        self._total.labels(kind).inc()

    def closed(self, kind: str) -> None:
        self._open.labels(kind).dec()

    def moved(self, kind: str, direction: str, count: int) -> None:
        self._counters[(kind, direction)].inc(count)


class MeteredBackend:
    """A streaming backend whose sessions are counted; validation and
    everything else is the wrapped backend's."""

    def __init__(self, backend: Any, metrics: StreamMetrics) -> None:
        self._backend = backend
        self._metrics = metrics

    def exec(self, request: Any, terminal: Any) -> Any:
        """The backend's ``exec``, its session and bytes counted."""
        return self._command(EXEC, self._backend.exec, request, terminal)

    def attach(self, request: Any, terminal: Any) -> Any:
        """The backend's ``attach``, its session and bytes counted."""
        return self._command(ATTACH, self._backend.attach, request, terminal)

    def _command(self, kind: str, start: Any, request: Any, terminal: Any) -> Any:
        io = start(request, _CountingTerminal(terminal, self._metrics, kind))
        self._metrics.opened(kind)

        def ended(result: Any) -> Any:
            self._metrics.closed(kind)
            return result

        io.done.addBoth(ended)
        return _CountingIO(io, self._metrics, kind)

    def port_forward(self, sandbox_id: str, port: int, protocol: IProtocol) -> Deferred:
        """The backend's ``port_forward``: the connection counted while it
        is open, its bytes both ways."""
        return self._backend.port_forward(sandbox_id, port, _CountingProtocol(protocol, self._metrics))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class _CountingTerminal:
    """The session's terminal, counting the output handed to it."""

    def __init__(self, terminal: Any, metrics: StreamMetrics, kind: str) -> None:
        self._terminal = terminal
        self._metrics = metrics
        self._kind = kind

    def stdout(self, data: bytes) -> None:
        self._metrics.moved(self._kind, OUT, len(data))
        self._terminal.stdout(data)

    def stderr(self, data: bytes) -> None:
        self._metrics.moved(self._kind, OUT, len(data))
        self._terminal.stderr(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._terminal, name)


class _CountingIO:
    """The process side of a session, counting the stdin handed to it."""

    def __init__(self, io: Any, metrics: StreamMetrics, kind: str) -> None:
        self._io = io
        self._metrics = metrics
        self._kind = kind
        self.done = io.done

    def stdin(self, data: bytes) -> None:
        self._metrics.moved(self._kind, IN, len(data))
        self._io.stdin(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._io, name)


class _NoFactory:
    """ProtocolWrapper registers with a factory; nothing needs to know."""

    def registerProtocol(self, protocol: Any) -> None:
        pass

    def unregisterProtocol(self, protocol: Any) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _CountingProtocol(ProtocolWrapper):
    """Stands between a forwarded connection's protocol and its socket:
    counts the bytes each way and the connection while it is open. Half
    closes are passed on (the pod's end of a port-forward relies on them)."""

    def __init__(self, protocol: IProtocol, metrics: StreamMetrics) -> None:
        super().__init__(_NoFactory(), protocol)  # type: ignore[arg-type]
        self._metrics = metrics
        self._counted = False

    def makeConnection(self, transport: Any) -> None:
        self._metrics.opened(PORT_FORWARD)
        self._counted = True
        super().makeConnection(transport)

    def write(self, data: bytes) -> None:
        self._metrics.moved(PORT_FORWARD, IN, len(data))
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self._metrics.moved(PORT_FORWARD, IN, sum(len(d) for d in data))
        super().writeSequence(data)

    def dataReceived(self, data: bytes) -> None:
        self._metrics.moved(PORT_FORWARD, OUT, len(data))
        super().dataReceived(data)

    def readConnectionLost(self) -> None:
        half_closeable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if half_closeable is not None:
            half_closeable.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half_closeable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if half_closeable is not None:
            half_closeable.writeConnectionLost()

    def connectionLost(self, reason: Any) -> None:
        if self._counted:
            self._counted = False
            self._metrics.closed(PORT_FORWARD)
        super().connectionLost(reason)
