"""In-process fakes for the registry client's unit tests, on twisted.web.

Everything listens on ``127.0.0.1:0`` inside the test's reactor:

* :class:`FakeRegistry`: the pull side of the registry HTTP API v2
  (``/v2/``, manifests, blobs) with switchable authentication (none, basic,
  bearer), injected failures, corrupted blobs, redirects of blobs to another
  server and bodies that stall half way.
* :class:`TokenServer`: a Docker token endpoint (GET with basic auth or
  anonymous, POST ``grant_type=refresh_token``) issuing expiring tokens.
* :class:`BlobHost`: "blob storage" on another port that blob requests are
  redirected to; it records whether an ``Authorization`` header arrived.
* :class:`Servers`: starts these (plain HTTP or HTTPS with a certificate made
  at test time) and stops them, closing every connection, in teardown.

Plain-HTTP servers answer a TLS ClientHello at once with ``400`` and close,
as Go's net/http (docker-registry) does; the count is in ``tls_probes``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

__all__ = [
    "BlobHost",
    "FakeRegistry",
    "Recorded",
    "Served",
    "Servers",
    "TokenServer",
    "self_signed_certificate",
    "sha256",
]

_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of *data*."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


@dataclass
class Recorded:
    """One request a fake received."""

    method: str
    path: str
    headers: dict[str, str]
    args: dict[str, str] = field(default_factory=dict)

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header, or ``None``."""
        return self.headers.get("authorization")


def _record(request: Request) -> Recorded:
    headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
    args = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
    return Recorded(request.method.decode(), request.path.decode(), headers, args)


class TokenServer(Resource):
    """A Docker token endpoint.

    :param users: user -> password accepted with basic auth on GET.
    :param refresh_tokens: identity (refresh) tokens accepted on POST.
    :param anonymous: whether a GET without credentials gets a token.
    :param expires_in: lifetime announced (``None``: left out of the answer).
    """

    isLeaf = True

    def __init__(
        self,
        users: dict[str, str] | None = None,
        refresh_tokens: set[str] | None = None,
        anonymous: bool = True,
        expires_in: int | None = 300,
    ) -> None:
        super().__init__()
        self.users = dict(users or {})
        self.refresh_tokens = set(refresh_tokens or ())
        self.anonymous = anonymous
        self.expires_in = expires_in
        self.requests: list[Recorded] = []
        #: token -> scope it grants.
        self.issued: dict[str, str] = {}
        #: (status, base URL): answer every request with a redirect there.
        self.redirect_to: tuple[int, str] | None = None
        self._serial = 0

    def _redirected(self, request: Request) -> bool:
        if self.redirect_to is None:
            return False
        code, base = self.redirect_to
        request.setResponseCode(code)
        request.setHeader(b"location", (base + request.uri.decode()).encode())
        return True

    def _issue(self, scope: str, access_token_field: bool = False) -> bytes:
        self._serial += 1
        token = f"tok-{self._serial}"
        self.issued[token] = scope
        doc: dict[str, Any] = {("access_token" if access_token_field else "token"): token}
        if self.expires_in is not None:
            doc["expires_in"] = self.expires_in
        return json.dumps(doc).encode()

    def render_GET(self, request: Request) -> bytes:
        rec = _record(request)
        self.requests.append(rec)
        auth = rec.authorization
        request.setHeader(b"content-type", b"application/json")
        if auth:
            user, _, password = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":")
            if self.users.get(user) != password or not auth.startswith("Basic "):
                request.setResponseCode(401)
                return json.dumps({"details": "incorrect username or password"}).encode()
        elif not self.anonymous:
            request.setResponseCode(401)
            return json.dumps({"details": "authentication required"}).encode()
        return self._issue(rec.args.get("scope", ""))

    def render_POST(self, request: Request) -> bytes:
        rec = _record(request)
        self.requests.append(rec)
        if self._redirected(request):
            return b""
        request.setHeader(b"content-type", b"application/json")
        if rec.args.get("grant_type") != "refresh_token" or rec.args.get("refresh_token") not in self.refresh_tokens:
            request.setResponseCode(401)
            return json.dumps({"error": "invalid_grant", "error_description": "refresh token is not valid"}).encode()
        return self._issue(rec.args.get("scope", ""), access_token_field=True)


