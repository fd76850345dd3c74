"""A real, throw-away container registry on 127.0.0.1 for integration tests.

:class:`LocalRegistry` runs Debian's ``docker-registry`` (distribution 2.8)
as a child process with filesystem storage in a private temporary directory,
listening only on loopback.  It also offers small blocking helpers that speak
the registry HTTP API v2 directly (push/get blobs and manifests), used by the
image builder in :mod:`harness.images` and by tests.

Everything here is plain blocking code meant to run inside tests, never in the
daemon.  Every started registry is stopped by PID (SIGTERM, then SIGKILL) by
:meth:`LocalRegistry.stop`, by the context manager, and as a last resort by an
``atexit`` hook, so no process outlives the test session.

Basic authentication (``auth=(user, password)``) is supported: the registry
only accepts bcrypt hashes in its htpasswd file, and since neither the
``bcrypt`` module nor ``htpasswd`` is available, a small bcrypt implementation
written from the published algorithm (Blowfish constants computed from the
digits of pi) lives at the bottom of this module.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Optional, Union

from harness.processes import spawn_logged, stop_process

__all__ = [
    "DEFAULT_REGISTRY_BINARY",
    "LocalRegistry",
    "RegistryError",
    "MANIFEST_MEDIA_TYPES",
    "registry_available",
    "sha256_digest",
    "bcrypt_hash",
]

DEFAULT_REGISTRY_BINARY = "/usr/bin/docker-registry"

#: Every manifest media type the helpers accept by default.
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)

_START_TIMEOUT = 10.0
_STOP_GRACE = 3.0
_BIND_ATTEMPTS = 5

# Registries still running, stopped at interpreter exit if a test forgot to.
_LIVE: "set[LocalRegistry]" = set()


class RegistryError(RuntimeError):
    """The registry process failed, or answered an API call unexpectedly."""


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string ``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registry_available(binary: str = DEFAULT_REGISTRY_BINARY) -> Optional[str]:
    """Return ``None`` if a registry can be started here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        return f"{binary} is missing (Debian package docker-registry)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config_yaml(addr: str, root: str, htpasswd: Optional[str], log_level: str) -> str:
    # JSON is valid YAML; this avoids needing a YAML writer.
    config: dict = {
        "version": 0.1,
        "log": {"level": log_level, "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": root},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": addr, "secret": "rktlet-test-registry"},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "rktlet-test", "path": htpasswd}}
    return json.dumps(config, indent=2) + "\n"


class LocalRegistry:
    """A ``docker-registry`` child process serving on ``127.0.0.1:<free port>``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`
    (``stop`` is idempotent and always safe to call)::

        with LocalRegistry() as reg:
            digest = reg.push_blob("busybox", b"...")

    :param auth: optional ``(user, password)``; enables htpasswd basic auth,
        and the helpers then authenticate with these credentials.
    :param binary: path of the registry program.
    :param log_level: registry log level (``error``, ``warn``, ``info``...).
    """

    def __init__(
        self,
        auth: Optional[tuple[str, str]] = None,
        binary: str = DEFAULT_REGISTRY_BINARY,
        log_level: str = "warn",
    ) -> None:
        self.auth = auth
        self.binary = binary
        self.log_level = log_level
        self.port: Optional[int] = None
        self.tmpdir: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        """PID of the registry process, or ``None`` when not running."""
        return self.process.pid if self.process is not None else None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        if self.port is None:
            raise RegistryError("registry is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def storage_dir(self) -> str:
        """The registry's filesystem storage root."""
        if self.tmpdir is None:
            raise RegistryError("registry is not started")
        return os.path.join(self.tmpdir, "data")

    @property
    def stderr_path(self) -> str:
        """File receiving the registry's stdout and stderr."""
        if self.tmpdir is None:
            raise RegistryError("registry is not started")
        return os.path.join(self.tmpdir, "registry.log")

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        """Image reference ``127.0.0.1:PORT/REPO:TAG`` (or ``@DIGEST``)."""
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    def start(self) -> "LocalRegistry":
        """Start the registry and wait until ``GET /v2/`` answers.

        Retries on a new port a few times if the chosen one was taken in the
        meantime.  Raises :class:`RegistryError` with the registry's output if
        it does not come up within ~10 s.
        """
        if self.process is not None:
            return self
        self.tmpdir = tempfile.mkdtemp(prefix="rktlet-registry-")
        try:
            os.makedirs(self.storage_dir)
            htpasswd = None
            if self.auth is not None:
                user, password = self.auth
                if ":" in user:
                    raise ValueError("user name may not contain ':'")
                htpasswd = os.path.join(self.tmpdir, "htpasswd")
                with open(htpasswd, "w") as f:
                    f.write(f"{user}:{bcrypt_hash(password)}\n")
            last_error = ""
            for _ in range(_BIND_ATTEMPTS):
                self.port = _free_port()
                config = os.path.join(self.tmpdir, "config.yml")
                with open(config, "w") as f:
                    f.write(_config_yaml(self.host, self.storage_dir, htpasswd, self.log_level))
                if self._spawn_and_wait(config):
                    return self
                last_error = self._read_log()
                if "address already in use" not in last_error:
                    break
            raise RegistryError(f"docker-registry did not start:\n{last_error}")
        except BaseException:
            self.stop()
            raise

    def _spawn_and_wait(self, config: str) -> bool:
        # A clean environment: REGISTRY_* variables would override the config.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": self.tmpdir or "/"}
        self.process = spawn_logged([self.binary, "serve", config], self.stderr_path, env=env, cwd=self.tmpdir,
                                    mode="wb")
        _LIVE.add(self)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reap()
                return False
            try:
                status, _, _ = self._request("GET", "/v2/", timeout=1.0, authenticate=False)
                if status in (200, 401):
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        self._reap()
        raise RegistryError(f"docker-registry did not answer within {_START_TIMEOUT:.0f}s:\n{self._read_log()}")

    def _read_log(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-8000:]
        except OSError:
            return "(no registry output)"

    def _reap(self) -> None:
        """Terminate the process by PID (SIGTERM, then SIGKILL) and wait for it."""
        proc = self.process
        if proc is None:
            return
        stop_process(proc, _STOP_GRACE)
        self.process = None
        _LIVE.discard(self)

    def stop(self) -> None:
        """Stop the registry (if running) and remove its temporary directory."""
        self._reap()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalRegistry {self.host if self.port else '-'} pid={self.pid}>"

    # -- raw HTTP ----------------------------------------------------------------

    def _auth_header(self) -> dict[str, str]:
        if self.auth is None:
            return {}
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = 30.0,
        authenticate: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP request to the registry; returns ``(status, headers, body)``.

        ``path`` may be an absolute URL as long as it points at this registry
        (upload ``Location`` headers); nothing else is ever contacted.
        """
        if self.port is None:
            raise RegistryError("registry is not started")
        parsed = urllib.parse.urlsplit(path)
        if parsed.scheme or parsed.netloc:
            if parsed.netloc != self.host:
                raise RegistryError(f"refusing to contact {parsed.netloc!r}")
            path = urllib.parse.urlunsplit(("", "", parsed.path, parsed.query, ""))
        all_headers = dict(self._auth_header() if authenticate else {})
        all_headers.update(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Length", str(len(body)))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.headers, data
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        authenticate: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send one request to the registry (``path`` like ``/v2/...``).

        Returns ``(status, headers, body)`` without raising on HTTP errors.
        Credentials are sent when the registry has auth and ``authenticate``.
        """
        return self._request(method, path, body, headers, authenticate=authenticate)

    def _expect(self, status: int, wanted: Iterable[int], what: str, body: bytes) -> None:
        if status not in tuple(wanted):
            raise RegistryError(f"{what}: HTTP {status}: {body[:500].decode('utf-8', 'replace')}")

    # -- API v2 helpers ----------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether the blob ``digest`` is present in ``repo`` (HEAD request)."""
        status, _, body = self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 404:
            return False
        self._expect(status, (200,), f"HEAD blob {repo}@{digest}", body)
        return True

    def push_blob(
        self,
        repo: str,
        data: bytes,
        method: str = "post-put",
        chunk_size: int = 1 << 20,
    ) -> str:
        """Upload ``data`` as a blob of ``repo`` and return its digest.

        ``method``:

        * ``"post-put"`` (default): ``POST`` opens an upload session, one
          ``PUT ?digest=`` carries the whole blob (monolithic upload);
        * ``"single-post"``: ``POST ?digest=`` with the body; registries that
          do not implement it (distribution 2.8 does not) answer by opening a
          session, which is then completed with a ``PUT``;
        * ``"chunked"``: ``POST``, ``PATCH`` per ``chunk_size`` bytes, empty
          ``PUT ?digest=``.

        Skips the upload if the registry already has the blob in ``repo``.
        """
        if method not in ("post-put", "single-post", "chunked"):
            raise ValueError(f"unknown upload method {method!r}")
        digest = sha256_digest(data)
        if self.blob_exists(repo, digest):
            return digest
        octets = {"Content-Type": "application/octet-stream"}
        if method == "single-post":
            status, resp_headers, body = self._request(
                "POST", f"/v2/{repo}/blobs/uploads/?digest={urllib.parse.quote(digest)}", data, octets
            )
        else:
            status, resp_headers, body = self._request("POST", f"/v2/{repo}/blobs/uploads/", b"")
        self._expect(status, (201, 202), f"start upload to {repo}", body)
        if status == 202:
            location = resp_headers.get("Location")
            if not location:
                raise RegistryError("upload session without Location header")
            final_body = data
            if method == "chunked":
                offset = 0
                while offset < len(data):
                    chunk = data[offset : offset + chunk_size]
                    headers = dict(octets, **{"Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
                    status, resp_headers, body = self._request("PATCH", location, chunk, headers)
                    self._expect(status, (202,), f"upload chunk to {repo}", body)
                    location = resp_headers.get("Location") or location
                    offset += len(chunk)
                final_body = b""
            sep = "&" if "?" in location else "?"
            status, resp_headers, body = self._request(
                "PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", final_body, octets
            )
            self._expect(status, (201,), f"complete upload to {repo}", body)
        returned = resp_headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RegistryError(f"registry stored blob as {returned}, expected {digest}")
        return digest

    def get_blob(self, repo: str, digest: str) -> bytes:
        """Download a blob and check that its content matches ``digest``."""
        status, _, body = self._request("GET", f"/v2/{repo}/blobs/{digest}")
        self._expect(status, (200,), f"GET blob {repo}@{digest}", body)
        if sha256_digest(body) != digest:
            raise RegistryError(f"blob {digest} came back with digest {sha256_digest(body)}")
        return body

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """``PUT`` a manifest (or index) under a tag or digest; return its digest."""
        digest = sha256_digest(body)
        status, headers, resp = self._request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body, {"Content-Type": media_type}
        )
        self._expect(status, (201,), f"PUT manifest {repo}:{reference}", resp)
        returned = headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RegistryError(f"registry stored manifest as {returned}, expected {digest}")
        return digest

    def get_manifest(
        self,
        repo: str,
        reference: str,
        accept: Union[str, Iterable[str], None] = None,
    ) -> tuple[str, bytes, str]:
        """Fetch a manifest; return ``(media_type, body, digest)``.

        ``accept`` is one media type or several (default: all Docker schema 2
        and OCI manifest and index types).  The digest is the registry's
        ``Docker-Content-Digest`` header, checked against the body.
        """
        if accept is None:
            accept = MANIFEST_MEDIA_TYPES
        elif isinstance(accept, str):
            accept = (accept,)
        status, headers, body = self._request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(accept)}
        )
        self._expect(status, (200,), f"GET manifest {repo}:{reference}", body)
        digest = sha256_digest(body)
        returned = headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RegistryError(f"manifest digest header {returned} != content digest {digest}")
        media_type = headers.get("Content-Type", "").split(";")[0].strip()
        return media_type, body, digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (deletion is enabled in the config)."""
        status, _, body = self._request("DELETE", f"/v2/{repo}/manifests/{digest}")
        self._expect(status, (202,), f"DELETE manifest {repo}@{digest}", body)

    def tags(self, repo: str) -> list[str]:
        """The tags of ``repo`` (``GET /v2/<repo>/tags/list``)."""
        status, _, body = self._request("GET", f"/v2/{repo}/tags/list")
        self._expect(status, (200,), f"GET tags of {repo}", body)
        return sorted(json.loads(body).get("tags") or [])


@atexit.register
def _stop_leftovers() -> None:
    for reg in list(_LIVE):
        reg.stop()


def bcrypt_hash(password: str, cost: int = 4, salt: Optional[str] = None) -> str:
    """An htpasswd-style bcrypt hash (``$2y$``), which docker-registry requires."""
    import bcrypt

    raw_salt = salt.encode() if salt else bcrypt.gensalt(rounds=cost, prefix=b"2b")
    return bcrypt.hashpw(password.encode(), raw_salt).decode().replace("$2b$", "$2y$", 1)
