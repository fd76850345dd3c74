"""The HTTP side of the streaming server, hardened: what a client may send
before its request is looked at.

Every request the server answers is a body-less upgrade (exec, attach and
port-forward carry nothing in the HTTP request; the Go clients send
``Content-Length: 0``), so nothing before the token check may cost the
server more than one bounded request head:

* a request that announces a body (``Content-Length`` above 0, or any
  ``Transfer-Encoding`` but ``identity``) is answered 413 and the connection
  closed as soon as its head is read — twisted.web would otherwise read the
  whole body (into memory, or a temporary file when large or chunked) before
  it even renders the request;
* the request head is bounded: at most :data:`MAX_HEADERS` header lines and
  :data:`MAX_HEAD_BYTES` bytes for the request line and headers together
  (400 past either);
* the whole request head must arrive within *head_timeout* seconds of the
  connection (or of the previous response on a kept-alive connection): a
  client that sends nothing, or dribbles a partial head byte by byte, is
  disconnected. The site's idle timeout still closes a kept-alive
  connection that sends nothing after a response.

Once a request is upgraded, :func:`rktlet.stream.upgrade.take_over` hands the
connection to the session protocol, which has its own limits.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.server import Site

from rktlet.errors import StartupError

log = Logger()

MAX_HEADERS = 100
MAX_HEAD_BYTES = 16 * 1024
DEFAULT_HEAD_TIMEOUT = 30.0

_BODY_REFUSED = b"streaming requests carry no body\n"


class StreamChannel(HTTPChannel):
    """An :class:`~twisted.web.http.HTTPChannel` that refuses request bodies
    before reading them, bounds the request head and gives the client
    :attr:`head_timeout` seconds to send it."""

    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD_BYTES
    # One line (the request line, or one header) can be no longer than the
    # whole head.
    MAX_LENGTH = MAX_HEAD_BYTES
    head_timeout: float | None = DEFAULT_HEAD_TIMEOUT

    _head_call: IDelayedCall | None = None
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_head_deadline()

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        # self.length: the Content-Length, None for a chunked body, 0 without.
        if self.length != 0:
            self._refuse_body()
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().rawDataReceived(data)

    def requestDone(self, request) -> None:
        # Armed first: with a kept-alive connection the next request may be
        # parsed (from what was buffered) before requestDone returns.
        if self.persistent and not self._refused:
            self._arm_head_deadline()
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._cancel_head_deadline()
        super().connectionLost(reason)

    # -- internals --------------------------------------------------------------

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:  # noqa: BLE001 - only for log messages
            return "?"

    def _refuse_body(self) -> None:
        self._refused = True
        self.persistent = False
        what = "a chunked body" if self.length is None else f"a body of {self.length} bytes"
        log.info("streaming request from {peer} with {what} refused", peer=self._peer(), what=what)
        self.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(_BODY_REFUSED) + _BODY_REFUSED
        )
        # Reading stops here; the transport closes once the answer is out
        # (the site's abort timeout covers a client that does not read it).
        self.setTimeout(None)
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        if self.head_timeout:
            self._head_call = self.callLater(self.head_timeout, self._head_expired)

    def _cancel_head_deadline(self) -> None:
        if self._head_call is not None and self._head_call.active():
            self._head_call.cancel()
        self._head_call = None

    def _head_expired(self) -> None:
        self._head_call = None
        log.info(
            "streaming connection from {peer} sent no complete request in {timeout}s, closing",
            peer=self._peer(),
            timeout=self.head_timeout,
        )
        self.setTimeout(None)  # the idle timeout has nothing left to do
        self.timeoutConnection()


class StreamSite(Site):
    """A :class:`~twisted.web.server.Site` whose connections are
    :class:`StreamChannel` s.

    :param head_timeout: seconds a client has to send a complete request
        head (None: no limit).
    """

    def __init__(self, resource, *args, head_timeout: float | None = DEFAULT_HEAD_TIMEOUT, **kwargs) -> None:
        super().__init__(resource, *args, **kwargs)
        self.head_timeout = head_timeout
        self.noisy = False
        self.displayTracebacks = False

    def protocol(self) -> _GenericHTTPChannelProtocol:  # type: ignore[override]
        channel = StreamChannel()
        channel.head_timeout = self.head_timeout
        return _GenericHTTPChannelProtocol(channel)


def tls_options(cert: str, key: str, listener: str) -> Any:
    """The TLS options of an HTTP listener (the streaming server, the
    metrics endpoint) from its PEM certificate and key files.

    :raises StartupError: a file that cannot be read, or a pair that does not
        load, naming *listener* and the file.
    """
    pem = []
    for what, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb") as f:
                pem.append(f.read())
        except OSError as e:
            raise StartupError(f"cannot read the {listener}'s TLS {what} {path}: {e.strerror}") from None
    try:
        return ssl.PrivateCertificate.loadPEM(pem[0] + b"\n" + pem[1]).options()
    except Exception as e:  # noqa: BLE001 - pyOpenSSL's errors have no common base worth naming
        raise StartupError(f"the {listener}'s TLS certificate and key are unusable: {e}") from None