class BlobHost(Resource):
    """Blob storage on another host: serves ``/blobs/<digest>``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}
        self.requests: list[Recorded] = []

    def render_GET(self, request: Request) -> bytes:
        self.requests.append(_record(request))
        digest = request.path.decode().rsplit("/", 1)[-1]
        if digest not in self.blobs:
            request.setResponseCode(404)
            return b"no such object"
        request.setHeader(b"content-type", b"application/octet-stream")
        return self.blobs[digest]


class FakeRegistry(Resource):
    """The pull side of a registry (API v2) for one test.

    Attributes to steer it:

    * ``auth``: ``None``, ``"basic"`` (``users``) or ``"bearer"``
      (``token_server`` and its ``url`` in ``token_realm``);
    * ``failures``: HTTP statuses answered (with a registry error body) to the
      next requests, first to last;
    * ``corrupt``: digests whose blob is served with one byte changed;
    * ``redirect_blobs``: base URL that blob requests are sent to (307);
    * ``stall_blobs``: digest -> bytes sent before the body stalls forever;
    * ``manifest_override``: ``(repo, ref) -> body`` served instead of the
      real manifest (to break a digest).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.requests: list[Recorded] = []
        self.auth: str | None = None
        self.users: dict[str, str] = {}
        self.token_server: TokenServer | None = None
        self.token_realm = ""
        self.failures: list[int] = []
        self.corrupt: set[str] = set()
        self.redirect_blobs: str | None = None
        self.stall_blobs: dict[str, int] = {}
        self.manifest_override: dict[tuple[str, str], bytes] = {}
        #: Requests left hanging by ``stall_blobs``, and whether each was closed.
        self.stalled: list[Request] = []
        self.stalled_closed: list[bool] = []

    # -- content -----------------------------------------------------------------

    def add_blob(self, repo: str, data: bytes) -> str:
        """Store *data* as a blob of *repo*; return its digest."""
        digest = sha256(data)
        self.blobs[(repo, digest)] = data
        return digest

    def add_manifest(self, repo: str, tag: str | None, body: bytes, media_type: str) -> str:
        """Store a manifest under its digest (and *tag*); return the digest.

        *media_type* is the ``Content-Type`` served (``""`` for none).
        """
        digest = sha256(body)
        self.manifests[(repo, digest)] = (media_type, body)
        if tag:
            self.manifests[(repo, tag)] = (media_type, body)
        return digest

    def add_image(self, repo: str, tag: str, layers: list[bytes], media_type: str | None = None) -> dict[str, Any]:
        """A small image: blobs for a config and *layers*, and a manifest
        referring to them.  Returns ``{"manifest", "digest", "config", "layers"}``."""
        media_type = media_type or "application/vnd.oci.image.manifest.v1+json"
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        config_digest = self.add_blob(repo, config)
        layer_digests = [self.add_blob(repo, layer) for layer in layers]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": len(config)},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(b)}
                    for d, b in zip(layer_digests, layers)
                ],
            },
            sort_keys=True,
        ).encode()
        digest = self.add_manifest(repo, tag, manifest, media_type)
        return {"manifest": manifest, "digest": digest, "config": config_digest, "layers": layer_digests}

    # -- serving -------------------------------------------------------------------

    def _challenge(self, request: Request, repo: str | None) -> bytes:
        request.setResponseCode(401)
        if self.auth == "basic":
            request.setHeader(b"www-authenticate", b'Basic realm="fake-registry"')
        else:
            scope = f',scope="repository:{repo}:pull"' if repo else ""
            value = f'Bearer realm="{self.token_realm}",service="fake-registry"{scope}'
            request.setHeader(b"www-authenticate", value.encode())
        request.setHeader(b"content-type", b"application/json")
        return _errors("UNAUTHORIZED", "authentication required")

    def _authorized(self, rec: Recorded, repo: str | None) -> bool:
        auth = rec.authorization or ""
        if self.auth == "basic":
            if not auth.startswith("Basic "):
                return False
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user in self.users and self.users[user] == password
        if self.auth == "bearer":
            if not auth.startswith("Bearer ") or self.token_server is None:
                return False
            scope = self.token_server.issued.get(auth[7:])
            return scope is not None and (repo is None or scope == f"repository:{repo}:pull")
        return True

    def render_GET(self, request: Request) -> bytes | int:
        rec = _record(request)
        self.requests.append(rec)
        path = rec.path
        if self.failures:
            status = self.failures.pop(0)
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            code = {429: "TOOMANYREQUESTS", 400: "NAME_INVALID"}.get(status, "UNKNOWN")
            return _errors(code, f"injected failure {status}")
        match = _ROUTE.match(path)
        repo = match.group("name") if match else None
        if self.auth and not self._authorized(rec, repo):
            return self._challenge(request, repo)
        if path == "/v2/":
            request.setHeader(b"content-type", b"application/json")
            return b"{}"
        if match is None:
            request.setResponseCode(404)
            return _errors("NAME_UNKNOWN", "repository name not known to registry")
        repo, kind, ref = match.group("name", "kind", "ref")
        if kind == "manifests":
            return self._manifest(request, repo, ref)
        return self._blob(request, repo, ref)

    def _manifest(self, request: Request, repo: str, ref: str) -> bytes:
        found = self.manifests.get((repo, ref))
        if found is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return _errors("MANIFEST_UNKNOWN", "manifest unknown")
        media_type, body = found
        body = self.manifest_override.get((repo, ref), body)
        if media_type:
            request.setHeader(b"content-type", media_type.encode())
        request.setHeader(b"docker-content-digest", sha256(found[1]).encode())
        return body

    def _blob(self, request: Request, repo: str, digest: str) -> bytes | int:
        data = self.blobs.get((repo, digest))
        if data is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return _errors("BLOB_UNKNOWN", "blob unknown to registry")
        if self.redirect_blobs:
            request.setResponseCode(307)
            request.setHeader(b"location", f"{self.redirect_blobs}/blobs/{digest}".encode())
            return b""
        if digest in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"docker-content-digest", digest.encode())
        if digest in self.stall_blobs:
            request.setHeader(b"content-length", str(len(data)).encode())
            request.write(data[: self.stall_blobs[digest]])
            index = len(self.stalled)
            self.stalled.append(request)
            self.stalled_closed.append(False)
            request.notifyFinish().addBoth(lambda _: self.stalled_closed.__setitem__(index, True))
            return NOT_DONE_YET
        return data


