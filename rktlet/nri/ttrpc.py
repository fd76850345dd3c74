"""One NRI plugin connection as a Twisted protocol: the multiplexer, a ttrpc
client for the plugin's service and a ttrpc server for the runtime's.

The protocol knows the wire, not NRI's rules: what a registration means, when
to configure and synchronize, and which errors close a plugin are decided by
:mod:`rktlet.nri.runtime` through the callbacks given here.
"""

from __future__ import annotations

from typing import Any, Callable

from google.protobuf.message import DecodeError, Message
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from rktlet import logs
from rktlet.nri import wire
from rktlet.nri.api import nri_pb2, ttrpc_pb2

log = logs.logger("rktlet.nri.ttrpc")

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"

# gRPC status codes ttrpc carries (google.golang.org/grpc/codes).
OK = 0
INVALID_ARGUMENT = 3
UNIMPLEMENTED = 12

# Calls to a plugin awaiting an answer, at most (a plugin that stops
# answering is closed by its timeouts long before).
MAX_PENDING_CALLS = 1024


class PluginCallError(Exception):
    """A call to the plugin failed."""


class PluginError(PluginCallError):
    """The plugin answered with an error status (its handler failed)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class PluginTimeout(PluginCallError):
    """The plugin did not answer in time."""


class PluginClosed(PluginCallError):
    """The connection to the plugin is gone."""


# A handler of the runtime service: request bytes → response message, or
# raises PluginError(code, message) to answer with that status.
Handler = Callable[["PluginConnection", bytes], Message]


class PluginConnection(Protocol):
    """The runtime's end of one plugin connection.

    :param reactor: for call timeouts.
    :param handlers: method name of the Runtime service → :data:`Handler`.
    :param on_lost: called once with this connection when it closes.
    """

    def __init__(self, reactor: Any, handlers: dict[str, Handler],
                 on_lost: Callable[["PluginConnection"], None]) -> None:
        self._reactor = reactor
        self._handlers = handlers
        self._on_lost = on_lost
        self._mux = wire.MuxDecoder()
        self._streams = {wire.PLUGIN_SERVICE_CONN: wire.TtrpcDecoder(), wire.RUNTIME_SERVICE_CONN: wire.TtrpcDecoder()}
        self._next_stream = 1  # client-initiated ttrpc streams are odd
        self._last_served = 0
        self._pending: dict[int, tuple[Deferred, Any, type]] = {}
        self.closed = False
        self.peer = "plugin"

    # -- transport events -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            for conn_id, payload in self._mux.feed(data):
                decoder = self._streams.get(conn_id)
                if decoder is None:
                    continue  # no such logical connection: dropped, as upstream does
                for message in decoder.feed(payload):
                    if conn_id == wire.PLUGIN_SERVICE_CONN:
                        self._response(message)
                    else:
                        self._request(message)
        except wire.FramingError as e:
            log.error("NRI {peer}: {error}; closing the connection", peer=self.peer, error=str(e))
            self.close()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        pending, self._pending = self._pending, {}
        for d, timer, _ in pending.values():
            if timer.active():
                timer.cancel()
            d.errback(PluginClosed(f"connection to NRI {self.peer} closed"))
        self._on_lost(self)

    def close(self) -> None:
        """Close the connection (pending calls fail with :class:`PluginClosed`)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def _send(self, conn_id: int, stream_id: int, message_type: int, flags: int, payload: bytes) -> None:
        self.transport.write(wire.mux_frames(conn_id, wire.ttrpc_message(stream_id, message_type, flags, payload)))

    # -- client: calls to the plugin's service ------------------------------------------

    def call(self, method: str, request: Message, response_type: type, timeout: float) -> Deferred:
        """Call *method* of the plugin's service; fires with a *response_type*
        message, or fails with a :class:`PluginCallError`."""
        if self.closed or self.transport is None:
            return _failed(PluginClosed(f"connection to NRI {self.peer} closed"))
        if len(self._pending) >= MAX_PENDING_CALLS:
            return _failed(PluginTimeout(f"NRI {self.peer} has {len(self._pending)} calls unanswered"))
        envelope = ttrpc_pb2.Request(service=PLUGIN_SERVICE, method=method, payload=request.SerializeToString(),
                                     timeout_nano=int(timeout * 1e9))
        payload = envelope.SerializeToString()
        try:
            stream_id = self._next_stream
            self._send(wire.PLUGIN_SERVICE_CONN, stream_id, wire.MESSAGE_REQUEST, wire.FLAG_REMOTE_CLOSED, payload)
        except wire.FramingError as e:
            return _failed(PluginError(8, f"{method} request too large for NRI: {e}"))  # 8: RESOURCE_EXHAUSTED
        self._next_stream += 2
        d: Deferred = Deferred()

        def expire() -> None:
            entry = self._pending.pop(stream_id, None)
            if entry is not None:
                entry[0].errback(PluginTimeout(f"NRI {self.peer} did not answer {method} within {timeout:g}s"))

        self._pending[stream_id] = (d, self._reactor.callLater(timeout, expire), response_type)
        return d

    def _response(self, message: wire.Message) -> None:
        if message.type != wire.MESSAGE_RESPONSE:
            return  # rktlet's calls are unary: no data messages expected
        entry = self._pending.pop(message.stream_id, None)
        if entry is None:
            return  # answered after its timeout
        d, timer, response_type = entry
        timer.cancel()
        try:
            envelope = ttrpc_pb2.Response.FromString(message.payload)
            if envelope.status.code != OK:
                raise PluginError(envelope.status.code, envelope.status.message)
            result = response_type.FromString(envelope.payload)
        except DecodeError as e:
            d.errback(PluginError(INVALID_ARGUMENT, f"undecodable answer from NRI {self.peer}: {e}"))
            return
        except PluginError as e:
            d.errback(e)
            return
        d.callback(result)

    # -- server: the runtime's service ------------------------------------------------------

    def _request(self, message: wire.Message) -> None:
        if message.type != wire.MESSAGE_REQUEST:
            return
        if message.stream_id % 2 != 1 or message.stream_id <= self._last_served:
            self._answer(message.stream_id, INVALID_ARGUMENT, "ttrpc stream ids must be odd and increasing")
            return
        self._last_served = message.stream_id
        try:
            request = ttrpc_pb2.Request.FromString(message.payload)
        except DecodeError as e:
            self._answer(message.stream_id, INVALID_ARGUMENT, f"undecodable ttrpc request: {e}")
            return
        handler = self._handlers.get(request.method) if request.service == RUNTIME_SERVICE else None
        if handler is None:
            self._answer(message.stream_id, UNIMPLEMENTED, f"rktlet does not serve {request.service}/{request.method}")
            return
        try:
            response = handler(self, request.payload)
        except PluginError as e:
            self._answer(message.stream_id, e.code, str(e))
            return
        except DecodeError as e:
            self._answer(message.stream_id, INVALID_ARGUMENT, f"undecodable {request.method} request: {e}")
            return
        self._answer(message.stream_id, OK, "", response.SerializeToString())

    def _answer(self, stream_id: int, code: int, text: str, payload: bytes = b"") -> None:
        envelope = ttrpc_pb2.Response(payload=payload)
        if code != OK:
            envelope.status.code, envelope.status.message = code, text
        if not self.closed:
            self._send(wire.RUNTIME_SERVICE_CONN, stream_id, wire.MESSAGE_RESPONSE, 0, envelope.SerializeToString())


def _failed(error: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(error)
    return d


def empty() -> nri_pb2.Empty:
    """The ``Empty`` answer."""
    return nri_pb2.Empty()
