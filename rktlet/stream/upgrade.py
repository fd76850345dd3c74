"""HTTP upgrades on twisted.web: protocol negotiation and taking the
connection over from the HTTP channel.

twisted.web has no API for "this request switches protocols". Answering a
101 through ``Request.write`` would add ``Transfer-Encoding: chunked`` (any
HTTP/1.1 response without a length gets it), so the status line is written
to the transport directly, and the connection is then detached from its
:class:`~twisted.web.http.HTTPChannel` (pitfall 11): its timeout is stopped,
it stops being the transport's producer, and every byte it receives from now
on — including what it already buffered behind the request — goes to the
new protocol.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocol
from twisted.web.server import Request

SPDY_UPGRADE = "SPDY/3.1"


def header_values(request: Request, name: str) -> list[str]:
    """Every value of a header, comma lists split and trimmed, in order."""
    values = []
    for raw in request.requestHeaders.getRawHeaders(name, []):
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        values.extend(v.strip() for v in text.split(","))
    return [v for v in values if v]


def has_token(request: Request, name: str, token: str) -> bool:
    """Whether a header lists *token* (case-insensitive)."""
    return token.lower() in (v.lower() for v in header_values(request, name))


def is_websocket(request: Request) -> bool:
    return has_token(request, "Upgrade", "websocket")


def negotiate(offered: list[str], supported: list[str]) -> str | None:
    """The first protocol the client offered that the server supports (the
    client's order wins, as in ``httpstream.Handshake``)."""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def switching_protocols(headers: list[tuple[str, str]]) -> bytes:
    """A complete 101 response head."""
    lines = ["HTTP/1.1 101 Switching Protocols"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def replay_request(request: Request) -> bytes:
    """The request head again, for a protocol that parses it itself
    (autobahn answers the WebSocket handshake from these bytes)."""
    head = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
    for name, values in request.requestHeaders.getAllRawHeaders():
        for value in values:
            head += name + b": " + value + b"\r\n"
    return head + b"\r\n"


def take_over(request: Request, protocol: IProtocol, first: bytes = b"") -> None:
    """Give *request*'s connection to *protocol*.

    :param first: bytes to deliver to the protocol before anything the
        client sent after the request.
    """
    channel = request.channel
    transport = channel.transport
    channel.setTimeout(None)
    # The channel registered itself as the transport's producer; the new
    # protocol registers its own in makeConnection.
    transport.unregisterProducer()
    buffered = b"".join(channel._dataBuffer)
    channel._dataBuffer = []
    # The transport keeps calling the channel (possibly through the
    # _GenericHTTPChannelProtocol and a TLS wrapper): reroute what it calls.
    # rawDataReceived gets what LineReceiver still holds behind the request
    # head once this render returns.
    channel.dataReceived = protocol.dataReceived
    channel.rawDataReceived = protocol.dataReceived
    channel.lineReceived = lambda line: protocol.dataReceived(line + b"\r\n")
    channel.connectionLost = protocol.connectionLost
    protocol.makeConnection(transport)
    # The channel pauses reading while a request is handled.
    transport.resumeProducing()
    if first:
        protocol.dataReceived(first)
    if buffered:
        protocol.dataReceived(buffered)
