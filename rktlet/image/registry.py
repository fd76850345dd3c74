"""Registry HTTP API v2 client (the OCI distribution protocol), on treq.

Everything here runs on the reactor thread and returns Deferreds; no call
blocks.  One :class:`RegistryClient` keeps a persistent connection pool, the
bearer tokens it was given (until they expire), what each registry asked for
when it challenged us, and which scheme each insecure registry speaks.

What one fetch does, from the outside in:

1. **Sources**: the configured mirrors of the image's registry, in order, then
   the registry itself.  Any failure on a mirror falls through to the next
   source; the registry's own failure is the one reported.
2. **Retries**: connection errors, idle timeouts, 429 and 5xx answers are
   retried with exponential backoff (``retries`` attempts in all, on the
   upstream registry; a mirror gets one attempt, since falling through is its
   retry).  4xx answers are final.
3. **Authentication**: anonymous first, or with what an earlier challenge
   from the same registry taught us (a cached bearer token, basic auth).  On
   ``401`` the ``WWW-Authenticate`` challenge is answered (token from the
   realm, or basic auth) and the request is sent once more.
4. **Redirects**: followed up to :data:`MAX_REDIRECTS` hops, dropping the
   ``Authorization`` header once the host changes (blob storage).
5. **Transport**: HTTPS with certificate verification; for insecure
   registries HTTPS without verification first, then plain HTTP, remembering
   per host which one answered.

Only the Docker Registry token protocol and basic auth are spoken; the
registry's own error codes (``MANIFEST_UNKNOWN`` …) are carried into the
messages of the domain errors from :mod:`rktlet.errors`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, succeed
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from rktlet import logs
from rktlet.errors import (
    DeadlineExceeded,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RktletError,
    RuntimeFailure,
    Unavailable,
)
from rktlet.image.reference import Reference, is_digest, validate_digest

__all__ = ["Credentials", "Manifest", "RegistryClient", "MAX_MANIFEST_SIZE", "MAX_REDIRECTS"]

log = logs.logger("rktlet.image.registry")

#: Manifests and indexes larger than this are refused (containerd uses the same cap).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: Redirect hops followed for one request.
MAX_REDIRECTS = 5
#: Longest registry error text / token answer read; the rest is dropped.
_MAX_SMALL_BODY = 64 * 1024
#: Longest wait for a TLS handshake with an insecure registry: a plain-HTTP
#: server that silently waits for a request line must not stall the HTTPS
#: probe until the idle timeout.
_MAX_INSECURE_HANDSHAKE = 10.0
#: Lifetime of a token whose answer has no ``expires_in`` (token spec default).
_DEFAULT_TOKEN_LIFETIME = 60
#: Longest ``Retry-After`` honoured on a 429/503; beyond it we use our backoff.
_MAX_RETRY_AFTER = 30.0
#: Content types too generic to name a manifest type; the body's ``mediaType`` wins.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_AUTH_PARAM_RE = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
_AUTH_SCHEME_RE = re.compile(r"\s*,?\s*([A-Za-z][\w-]*)(?=\s|,|$)")

_T = TypeVar("_T")


# -- public data ------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Registry credentials, as the kubelet passes them in a CRI ``AuthConfig``.

    ``auth`` is ``base64("user:password")`` (the docker config form);
    ``identity_token`` is an OAuth2 refresh token traded at the token realm;
    ``registry_token`` is a bearer token sent to the registry as is.  The
    secret fields are left out of ``repr`` so that logging a value never
    leaks them.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @classmethod
    def from_cri(cls, auth_config: Any) -> "Credentials | None":
        """Credentials from a CRI ``AuthConfig`` (any object with fields of the
        same names); ``None`` when it is absent or every field is empty."""
        if auth_config is None:
            return None
        values = {
            name: str(getattr(auth_config, name, "") or "")
            for name in ("username", "password", "auth", "identity_token", "registry_token")
        }
        if not any(values.values()):
            return None
        return cls(**values)

    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` for basic auth, from the fields or from ``auth``.

        :raises InvalidArgument: when ``auth`` is not base64 of ``user:password``.
        """
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument("auth: not base64 of 'user:password'") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth: decoded value has no ':' between user and password")
            return user, password
        return None

    def describe(self) -> str:
        """Which kind of credentials these are, for messages (never a secret)."""
        if self.registry_token:
            return "a registry token"
        if self.identity_token:
            return "an identity token"
        if self.username:
            return f"the credentials of user {self.username!r}"
        return "the credentials given"


