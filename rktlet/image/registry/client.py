"""The registry client proper: what is fetched (manifests, blobs), from which
sources (mirrors, then the registry) and how often (retries with backoff).
Authentication is :mod:`.auth`'s, the HTTP exchanges :mod:`.transport`'s."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from rktlet import logs
from rktlet.errors import (
    DigestMismatch,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RktletError,
    RuntimeFailure,
    Unavailable,
)
from rktlet.image.reference import Reference, is_digest, validate_digest
from rktlet.image.registry.auth import Authenticator, Credentials
from rktlet.image.registry.transport import (
    LocalFailure,
    Retry,
    Transport,
    header,
    phrase,
    registry_words,
    retry_after,
    sleep,
)
from rktlet.image.registry.writer import BlobWriter, sha256_digest

__all__ = ["Manifest", "RegistryClient", "MAX_MANIFEST_SIZE"]

log = logs.logger("rktlet.image.registry")

#: Manifests and indexes larger than this are refused (containerd uses the same cap).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: Content types too generic to name a manifest type; the body's ``mediaType`` wins.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")

_T = TypeVar("_T")


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
        ``Agent`` over a persistent pool, with :class:`~.tls.TLSPolicy`).
    :param connect_timeout: seconds to establish a connection.
    :param idle_timeout: seconds without any byte (awaiting the response or
        within a body) before an attempt fails.
    :param retries: attempts in all for a transient failure on the registry.
    :param backoff: first pause between attempts; it doubles each time.
    :param max_manifest_size: bytes a manifest or index may have.
    :param threadpool: where blobs are written and hashed (a ``ThreadPool``);
        default: the reactor's, which the image manager uses too.
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
        threadpool: ThreadPool | None = None,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._max_manifest_size = max_manifest_size
        self._mirrors = _normalized(mirrors)
        self._retries = max(1, retries)
        self._backoff = backoff
        self._agent = agent
        self._timeouts = (connect_timeout, idle_timeout)
        self._transport = Transport(reactor, is_insecure, agent, connect_timeout, idle_timeout)
        self._auth = Authenticator(reactor, self._transport)

    def close(self) -> Deferred[None]:
        """Close the pooled idle connections (the default agent's only)."""
        return self._transport.close()

    def reconfigured(
        self,
        is_insecure: Callable[[str], bool] | None = None,
        mirrors: Mapping[str, Sequence[str]] | None = None,
    ) -> "RegistryClient":
        """A client like this one with other insecure registries and/or
        mirrors (``None``: unchanged); this one is left as it is, for the
        pulls that use it.

        With the same insecure registries the new client shares this one's
        connections, tokens and what it learnt of each registry. With other
        ones it gets its own: a connection this one opened without
        verifying TLS must never serve a registry that is no longer insecure.
        """
        clone = copy.copy(self)
        if mirrors is not None:
            clone._mirrors = _normalized(mirrors)
        if is_insecure is not None:
            connect_timeout, idle_timeout = self._timeouts
            clone._transport = Transport(self._reactor, is_insecure, self._agent, connect_timeout, idle_timeout)
            clone._auth = Authenticator(self._reactor, clone._transport)
        return clone

    def shares_connections_with(self, other: "RegistryClient") -> bool:
        """Whether *other* uses this client's connection pool."""
        return self._transport is other._transport

    @property
    def threadpool(self) -> ThreadPool:
        """Where downloaded blobs are written and hashed."""
        # Looked up late, as the reactor's pool starts with the reactor.
        return self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()

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
            except LocalFailure:
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
            except Retry as exc:
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
                await sleep(self._reactor, delay)
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
            response, final_url = await self._auth.get(url, ref.path, headers, source.netloc, source.credentials)
            if response.code != 200:
                await self._fail_for_status(response, final_url, what, source, ref.path)
            announced = response.length
            limit = self._max_manifest_size
            if announced is not UNKNOWN_LENGTH and announced > limit:
                await self._transport.discard(response, final_url)
                raise ResourceExhausted(
                    f"manifest of {what} at {final_url} is {announced} bytes, over the {limit} byte limit"
                    " (max-manifest-size)"
                )
            chunks: list[bytes] = []
            await self._transport.read(
                response,
                final_url,
                chunks.append,
                limit=limit,
                on_limit=lambda n: ResourceExhausted(
                    f"manifest of {what} at {final_url} exceeds the {limit} byte limit (max-manifest-size)"
                ),
            )
            body = b"".join(chunks)
            digest = await deferToThreadPool(self._reactor, self.threadpool, sha256_digest, body)
            if by_digest and digest != lookup:
                raise DigestMismatch(f"manifest from {final_url} has digest {digest}, expected {lookup}")
            claimed = header(response, "Docker-Content-Digest")
            if claimed and claimed != digest and not by_digest:
                # Fetched by tag the header is only a hint; our own hash is what counts.
                log.warn(
                    "registry claims digest {claimed} for {url} but the body hashes to {digest}",
                    claimed=claimed,
                    url=final_url,
                    digest=digest,
                )
            return Manifest(_media_type(response, body), body, digest, self._transport.effective_url(url))

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
                raise LocalFailure(f"cannot create {dest} for {what}: {exc}") from None
            writer = BlobWriter(self._reactor, self.threadpool, out, what)
            try:
                return await self._download(source, url, ref.path, what, digest, writer, progress, expected_size)
            except BaseException:
                writer.abandon()
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
        out: BlobWriter,
        progress: Callable[[int, int | None], None] | None,
        expected_size: int | None,
    ) -> int:
        response, final_url = await self._auth.get(url, repo, {}, source.netloc, source.credentials)
        if response.code != 200:
            await self._fail_for_status(response, final_url, what, source, repo)
        announced = None if response.length is UNKNOWN_LENGTH else int(response.length)
        if expected_size is not None and announced is not None and announced != expected_size:
            await self._transport.discard(response, final_url)
            raise DigestMismatch(
                f"{what} from {final_url} is announced as {announced} bytes, expected {expected_size} "
                f"(digest {digest})"
            )
        total = announced if announced is not None else expected_size
        done = 0

        def sink(data: bytes) -> None:
            nonlocal done
            out.write(data)  # queued for a thread, which writes and hashes it
            done += len(data)
            if progress is not None:
                progress(done, total)

        size = await self._transport.read(
            response,
            final_url,
            sink,
            limit=expected_size,
            on_limit=lambda n: DigestMismatch(
                f"{what} from {final_url} is longer than the expected {expected_size} bytes (digest {digest})"
            ),
            throttle=out.throttle_with,
        )
        actual = await out.finish()
        if actual != digest:
            raise DigestMismatch(f"{what} from {final_url} has digest {actual} ({size} bytes), expected {digest}")
        if expected_size is not None and size != expected_size:
            raise DigestMismatch(f"{what} from {final_url} is {size} bytes, expected {expected_size}")
        return size

    # -- status mapping ----------------------------------------------------------------

    async def _fail_for_status(self, response: IResponse, url: str, what: str, source: _Source, repo: str) -> None:
        """Read an error answer and raise the matching error (never returns)."""
        if response.code in (401, 403):
            await self._auth.permission_denied(response, url, source.netloc, repo, source.credentials)
        body = await self._transport.discard(response, url)
        codes, words = registry_words(body, response.code, phrase(response))
        status = response.code
        if status == 404 or codes & _NOT_FOUND_CODES:
            raise NotFound(f"{what} not found: {words}")
        if status == 429 or status >= 500:
            raise Retry(Unavailable(f"{url} answered {status} {phrase(response)}: {words}"), retry_after(response))
        if status == 400:
            raise InvalidArgument(f"registry {source.netloc} rejected the request for {what}: {words}")
        raise RuntimeFailure(f"registry {source.netloc} answered {status} for {what} ({url}): {words}")


# -- small helpers ------------------------------------------------------------------------


def _media_type(response: IResponse, body: bytes) -> str:
    content_type = header(response, "Content-Type").split(";", 1)[0].strip().lower()
    if content_type not in _GENERIC_CONTENT_TYPES:
        return content_type
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError, UnicodeDecodeError):
        declared = None
    return declared if isinstance(declared, str) and declared else content_type


def _normalized(mirrors: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    return {domain: tuple(u.rstrip("/") for u in urls) for domain, urls in mirrors.items()}


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
