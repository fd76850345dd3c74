"""The registry client's HTTP transport: one exchange at a time.

Sends a request over the connection pool, choosing HTTPS or plain HTTP for
insecure registries (and remembering per host which one answered), reads
bodies with a size limit and an idle timeout, and turns transport failures
into the domain errors of :mod:`rktlet.errors` -- wrapped in :class:`Retry`
when another attempt may help.  It knows nothing of authentication or of
what is fetched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from rktlet import logs
from rktlet.errors import DeadlineExceeded, RktletError, RuntimeFailure, Unavailable
from rktlet.image.registry.tls import TLSPolicy

log = logs.logger("rktlet.image.registry")

#: Longest registry error text / token answer read; the rest is dropped.
MAX_SMALL_BODY = 64 * 1024
#: Longest wait for a TLS handshake with an insecure registry: a plain-HTTP
#: server that silently waits for a request line must not stall the HTTPS
#: probe until the idle timeout.
_MAX_INSECURE_HANDSHAKE = 10.0
#: Longest ``Retry-After`` honoured on a 429/503; beyond it we use our backoff.
_MAX_RETRY_AFTER = 30.0


# -- internal errors ----------------------------------------------------------------


class Retry(Exception):
    """A transient failure of one attempt; :attr:`error` is what the caller
    sees when no attempt is left.  Never escapes this module."""

    def __init__(self, error: RktletError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class LocalFailure(RuntimeFailure):
    """Writing the downloaded content failed here (disk full, …): another
    source would not help, so mirrors do not fall through on it."""


def describe(exc: BaseException | Failure) -> str:
    """A readable reason for a transport failure, unwrapping Twisted's lists
    of failures (``ResponseNeverReceived`` and friends)."""
    if isinstance(exc, Failure):
        exc = exc.value
    reasons = getattr(exc, "reasons", None)
    if isinstance(exc, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)) and reasons:
        return "; ".join(describe(r) for r in reasons)
    if isinstance(exc, SSL.Error):
        parts = []
        for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
            if isinstance(item, tuple) and item:
                parts.append(str(item[-1]))
        return "TLS error: " + (", ".join(p for p in parts if p) or str(exc))
    text = str(exc).strip()
    return text or type(exc).__name__


def _is_tls_failure(exc: BaseException | Failure) -> bool:
    if isinstance(exc, Failure):
        exc = exc.value
    if isinstance(exc, SSL.Error):
        return True
    return any(_is_tls_failure(r) for r in getattr(exc, "reasons", None) or ())

# -- reading bodies ---------------------------------------------------------------------


class _BodyReader(Protocol):
    """Receives one response body: hands each chunk to *sink*, enforces a
    size *limit* and an idle timeout, and fires :attr:`done` with the byte
    count.  Cancelling :attr:`done` drops the connection."""

    def __init__(
        self,
        reactor: Any,
        idle_timeout: float,
        url: str,
        sink: Callable[[bytes], None],
        limit: int | None = None,
        on_limit: Callable[[int], RktletError] | None = None,
    ) -> None:
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._url = url
        self._sink = sink
        self._limit = limit
        # None: stop reading quietly at the limit (error bodies); else the error.
        self._on_limit = on_limit
        self._size = 0
        self._timer: IDelayedCall | None = None
        self._finished = False
        self.done: Deferred[int] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._idle_timeout, self._idle)

    def pause(self) -> None:
        """Stop reading for now (what the data goes to is behind); the idle
        timeout does not run meanwhile."""
        if self._finished or self.transport is None:
            return
        self._stop_timer()
        self.transport.pauseProducing()

    def resume(self) -> None:
        """Read again after :meth:`pause`."""
        if self._finished or self.transport is None:
            return
        self._timer = self._reactor.callLater(self._idle_timeout, self._idle)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)
        if self._limit is not None and self._size + len(data) > self._limit:
            if self._on_limit is not None:
                self._fail(self._on_limit(self._size + len(data)))
                return
            data = data[: self._limit - self._size]
            self._deliver(data)
            self._finish_early()
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        self._size += len(data)
        try:
            self._sink(data)
        except RktletError as exc:
            self._fail(exc)
        except Exception as exc:  # the sink is ours; anything else is a local failure
            self._fail(LocalFailure(f"cannot store data from {self._url}: {exc}"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._stop_timer()
        if self._finished:
            return
        self._finished = True
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: no length was announced; the digest check decides.
            self.done.callback(self._size)
        else:
            self.done.errback(
                Retry(Unavailable(f"connection to {self._url} lost after {self._size} bytes: {describe(reason)}"))
            )

    def _idle(self) -> None:
        self._timer = None
        self._fail(
            Retry(
                DeadlineExceeded(
                    f"no data from {self._url} for {self._idle_timeout:g} s (after {self._size} bytes)"
                )
            )
        )

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _drop_connection(self) -> None:
        # The response's transport is a producer proxy; stopping it closes the
        # connection, which is then never returned to the pool.
        if self.transport is not None:
            self.transport.stopProducing()

    def _finish_early(self) -> None:
        self._finished = True
        self._stop_timer()
        self._drop_connection()
        self.done.callback(self._size)

    def _fail(self, exc: BaseException) -> None:
        if self._finished:
            return
        self._finished = True
        self._stop_timer()
        self._drop_connection()
        self.done.errback(exc)

    def _cancel(self, _: Deferred[int]) -> None:
        # Deferred errbacks with CancelledError itself once we return.
        self._finished = True
        self._stop_timer()
        self._drop_connection()


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    """A cancellable pause on *reactor*'s clock."""
    call: list[IDelayedCall] = []
    d: Deferred[None] = Deferred(lambda _: call[0].cancel() if call[0].active() else None)
    call.append(reactor.callLater(seconds, d.callback, None))
    return d