@dataclass(frozen=True)
class Manifest:
    """A manifest (or index) as fetched.

    :ivar media_type: from ``Content-Type`` (parameters stripped), else the
        body's ``mediaType``.
    :ivar body: the exact bytes served.
    :ivar digest: ``sha256:<hex>`` of ``body``; equal to the requested digest
        when fetched by digest.
    :ivar source: the URL it was fetched from (a mirror's or the registry's).
    """

    media_type: str
    body: bytes
    digest: str
    source: str


# -- internal errors ----------------------------------------------------------------


class _Retry(Exception):
    """A transient failure of one attempt; :attr:`error` is what the caller
    sees when no attempt is left.  Never escapes this module."""

    def __init__(self, error: RktletError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _LocalFailure(RuntimeFailure):
    """Writing the downloaded content failed here (disk full, …): another
    source would not help, so mirrors do not fall through on it."""


def _describe(exc: BaseException | Failure) -> str:
    """A readable reason for a transport failure, unwrapping Twisted's lists
    of failures (``ResponseNeverReceived`` and friends)."""
    if isinstance(exc, Failure):
        exc = exc.value
    reasons = getattr(exc, "reasons", None)
    if isinstance(exc, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)) and reasons:
        return "; ".join(_describe(r) for r in reasons)
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


