"""Authentication with registries: credentials, ``WWW-Authenticate``
challenges, bearer tokens, and the rules that keep credentials from
following a redirect where they do not belong.

:class:`Authenticator` sends one request (following redirects) with what an
earlier challenge from the same registry taught it, answers a ``401``
challenge once (a token from the realm, or basic auth), and caches tokens
until they expire; concurrent requests for one token share one fetch.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.web.iweb import IResponse

from rktlet import logs
from rktlet.errors import InvalidArgument, PermissionDenied, RuntimeFailure, Unavailable
from rktlet.image.registry.transport import Retry, Transport, header, phrase, registry_words, retry_after

__all__ = ["Authenticator", "Challenge", "Credentials", "MAX_REDIRECTS", "parse_challenges"]

log = logs.logger("rktlet.image.registry")

#: Redirect hops followed for one request.
MAX_REDIRECTS = 5
#: Lifetime of a token whose answer has no ``expires_in`` (token spec default).
_DEFAULT_TOKEN_LIFETIME = 60
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_AUTH_PARAM_RE = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
_AUTH_SCHEME_RE = re.compile(r"\s*,?\s*([A-Za-z][\w-]*)(?=\s|,|$)")


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

# -- challenges and tokens ----------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` in lower case and its parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str:
        """The parameter *name* (case-insensitive), or ``""``."""
        for key, value in self.params:
            if key.lower() == name:
                return value
        return ""


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235 auth-params)."""
    found: list[Challenge] = []
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
            found.append(Challenge(scheme, tuple(params)))
    return found


@dataclass
class _Token:
    value: str
    expires: float


def _basic(pair: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode("utf-8")).decode("ascii")


def _pick_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == wanted and (wanted == "basic" or challenge.get("realm")):
                return challenge
    return None


# -- the authenticator --------------------------------------------------------------------


class Authenticator:
    """Authenticated requests to registries over *transport*.

    :param reactor: the reactor; its ``seconds()`` is the clock for token expiry.
    :param transport: the exchanges (:class:`~.transport.Transport`).
    """

    def __init__(self, reactor: Any, transport: Transport) -> None:
        self._reactor = reactor
        self._transport = transport
        # netloc -> the challenge it last answered with (to authenticate up front).
        self._challenges: dict[str, Challenge] = {}
        # (realm, service, scope, credentials) -> token, and fetches under way.
        self._tokens: dict[tuple[str, str, str, Credentials | None], _Token] = {}
        self._token_waiters: dict[tuple[str, str, str, Credentials | None], list[Deferred[str]]] = {}

    # -- one authenticated request -----------------------------------------------------------

    async def get(
        self, url: str, repo: str, headers: dict[str, str], netloc: str, creds: Credentials | None
    ) -> tuple[IResponse, str]:
        """GET *url* on the registry (or mirror) *netloc* with *creds*,
        answering one authentication challenge.

        Returns the final response (not yet read unless it is an error the
        caller must map) and the URL that produced it.
        """
        scope = f"repository:{repo}:pull"
        authorization = await self.up_front(netloc, scope, creds)
        fresh = False
        while True:
            sent = dict(headers)
            if authorization:
                sent["Authorization"] = authorization
            response, final_url = await self.follow("GET", url, sent)
            if response.code != 401 or fresh:
                if response.code in (401, 403):
                    await self.permission_denied(response, final_url, netloc, repo, creds)
                return response, final_url
            challenges = parse_challenges(
                [v.decode("latin-1") for v in response.headers.getRawHeaders(b"www-authenticate") or []]
            )
            if creds is not None and creds.registry_token:
                # The kubelet's token is all we have; a refusal is final.
                await self.permission_denied(response, final_url, netloc, repo, creds)
            body = await self._transport.discard(response, final_url)
            challenge = _pick_challenge(challenges)
            if challenge is None:
                _, words = registry_words(body, response.code, phrase(response))
                raise PermissionDenied(
                    f"registry {netloc} denied access to repository {repo} and named no usable "
                    f"authentication scheme: {words}"
                )
            self._challenges[netloc] = challenge
            authorization = await self.answer(challenge, netloc, scope, creds, repo, body, response, force=True)
            fresh = True

    async def up_front(self, netloc: str, scope: str, creds: Credentials | None) -> str | None:
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

    async def answer(
        self,
        challenge: Challenge,
        netloc: str,
        scope: str,
        creds: Credentials | None,
        repo: str,
        body: bytes,
        response: IResponse,
        force: bool,
    ) -> str:
        """The ``Authorization`` value answering *challenge* (a ``401`` with
        *body*); *force* fetches a fresh token even when one is cached."""
        if challenge.scheme == "basic":
            pair = creds.basic() if creds is not None else None
            if pair is None:
                _, words = registry_words(body, response.code, phrase(response))
                raise PermissionDenied(
                    f"registry {netloc} requires credentials for repository {repo} and none were given: {words}"
                )
            return _basic(pair)
        return await self._bearer_token(challenge, netloc, scope, creds, force=force)

    async def _bearer_token(
        self, challenge: Challenge, netloc: str, scope: str, creds: Credentials | None, force: bool
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
                shared = Retry(Unavailable(f"token request to {realm} was abandoned"))
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
        sends_secret = creds is not None and bool(creds.identity_token or creds.basic())
        if sends_secret and self._transport.plain_http_forbidden(realm):
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
        response, final_url = await self.follow(method, url, headers, body, secret_body=body is not None)
        data = await self._transport.discard(response, final_url)
        if response.code in (401, 403):
            _, words = registry_words(data, response.code, phrase(response))
            who = creds.describe() if creds is not None else "anonymous access"
            raise PermissionDenied(
                f"registry {netloc} denied access to repository {repo}: token server {realm} refused "
                f"{who}: {words}"
            )
        if response.code == 429 or response.code >= 500:
            _, words = registry_words(data, response.code, phrase(response))
            raise Retry(
                Unavailable(f"token server {realm} (for registry {netloc}) answered {response.code}: {words}"),
                retry_after(response),
            )
        if response.code != 200:
            _, words = registry_words(data, response.code, phrase(response))
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

    async def permission_denied(
        self, response: IResponse, url: str, netloc: str, repo: str, creds: Credentials | None
    ) -> None:
        """Read a refusal and raise :class:`PermissionDenied` naming who was refused (never returns)."""
        body = await self._transport.discard(response, url)
        _, words = registry_words(body, response.code, phrase(response))
        who = f"with {creds.describe()}" if creds is not None else "anonymously"
        raise PermissionDenied(f"registry {netloc} denied access to repository {repo} ({who}): {words}")

    # -- redirects ---------------------------------------------------------------------

    async def follow(
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
            response, current = await self._transport.send(method, current, headers, body)
            if response.code not in _REDIRECT_CODES:
                return response, current
            location = header(response, "Location")
            await self._transport.discard(response, current)
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