# -- reading answers --------------------------------------------------------------------


def registry_words(body: bytes, status: int, phrase: str) -> tuple[set[str], str]:
    """The registry's own error codes and text from an error *body*.

    Understands the distribution ``{"errors": [{code, message, detail}]}``
    form, OAuth2 ``{"error", "error_description"}``, ``{"details"}`` and
    plain text; falls back to the HTTP status line.
    """
    codes: set[str] = set()
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    parts: list[str] = []
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list):
            for item in errors:
                if not isinstance(item, dict):
                    continue
                code = str(item.get("code") or "").strip()
                message = str(item.get("message") or "").strip()
                if code:
                    codes.add(code.upper())
                text = " ".join(x for x in (code, message) if x)
                if text:
                    parts.append(text)
        for key in ("error", "error_description", "details", "message"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                parts.append(value.strip())
    if not parts:
        text = body.decode("utf-8", "replace").strip()
        if text and doc is None:
            # Someone else's words in our errors and logs: printable, short.
            printable = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
            parts.append(" ".join(printable.split())[:200])
    if not parts:
        parts.append(f"HTTP {status} {phrase}".strip())
    return codes, "; ".join(parts)


def retry_after(response: IResponse) -> float | None:
    value = (response.headers.getRawHeaders(b"retry-after") or [b""])[0]
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= _MAX_RETRY_AFTER else None


def header(response: IResponse, name: str) -> str:
    raw = response.headers.getRawHeaders(name.encode("ascii")) or [b""]
    value = raw[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _also(error: RktletError, https_reason: RktletError) -> RktletError:
    """*error* of the plain-HTTP attempt, also naming why HTTPS failed."""
    return type(error)(f"{error} (and over HTTPS: {https_reason})")

def phrase(response: IResponse) -> str:
    phrase = response.phrase
    return phrase.decode("latin-1") if isinstance(phrase, bytes) else str(phrase or "")



# -- exchanges ----------------------------------------------------------------------------


class Transport:
    """Single HTTP exchanges with registries, over a persistent connection pool.

    :param reactor: the reactor; its ``callLater`` runs the timeouts.
    :param is_insecure: whether a ``host[:port]`` may be reached without TLS
        verification / over plain HTTP.
    :param agent: a Twisted ``IAgent`` to use instead of the default one (an
        ``Agent`` over a persistent pool, with :class:`~.tls.TLSPolicy`).
    :param connect_timeout: seconds to establish a connection.
    :param idle_timeout: seconds without any byte (awaiting the response or
        within a body) before an exchange fails.
    """

    def __init__(
        self, reactor: Any, is_insecure: Callable[[str], bool], agent: Any, connect_timeout: float, idle_timeout: float
    ) -> None:
        self._reactor = reactor
        self._is_insecure = is_insecure
        self._idle_timeout = idle_timeout
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 8
            self._pool.cachedConnectionTimeout = 120
            policy = TLSPolicy(is_insecure, reactor, min(connect_timeout, _MAX_INSECURE_HANDSHAKE))
            agent = Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout, pool=self._pool)
        self._http = HTTPClient(agent)
        # netloc of an insecure registry -> "https" or "http", whichever answered.
        self._schemes: dict[str, str] = {}

    def close(self) -> Deferred[None]:
        """Close the pooled idle connections (the default agent's only)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    def plain_http_forbidden(self, url: str) -> bool:
        """Whether secrets must not go to *url*: plain HTTP to a host that is
        not configured insecure."""
        parts = urlsplit(url)
        return parts.scheme == "http" and not self._is_insecure(parts.netloc)

    def effective_url(self, url: str) -> str:
        """*url* with the scheme an insecure host was found to speak."""
        parts = urlsplit(url)
        if parts.scheme == "https" and self._schemes.get(parts.netloc) == "http":
            return urlunsplit(("http",) + tuple(parts[1:]))
        return url

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[IResponse, str]:
        """One exchange, choosing the scheme for insecure registries.

        HTTPS URLs to an insecure host are tried over HTTPS (unverified) and
        then plain HTTP; whichever answers is remembered for the host, so the
        TLS attempt is paid once.
        """
        parts = urlsplit(url)
        if parts.scheme == "https" and self._is_insecure(parts.netloc):
            plain = urlunsplit(("http",) + tuple(parts[1:]))
            known = self._schemes.get(parts.netloc)
            if known == "http":
                return await self._send_once(method, plain, headers, body), plain
            if known is None:
                try:
                    response = await self._send_once(method, url, headers, body)
                except (Retry, Unavailable, DeadlineExceeded) as exc:
                    reason = exc.error if isinstance(exc, Retry) else exc
                    log.info(
                        "HTTPS to insecure registry {host} failed ({reason}); trying plain HTTP",
                        host=parts.netloc,
                        reason=str(reason),
                    )
                    try:
                        response = await self._send_once(method, plain, headers, body)
                    except Retry as again:
                        raise Retry(_also(again.error, reason), again.retry_after) from None
                    except (Unavailable, DeadlineExceeded) as again:
                        raise _also(again, reason) from None
                    self._schemes[parts.netloc] = "http"
                    return response, plain
                self._schemes[parts.netloc] = "https"
                return response, url
        return await self._send_once(method, url, headers, body), url

    async def _send_once(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> IResponse:
        d = self._http.request(method, url, headers=headers, data=body, allow_redirects=False, unbuffered=True)
        d.addTimeout(self._idle_timeout, self._reactor)
        try:
            return await d
        except CancelledError:
            raise
        except DeferredTimeout:
            raise Retry(DeadlineExceeded(f"no answer from {url} within {self._idle_timeout:g} s")) from None
        except (net_error.ConnectError, ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed,
                net_error.ConnectionLost, net_error.ConnectionDone) as exc:
            error = Unavailable(f"cannot reach {url}: {describe(exc)}")
            if _is_tls_failure(exc):
                # A certificate or protocol mismatch will not go away by retrying.
                raise error from None
            raise Retry(error) from None
        except Exception as exc:
            raise Unavailable(f"request to {url} failed: {describe(exc)}") from None

    async def read(
        self,
        response: IResponse,
        url: str,
        sink: Callable[[bytes], None],
        limit: int | None = None,
        on_limit: Callable[[int], RktletError] | None = None,
        throttle: Callable[[Callable[[], None], Callable[[], None]], None] | None = None,
    ) -> int:
        """Read *response*'s body into *sink*, at most *limit* bytes (beyond:
        the error *on_limit* makes, or the rest dropped); *throttle* is given
        the functions that pause and resume the reading.  Returns the byte count."""
        reader = _BodyReader(self._reactor, self._idle_timeout, url, sink, limit, on_limit)
        if throttle is not None:
            throttle(reader.pause, reader.resume)
        response.deliverBody(reader)
        return await reader.done

    async def discard(self, response: IResponse, url: str) -> bytes:
        """Read a small body (error text, redirect page, token); keeps at most
        :data:`MAX_SMALL_BODY` bytes.  Reading it lets the connection be reused."""
        chunks: list[bytes] = []
        await self.read(response, url, chunks.append, limit=MAX_SMALL_BODY)
        return b"".join(chunks)