# -- TLS for insecure registries ------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS without certificate checks, for registries the operator marked
    insecure (they may be reached over plain HTTP anyway, so this is no
    weaker).  The handshake has a deadline so that probing a plain-HTTP
    server that waits silently for a request line falls back to HTTP soon."""

    def __init__(self, context: SSL.Context, hostname: str, reactor: Any, handshake_timeout: float) -> None:
        self._context = context
        self._hostname = hostname
        self._reactor = reactor
        self._handshake_timeout = handshake_timeout

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Make the OpenSSL connection for *tlsProtocol* (Twisted calls this)."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        state: dict[str, Any] = {"done": False}

        def expire() -> None:
            transport = getattr(tlsProtocol, "transport", None)
            if not state["done"] and transport is not None:
                transport.abortConnection()

        timer = self._reactor.callLater(self._handshake_timeout, expire)
        state["timer"] = timer

        def info(conn: SSL.Connection, where: int, ret: int) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE and not state["done"]:
                state["done"] = True
                if timer.active():
                    timer.cancel()

        connection.set_info_callback(info)
        return connection


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """Verified TLS (system trust store, hostname check) unless the host is
    an insecure registry."""

    def __init__(self, is_insecure: Callable[[str], bool], reactor: Any, handshake_timeout: float) -> None:
        self._is_insecure = is_insecure
        self._reactor = reactor
        self._handshake_timeout = handshake_timeout
        self._verified = BrowserLikePolicyForHTTPS()
        self._unverified_context: SSL.Context | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The connection creator for ``hostname:port`` (Twisted's agent calls this)."""
        host = hostname.decode("ascii")
        shown = f"[{host}]" if ":" in host else host
        if self._is_insecure(f"{shown}:{port}") or self._is_insecure(shown):
            if self._unverified_context is None:
                self._unverified_context = CertificateOptions(verify=False).getContext()
            return _UnverifiedTLS(self._unverified_context, host, self._reactor, self._handshake_timeout)
        return self._verified.creatorForNetloc(hostname, port)


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
            self._fail(_LocalFailure(f"cannot store data from {self._url}: {exc}"))

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
                _Retry(Unavailable(f"connection to {self._url} lost after {self._size} bytes: {_describe(reason)}"))
            )

    def _idle(self) -> None:
        self._timer = None
        self._fail(
            _Retry(
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


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    """A cancellable pause on *reactor*'s clock."""
    call: list[IDelayedCall] = []
    d: Deferred[None] = Deferred(lambda _: call[0].cancel() if call[0].active() else None)
    call.append(reactor.callLater(seconds, d.callback, None))
    return d


# -- challenges, tokens, errors ---------------------------------------------------------


@dataclass(frozen=True)
class _Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` in lower case and its parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str:
        """The parameter *name* (case-insensitive), or ``""``."""
        for key, value in self.params:
            if key.lower() == name:
                return value
        return ""


def _parse_challenges(values: Sequence[str]) -> list[_Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235 auth-params)."""
    found: list[_Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            m = _AUTH_SCHEME_RE.match(value, pos)
            if m is None:
                break
            scheme = m.group(1).lower()
            pos = m.end()
            params: list[tuple[str, str]] = []
            while pos < len(value):
                p = _AUTH_PARAM_RE.match(value, pos)
                if p is None or p.end() == pos:
                    break
                raw = p.group(2)
                if raw.startswith('"'):
                    raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                params.append((p.group(1), raw))
                pos = p.end()
            found.append(_Challenge(scheme, tuple(params)))
    return found


def _registry_words(body: bytes, status: int, phrase: str) -> tuple[set[str], str]:
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


def _retry_after(response: IResponse) -> float | None:
    value = (response.headers.getRawHeaders(b"retry-after") or [b""])[0]
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= _MAX_RETRY_AFTER else None


def _header(response: IResponse, name: str) -> str:
    raw = response.headers.getRawHeaders(name.encode("ascii")) or [b""]
    value = raw[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class _Source:
    """Where one fetch is tried: a mirror's base URL or the registry itself."""

    base: str
    mirror: bool
    credentials: "Credentials | None"

    @property
    def netloc(self) -> str:
        return urlsplit(self.base).netloc


# -- the client -------------------------------------------------------------------------


class RegistryClient:
    """A registry HTTP API v2 client for pulling: manifests and blobs.

    :param reactor: the reactor; its ``seconds()`` is the clock for token
        expiry, its ``callLater`` runs timeouts and backoff.
    :param is_insecure: whether a ``host[:port]`` may be reached without TLS
        verification / over plain HTTP (``Config.is_insecure_registry``).
    :param mirrors: registry domain (``docker.io``) -> mirror base URLs
        (``http://127.0.0.1:5000``, ``https://mirror.example/prefix``), tried
        in order before the registry.
    :param agent: a Twisted ``IAgent`` to use instead of the default one (an
        ``Agent`` over a persistent pool, with the TLS policy above).
    :param connect_timeout: seconds to establish a connection.
    :param idle_timeout: seconds without any byte (awaiting the response or
        within a body) before an attempt fails.
    :param retries: attempts in all for a transient failure on the registry.
    :param backoff: first pause between attempts; it doubles each time.
    :param max_manifest_size: bytes a manifest or index may have.
    """

    def __init__(
        self,
        reactor: Any,
        is_insecure: Callable[[str], bool],
        mirrors: Mapping[str, Sequence[str]] = MappingProxyType({}),
        agent: Any = None,
        connect_timeout: float = 30,
        idle_timeout: float = 60,
        retries: int = 3,
        backoff: float = 0.5,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
    ) -> None:
        self._reactor = reactor
        self._max_manifest_size = max_manifest_size
        self._is_insecure = is_insecure
        self._mirrors = {domain: tuple(u.rstrip("/") for u in urls) for domain, urls in mirrors.items()}
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._retries = max(1, retries)
        self._backoff = backoff
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 8
            self._pool.cachedConnectionTimeout = 120
            policy = _TLSPolicy(is_insecure, reactor, min(connect_timeout, _MAX_INSECURE_HANDSHAKE))
            agent = Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout, pool=self._pool)
        self._http = HTTPClient(agent)
        # netloc of an insecure registry -> "https" or "http", whichever answered.
        self._schemes: dict[str, str] = {}
        # netloc -> the challenge it last answered with (to authenticate up front).
        self._challenges: dict[str, _Challenge] = {}
        # (realm, service, scope, credentials) -> token, and fetches under way.
        self._tokens: dict[tuple[str, str, str, Credentials | None], _Token] = {}
        self._token_waiters: dict[tuple[str, str, str, Credentials | None], list[Deferred[str]]] = {}

    def close(self) -> Deferred[None]:
        """Close the pooled idle connections (the default agent's only)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    # -- public API ------------------------------------------------------------------

    def get_manifest(
        self,
        ref: Reference,
        accept: Sequence[str],
        credentials: Credentials | None = None,
        reference: str | None = None,
    ) -> Deferred[Manifest]:
        """Fetch the manifest of *ref* (its digest, else its tag).

        :param accept: media types to offer in ``Accept``.
        :param reference: a tag or digest to fetch instead of ``ref.lookup``
            (a child manifest of an index).
        :returns: a Deferred firing with a :class:`Manifest`; it fails with
            :class:`NotFound`, :class:`PermissionDenied`, :class:`Unavailable`,
            :class:`DigestMismatch`, :class:`ResourceExhausted` (too big),
            :class:`DeadlineExceeded`, :class:`InvalidArgument` or
            :class:`RuntimeFailure`.
        """
        return Deferred.fromCoroutine(self._get_manifest(ref, tuple(accept), credentials, reference))

    def get_blob(
        self,
        ref: Reference,
        digest: str,
        dest: str,
        credentials: Credentials | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        expected_size: int | None = None,
    ) -> Deferred[int]:
        """Stream the blob *digest* of *ref*'s repository into the file *dest*.

        *dest* is created (truncated) here and verified against *digest* as
        it is written; on any failure, and when the Deferred is cancelled,
        *dest* is removed.  *progress* is called with ``(bytes_done, total)``
        as data arrives (``total`` from ``Content-Length`` or *expected_size*,
        else ``None``).

        :returns: a cancellable Deferred firing with the byte count.
        """
        return Deferred.fromCoroutine(self._get_blob(ref, digest, dest, credentials, progress, expected_size))

    # -- sources and retries -----------------------------------------------------------------

    def _sources(self, ref: Reference, credentials: Credentials | None) -> list[_Source]:
        # Credentials are for the image's registry; mirrors are asked anonymously
        # so that a pull secret never reaches a third party.
        out = [_Source(base, True, None) for base in self._mirrors.get(ref.domain, ())]
        out.append(_Source(f"https://{ref.api_host}", False, credentials))
        return out

    async def _from_sources(
        self, ref: Reference, credentials: Credentials | None, what: str, attempt: Callable[[_Source], Awaitable[_T]]
    ) -> _T:
        for source in self._sources(ref, credentials):
            if not source.mirror:
                return await self._retrying(lambda: attempt(source), self._retries, what)
            try:
                return await self._retrying(lambda: attempt(source), 1, what)
            except _LocalFailure:
                raise
            except RktletError as exc:
                log.info(
                    "mirror {mirror} failed for {what}: {error}; trying the next source",
                    mirror=source.base,
                    what=what,
                    error=str(exc),
                )
        raise AssertionError("unreachable: the registry itself is always the last source")

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]], attempts: int, what: str) -> _T:
        for number in range(1, attempts + 1):
            try:
                return await attempt()
            except _Retry as exc:
                if number >= attempts:
                    error = exc.error
                    if attempts > 1:
                        error = type(error)(f"{error} (gave up after {attempts} attempts)")
                    raise error from None
                delay = exc.retry_after if exc.retry_after is not None else self._backoff * 2 ** (number - 1)
                log.info(
                    "{what}: attempt {number} of {attempts} failed ({error}); retrying in {delay:g} s",
                    what=what,
                    number=number,
                    attempts=attempts,
                    error=str(exc.error),
                    delay=delay,
                )
                await _sleep(self._reactor, delay)
        raise AssertionError("unreachable")

    # -- manifests -----------------------------------------------------------------------

    async def _get_manifest(
        self, ref: Reference, accept: tuple[str, ...], credentials: Credentials | None, reference: str | None
    ) -> Manifest:
        lookup = reference or ref.lookup
        by_digest = is_digest(lookup)
        if by_digest:
            validate_digest(lookup)
        elif not _TAG_RE.match(lookup):
            raise InvalidArgument(f"invalid tag {lookup!r}")
        shown = f"{ref.name}@{lookup}" if by_digest else f"{ref.name}:{lookup}"
        if reference is None:
            shown = str(ref)
        what = f"image {shown}"

        async def attempt(source: _Source) -> Manifest:
            url = f"{source.base}/v2/{ref.path}/manifests/{lookup}"
            headers = {"Accept": ", ".join(accept)} if accept else {}
            response, final_url = await self._registry_get(source, url, ref.path, headers)
            if response.code != 200:
                await self._fail_for_status(response, final_url, what, source, ref.path)
            announced = response.length
            limit = self._max_manifest_size
            if announced is not UNKNOWN_LENGTH and announced > limit:
                await self._discard(response, final_url)
                raise ResourceExhausted(
                    f"manifest of {what} at {final_url} is {announced} bytes, over the {limit} byte limit"
                    " (max-manifest-size)"
                )
            chunks: list[bytes] = []
            await self._read(
                response,
                final_url,
                chunks.append,
                limit=limit,
                on_limit=lambda n: ResourceExhausted(
                    f"manifest of {what} at {final_url} exceeds the {limit} byte limit (max-manifest-size)"
                ),
            )
            body = b"".join(chunks)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if by_digest and digest != lookup:
                raise DigestMismatch(f"manifest from {final_url} has digest {digest}, expected {lookup}")
            claimed = _header(response, "Docker-Content-Digest")
            if claimed and claimed != digest and not by_digest:
                # Fetched by tag the header is only a hint; our own hash is what counts.
                log.warn(
                    "registry claims digest {claimed} for {url} but the body hashes to {digest}",
                    claimed=claimed,
                    url=final_url,
                    digest=digest,
                )
            return Manifest(_media_type(response, body), body, digest, self._effective_url(url))

        return await self._from_sources(ref, credentials, what, attempt)

    # -- blobs ---------------------------------------------------------------------------

    async def _get_blob(
        self,
        ref: Reference,
        digest: str,
        dest: str,
        credentials: Credentials | None,
        progress: Callable[[int, int | None], None] | None,
        expected_size: int | None,
    ) -> int:
        validate_digest(digest)
        what = f"blob {digest} of {ref.name}"

        async def attempt(source: _Source) -> int:
            url = f"{source.base}/v2/{ref.path}/blobs/{digest}"
            try:
                out = open(dest, "wb")
            except OSError as exc:
                raise _LocalFailure(f"cannot create {dest} for {what}: {exc}") from None
            try:
                with out:
                    return await self._download(source, url, ref.path, what, digest, out, progress, expected_size)
            except BaseException:
                _remove(dest)
                raise

        try:
            return await self._from_sources(ref, credentials, what, attempt)
        except BaseException:
            _remove(dest)
            raise

    async def _download(
        self,
        source: _Source,
        url: str,
        repo: str,
        what: str,
        digest: str,
        out: Any,
        progress: Callable[[int, int | None], None] | None,
        expected_size: int | None,
    ) -> int:
        response, final_url = await self._registry_get(source, url, repo, {})
        if response.code != 200:
            await self._fail_for_status(response, final_url, what, source, repo)
        announced = None if response.length is UNKNOWN_LENGTH else int(response.length)
        if expected_size is not None and announced is not None and announced != expected_size:
            await self._discard(response, final_url)
            raise DigestMismatch(
                f"{what} from {final_url} is announced as {announced} bytes, expected {expected_size} "
                f"(digest {digest})"
            )
        total = announced if announced is not None else expected_size
        hasher = hashlib.sha256()
        done = 0

        def sink(data: bytes) -> None:
            nonlocal done
            try:
                out.write(data)
            except OSError as exc:
                raise _LocalFailure(f"cannot write {what} to {out.name}: {exc}") from None
            hasher.update(data)
            done += len(data)
            if progress is not None:
                progress(done, total)

        size = await self._read(
            response,
            final_url,
            sink,
            limit=expected_size,
            on_limit=lambda n: DigestMismatch(
                f"{what} from {final_url} is longer than the expected {expected_size} bytes (digest {digest})"
            ),
        )
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"{what} from {final_url} has digest {actual} ({size} bytes), expected {digest}")
        if expected_size is not None and size != expected_size:
            raise DigestMismatch(f"{what} from {final_url} is {size} bytes, expected {expected_size}")
        return size

    # -- one authenticated request -----------------------------------------------------------

    async def _registry_get(
        self, source: _Source, url: str, repo: str, headers: dict[str, str]
    ) -> tuple[IResponse, str]:
        """GET *url* on *source*, answering one authentication challenge.

        Returns the final response (not yet read unless it is an error the
        caller must map) and the URL that produced it.
        """
        netloc = source.netloc
        scope = f"repository:{repo}:pull"
        creds = source.credentials
        authorization = await self._authorization_up_front(netloc, scope, creds)
        fresh = False
        while True:
            sent = dict(headers)
            if authorization:
                sent["Authorization"] = authorization
            response, final_url = await self._follow("GET", url, sent)
            if response.code != 401 or fresh:
                if response.code in (401, 403):
                    await self._permission_denied(response, final_url, netloc, repo, creds)
                return response, final_url
            challenges = _parse_challenges(
                [v.decode("latin-1") for v in response.headers.getRawHeaders(b"www-authenticate") or []]
            )
            if creds is not None and creds.registry_token:
                # The kubelet's token is all we have; a refusal is final.
                await self._permission_denied(response, final_url, netloc, repo, creds)
            body = await self._discard(response, final_url)
            challenge = _pick_challenge(challenges)
            if challenge is None:
                _, words = _registry_words(body, response.code, _phrase(response))
                raise PermissionDenied(
                    f"registry {netloc} denied access to repository {repo} and named no usable "
                    f"authentication scheme: {words}"
                )
            self._challenges[netloc] = challenge
            authorization = await self._answer(challenge, netloc, scope, creds, repo, body, response, force=True)
            fresh = True

    async def _authorization_up_front(self, netloc: str, scope: str, creds: Credentials | None) -> str | None:
        """What to send with the first request, from what this registry asked before."""
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        challenge = self._challenges.get(netloc)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            pair = creds.basic() if creds is not None else None
            return _basic(pair) if pair else None
        return await self._bearer_token(challenge, netloc, scope, creds, force=False)

    async def _answer(
        self,
        challenge: _Challenge,
        netloc: str,
        scope: str,
        creds: Credentials | None,
        repo: str,
        body: bytes,
        response: IResponse,
        force: bool,
    ) -> str:
        if challenge.scheme == "basic":
            pair = creds.basic() if creds is not None else None
            if pair is None:
                _, words = _registry_words(body, response.code, _phrase(response))
                raise PermissionDenied(
                    f"registry {netloc} requires credentials for repository {repo} and none were given: {words}"
                )
            return _basic(pair)
        return await self._bearer_token(challenge, netloc, scope, creds, force=force)

    async def _bearer_token(
        self, challenge: _Challenge, netloc: str, scope: str, creds: Credentials | None, force: bool
    ) -> str:
        """``Bearer <token>`` for *scope*, cached per (realm, service, scope,
        credentials) until it expires; concurrent requests share one fetch."""
        realm, service = challenge.get("realm"), challenge.get("service")
        key = (realm, service, scope, creds)
        now = self._reactor.seconds()
        cached = self._tokens.get(key)
        if force:
            self._tokens.pop(key, None)
        elif cached is not None and cached.expires > now:
            return f"Bearer {cached.value}"
        waiters = self._token_waiters.get(key)
        if waiters is not None:
            d: Deferred[str] = Deferred()
            waiters.append(d)
            return f"Bearer {await d}"
        waiters = self._token_waiters[key] = []
        try:
            token, lifetime = await self._fetch_token(realm, service, scope, creds, netloc)
        except BaseException as exc:
            del self._token_waiters[key]
            shared: BaseException = exc
            if isinstance(exc, CancelledError):
                # Our caller gave up; the others should simply try again.
                shared = _Retry(Unavailable(f"token request to {realm} was abandoned"))
            for w in waiters:
                if not w.called:
                    w.errback(shared)
            raise
        del self._token_waiters[key]
        now = self._reactor.seconds()
        # Forget expired tokens so the cache stays as small as the set in use.
        for stale in [k for k, t in self._tokens.items() if t.expires <= now]:
            del self._tokens[stale]
        # Renew a little early so a token never expires in flight.
        margin = min(5.0, lifetime * 0.1)
        self._tokens[key] = _Token(token, now + lifetime - margin)
        for w in waiters:
            if not w.called:
                w.callback(token)
        return f"Bearer {token}"

    async def _fetch_token(
        self, realm: str, service: str, scope: str, creds: Credentials | None, netloc: str
    ) -> tuple[str, float]:
        repo = scope.split(":")[1] if scope.count(":") >= 2 else scope
        parsed = urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PermissionDenied(f"registry {netloc} named an unusable token realm {realm!r}")
        headers = {"Accept": "application/json"}
        body: bytes | None = None
        if creds is not None and (creds.identity_token or creds.basic()) and self._plain_http_forbidden(realm):
            raise PermissionDenied(
                f"registry {netloc} named a plain-HTTP token realm {realm!r}: credentials are not sent over "
                f"plain HTTP to a host not configured insecure (--insecure-registry)"
            )
        if creds is not None and creds.identity_token:
            method = "POST"
            url = realm
            form = {"grant_type": "refresh_token", "service": service, "scope": scope,
                    "client_id": "rktlet", "refresh_token": creds.identity_token}
            body = urlencode(form).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            method = "GET"
            query = urlencode([(k, v) for k, v in (("service", service), ("scope", scope)) if v])
            url = realm + ("&" if parsed.query else "?") + query
            pair = creds.basic() if creds is not None else None
            if pair is not None:
                headers["Authorization"] = _basic(pair)
        response, final_url = await self._follow(method, url, headers, body, secret_body=body is not None)
        data = await self._discard(response, final_url)
        if response.code in (401, 403):
            _, words = _registry_words(data, response.code, _phrase(response))
            who = creds.describe() if creds is not None else "anonymous access"
            raise PermissionDenied(
                f"registry {netloc} denied access to repository {repo}: token server {realm} refused "
                f"{who}: {words}"
            )
        if response.code == 429 or response.code >= 500:
            _, words = _registry_words(data, response.code, _phrase(response))
            raise _Retry(
                Unavailable(f"token server {realm} (for registry {netloc}) answered {response.code}: {words}"),
                _retry_after(response),
            )
        if response.code != 200:
            _, words = _registry_words(data, response.code, _phrase(response))
            raise RuntimeFailure(
                f"token server {realm} (for registry {netloc}) answered {response.code}: {words}"
            )
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise RuntimeFailure(f"token server {realm} sent an unreadable answer") from None
        if not isinstance(token, str) or not token:
            raise RuntimeFailure(f"token server {realm} sent no token")
        return token, lifetime

    # -- status mapping ----------------------------------------------------------------

    async def _permission_denied(
        self, response: IResponse, url: str, netloc: str, repo: str, creds: Credentials | None
    ) -> None:
        body = await self._discard(response, url)
        _, words = _registry_words(body, response.code, _phrase(response))
        who = f"with {creds.describe()}" if creds is not None else "anonymously"
        raise PermissionDenied(f"registry {netloc} denied access to repository {repo} ({who}): {words}")

    async def _fail_for_status(self, response: IResponse, url: str, what: str, source: _Source, repo: str) -> None:
        """Read an error answer and raise the matching error (never returns)."""
        if response.code in (401, 403):
            await self._permission_denied(response, url, source.netloc, repo, source.credentials)
        body = await self._discard(response, url)
        codes, words = _registry_words(body, response.code, _phrase(response))
        status = response.code
        if status == 404 or codes & _NOT_FOUND_CODES:
            raise NotFound(f"{what} not found: {words}")
        if status == 429 or status >= 500:
            raise _Retry(Unavailable(f"{url} answered {status} {_phrase(response)}: {words}"), _retry_after(response))
        if status == 400:
            raise InvalidArgument(f"registry {source.netloc} rejected the request for {what}: {words}")
        raise RuntimeFailure(f"registry {source.netloc} answered {status} for {what} ({url}): {words}")

    # -- HTTP plumbing --------------------------------------------------------------------

    def _plain_http_forbidden(self, url: str) -> bool:
        """Whether secrets must not go to *url*: plain HTTP to a host that is
        not configured insecure."""
        parts = urlsplit(url)
        return parts.scheme == "http" and not self._is_insecure(parts.netloc)

    async def _follow(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None, secret_body: bool = False
    ) -> tuple[IResponse, str]:
        """Send a request, following redirects; returns the final response and URL.

        Credentials never follow a redirect to another host or down to plain
        HTTP (the ``Authorization`` header is dropped); a request whose
        *secret_body* carries them (a refresh-token POST) is not re-sent
        there at all."""
        current = url
        headers = dict(headers)
        for hop in range(MAX_REDIRECTS + 1):
            response, current = await self._send(method, current, headers, body)
            if response.code not in _REDIRECT_CODES:
                return response, current
            location = _header(response, "Location")
            await self._discard(response, current)
            if not location:
                raise RuntimeFailure(f"{current} answered {response.code} without a Location header")
            if hop == MAX_REDIRECTS:
                raise RuntimeFailure(f"more than {MAX_REDIRECTS} redirects fetching {url}")
            target = urljoin(current, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise RuntimeFailure(f"{current} redirected to an unsupported URL {target!r}")
            elsewhere = urlsplit(target).netloc.lower() != urlsplit(current).netloc.lower()
            downgraded = urlsplit(current).scheme == "https" and urlsplit(target).scheme == "http"
            if elsewhere or downgraded:
                # Credentials are for the registry, never for blob storage
                # elsewhere, and never for plain HTTP once TLS was asked for.
                headers.pop("Authorization", None)
                if secret_body and response.code in (307, 308):
                    raise PermissionDenied(
                        f"{current} redirected a request carrying credentials to {target}; not sent there"
                    )
            if response.code == 303:
                method, body = "GET", None
            log.debug("{url} redirects to {target}", url=current, target=target)
            current = target
        raise AssertionError("unreachable")

    def _effective_url(self, url: str) -> str:
        """*url* with the scheme an insecure host was found to speak."""
        parts = urlsplit(url)
        if parts.scheme == "https" and self._schemes.get(parts.netloc) == "http":
            return urlunsplit(("http",) + tuple(parts[1:]))
        return url

    async def _send(
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
                except (_Retry, Unavailable, DeadlineExceeded) as exc:
                    reason = exc.error if isinstance(exc, _Retry) else exc
                    log.info(
                        "HTTPS to insecure registry {host} failed ({reason}); trying plain HTTP",
                        host=parts.netloc,
                        reason=str(reason),
                    )
                    try:
                        response = await self._send_once(method, plain, headers, body)
                    except _Retry as again:
                        raise _Retry(_also(again.error, reason), again.retry_after) from None
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
            raise _Retry(DeadlineExceeded(f"no answer from {url} within {self._idle_timeout:g} s")) from None
        except (net_error.ConnectError, ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed,
                net_error.ConnectionLost, net_error.ConnectionDone) as exc:
            error = Unavailable(f"cannot reach {url}: {_describe(exc)}")
            if _is_tls_failure(exc):
                # A certificate or protocol mismatch will not go away by retrying.
                raise error from None
            raise _Retry(error) from None
        except Exception as exc:
            raise Unavailable(f"request to {url} failed: {_describe(exc)}") from None

    async def _read(
        self,
        response: IResponse,
        url: str,
        sink: Callable[[bytes], None],
        limit: int | None = None,
        on_limit: Callable[[int], RktletError] | None = None,
    ) -> int:
        reader = _BodyReader(self._reactor, self._idle_timeout, url, sink, limit, on_limit)
        response.deliverBody(reader)
        return await reader.done

    async def _discard(self, response: IResponse, url: str) -> bytes:
        """Read a small body (error text, redirect page, token); keeps at most
        :data:`_MAX_SMALL_BODY` bytes.  Reading it lets the connection be reused."""
        chunks: list[bytes] = []
        await self._read(response, url, chunks.append, limit=_MAX_SMALL_BODY)
        return b"".join(chunks)


# -- small helpers ------------------------------------------------------------------------


def _also(error: RktletError, https_reason: RktletError) -> RktletError:
    """*error* of the plain-HTTP attempt, also naming why HTTPS failed."""
    return type(error)(f"{error} (and over HTTPS: {https_reason})")


def _basic(pair: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode("utf-8")).decode("ascii")


def _pick_challenge(challenges: Sequence[_Challenge]) -> _Challenge | None:
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == wanted and (wanted == "basic" or challenge.get("realm")):
                return challenge
    return None


def _phrase(response: IResponse) -> str:
    phrase = response.phrase
    return phrase.decode("latin-1") if isinstance(phrase, bytes) else str(phrase or "")


def _media_type(response: IResponse, body: bytes) -> str:
    content_type = _header(response, "Content-Type").split(";", 1)[0].strip().lower()
    if content_type not in _GENERIC_CONTENT_TYPES:
        return content_type
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError, UnicodeDecodeError):
        declared = None
    return declared if isinstance(declared, str) and declared else content_type


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