# -- serving ---------------------------------------------------------------------------------


class _Channel(HTTPChannel):
    """An HTTP/1.1 channel that answers a TLS ClientHello like Go does (400,
    close) instead of waiting for a request line, and that its site can
    close in teardown."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connections.add(self)  # type: ignore[attr-defined]
        self.site.connections_made += 1  # type: ignore[attr-defined]
        self._first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first:
            self._first = False
            if data[:2] == b"\x16\x03" and self.site.reject_tls:  # type: ignore[attr-defined]
                self.site.tls_probes += 1  # type: ignore[attr-defined]
                self.transport.write(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                self.transport.loseConnection()
                return
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self.site.connections.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class _Site(Site):
    protocol = _Channel

    def __init__(self, resource: Resource, reject_tls: bool) -> None:
        super().__init__(resource)
        self.connections: set[_Channel] = set()
        self.reject_tls = reject_tls
        self.tls_probes = 0
        self.connections_made = 0
        self.noisy = False

    def log(self, request: Any) -> None:  # no access log in test output
        pass


@dataclass
class Served:
    """One listening fake: ``host`` is ``127.0.0.1:PORT``, ``url`` its base URL."""

    resource: Resource
    site: _Site
    port: Any
    scheme: str

    @property
    def port_number(self) -> int:
        """The TCP port."""
        return self.port.getHost().port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port_number}"

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{self.scheme}://{self.host}"

    @property
    def connections_made(self) -> int:
        """TCP connections accepted so far (TLS probes included)."""
        return self.site.connections_made

    @property
    def tls_probes(self) -> int:
        """TLS handshakes refused by this plain-HTTP server."""
        return self.site.tls_probes


def self_signed_certificate(host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for *host*: ``(key_pem, cert_pem)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@implementer(IOpenSSLContextFactory)
class _ServerTLS:
    """Server-side TLS context from PEM (cryptography objects, which current
    pyOpenSSL prefers over its own)."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        self._context.use_privatekey(serialization.load_pem_private_key(key_pem, None))

    def getContext(self) -> SSL.Context:
        """The context for each accepted connection."""
        return self._context


class Servers:
    """Starts fakes on 127.0.0.1:0 and stops them all (see :meth:`close`)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._served: list[Served] = []

    def listen(self, resource: Resource, tls: bool = False, reject_tls: bool = True) -> Served:
        """Serve *resource*; over HTTPS with a fresh self-signed certificate if *tls*.

        *reject_tls* (plain HTTP only): answer a TLS ClientHello with 400
        at once; when false the server waits silently, as twisted.web does.
        """
        site = _Site(resource, reject_tls=reject_tls and not tls)
        site.reactor = self.reactor
        if tls:
            key_pem, cert_pem = self_signed_certificate()
            port = self.reactor.listenSSL(0, site, _ServerTLS(key_pem, cert_pem), interface="127.0.0.1")
        else:
            port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        served = Served(resource, site, port, "https" if tls else "http")
        self._served.append(served)
        return served

    def closed_port(self) -> int:
        """A loopback port nothing listens on (bound, then released)."""
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection still open."""
        for served in self._served:
            for channel in list(served.site.connections):
                channel.transport.abortConnection()
        await defer.gatherResults([defer.maybeDeferred(s.port.stopListening) for s in self._served])
        self._served.clear()
