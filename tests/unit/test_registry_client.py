"""RegistryClient against in-process fake registries on 127.0.0.1 (real HTTP, real treq)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor as real_reactor
from twisted.web.client import Agent, HTTPConnectionPool

from rktlet.errors import (
    DeadlineExceeded,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RuntimeFailure,
    Unavailable,
)
from rktlet.image.reference import parse
from rktlet.image.registry import Credentials, RegistryClient
from rktlet.image.registry.auth import parse_challenges as _parse_challenges
from harness.fake_registry import BlobHost, FakeRegistry, Servers, TokenServer, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = (OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.oci.image.index.v1+json")
LAYER = b"layer-bytes " * 5000


class Env:
    """Fake servers and clients of one test; everything is closed in teardown."""

    def __init__(self, tmp_path: Any) -> None:
        self.servers = Servers(real_reactor)
        self.clients: list[RegistryClient] = []
        self.pools: list[HTTPConnectionPool] = []
        self.tmp = tmp_path

    def client(self, **kwargs: Any) -> RegistryClient:
        kwargs.setdefault("is_insecure", lambda host: True)
        kwargs.setdefault("backoff", 0.01)
        kwargs.setdefault("idle_timeout", 5)
        kwargs.setdefault("connect_timeout", 2)
        reactor = kwargs.pop("reactor", real_reactor)
        client = RegistryClient(reactor, **kwargs)
        self.clients.append(client)
        return client

    def agent(self) -> Agent:
        pool = HTTPConnectionPool(real_reactor, persistent=True)
        self.pools.append(pool)
        return Agent(real_reactor, pool=pool)

    def registry(self, **kwargs: Any) -> tuple[FakeRegistry, Any]:
        fake = FakeRegistry()
        return fake, self.servers.listen(fake, **kwargs)

    def dest(self, name: str = "blob") -> str:
        return str(self.tmp / name)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for pool in self.pools:
            await pool.closeCachedConnections()
        await self.servers.close()


@pytest_twisted.async_yield_fixture
async def env(tmp_path):
    e = Env(tmp_path)
    yield e
    await e.close()


def image_setup(env: Env, repo: str = "test/app", **listen: Any):
    fake, served = env.registry(**listen)
    image = fake.add_image(repo, "v1", [LAYER, b"second layer"])
    ref = parse(f"{served.host}/{repo}:v1")
    return fake, served, image, ref


async def expect(d: defer.Deferred, exc_type: type[BaseException]) -> BaseException:
    try:
        await d
    except exc_type as exc:
        return exc
    raise AssertionError(f"expected {exc_type.__name__}")


# -- plain fetches ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_anonymous_manifest_and_blob(env):
    fake, served, image, ref = image_setup(env)
    client = env.client()
    manifest = await client.get_manifest(ref, ACCEPT)
    assert manifest.body == image["manifest"]
    assert manifest.digest == image["digest"]
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.source == f"http://{served.host}/v2/test/app/manifests/v1"
    assert fake.requests[-1].headers["accept"] == ", ".join(ACCEPT)
    assert not fake.requests[-1].authorization

    by_digest = await client.get_manifest(ref, ACCEPT, reference=image["digest"])
    assert by_digest.digest == image["digest"]

    seen: list[tuple[int, int | None]] = []
    dest = env.dest()
    size = await client.get_blob(ref, image["layers"][0], dest, progress=lambda n, t: seen.append((n, t)),
                                 expected_size=len(LAYER))
    assert size == len(LAYER)
    with open(dest, "rb") as f:
        assert sha256(f.read()) == image["layers"][0]
    assert seen[-1] == (len(LAYER), len(LAYER))
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    # The scheme probe was paid once, for the first request only, and the
    # pooled connection carried every request after it.
    assert served.tls_probes == 1
    assert served.connections_made == 2


@pytest_twisted.ensureDeferred
async def test_manifest_by_digest_in_reference_and_media_type_from_body(env):
    fake, served = env.registry()
    body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": []}).encode()
    digest = fake.add_manifest("app", "t", body, "application/json")
    client = env.client()
    manifest = await client.get_manifest(parse(f"{served.host}/app@{digest}"), ACCEPT)
    assert manifest.media_type == DOCKER_MANIFEST
    assert manifest.digest == digest
    assert fake.requests[-1].path == f"/v2/app/manifests/{digest}"


@pytest_twisted.ensureDeferred
async def test_manifest_digest_mismatch(env):
    fake, served, image, ref = image_setup(env)
    fake.manifest_override[("test/app", image["digest"])] = b'{"tampered": true}'
    client = env.client()
    exc = await expect(client.get_manifest(ref, ACCEPT, reference=image["digest"]), DigestMismatch)
    assert image["digest"] in str(exc) and sha256(b'{"tampered": true}') in str(exc)
    # By tag the served body is simply what the tag names (the header is only a hint).
    fake.manifest_override[("test/app", "v1")] = b'{"tampered": true}'
    manifest = await client.get_manifest(ref, ACCEPT)
    assert manifest.digest == sha256(b'{"tampered": true}')


@pytest_twisted.ensureDeferred
async def test_manifest_too_big(env):
    fake, served = env.registry()
    fake.add_manifest("big", "t", b"{" + b" " * (4 * 1024 * 1024) + b"}", OCI_MANIFEST)
    client = env.client()
    exc = await expect(client.get_manifest(parse(f"{served.host}/big:t"), ACCEPT), ResourceExhausted)
    assert "4194304" in str(exc)


# -- errors -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_not_found_carries_registry_code(env):
    fake, served, image, ref = image_setup(env)
    client = env.client()
    exc = await expect(client.get_manifest(parse(f"{served.host}/x:y"), ACCEPT), NotFound)
    assert str(exc) == f"image {served.host}/x:y not found: MANIFEST_UNKNOWN manifest unknown"
    missing = sha256(b"nothing")
    exc = await expect(client.get_blob(ref, missing, env.dest()), NotFound)
    assert "BLOB_UNKNOWN" in str(exc) and missing in str(exc)
    assert not os.path.exists(env.dest())


@pytest_twisted.ensureDeferred
async def test_corrupted_blob_is_rejected_and_removed(env):
    fake, served, image, ref = image_setup(env)
    digest = image["layers"][0]
    fake.corrupt.add(digest)
    client = env.client()
    dest = env.dest()
    exc = await expect(client.get_blob(ref, digest, dest), DigestMismatch)
    actual = sha256(bytes([LAYER[0] ^ 0xFF]) + LAYER[1:])
    assert digest in str(exc) and actual in str(exc)
    assert f"{served.host}/v2/test/app/blobs/{digest}" in str(exc)
    assert not os.path.exists(dest)


@pytest_twisted.ensureDeferred
async def test_blob_write_failure_names_the_file(env, monkeypatch):
    """Blobs are written in a thread; a failed write still fails the download
    with the file's name and the reason, and the file is removed."""
    import errno

    from rktlet.image.registry import writer as writer_module

    def disk_full(self: Any, batch: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_module.BlobWriter, "_write_batch", disk_full)
    fake, served, image, ref = image_setup(env)
    client = env.client()
    dest = env.dest()
    exc = await expect(client.get_blob(ref, image["layers"][0], dest), RuntimeFailure)
    assert f"cannot write blob {image['layers'][0]} of " in str(exc) and dest in str(exc)
    assert "No space left on device" in str(exc)
    assert not os.path.exists(dest)


@pytest_twisted.ensureDeferred
async def test_slow_blob_writes_pause_the_download(env, monkeypatch):
    """When the disk is behind, reading pauses (a small high-water mark here)
    and resumes once the queue is written; the blob arrives whole."""
    from rktlet.image.registry import writer as writer_module

    fake, served, image, ref = image_setup(env)
    pauses: list[str] = []
    real_init = writer_module.BlobWriter.__init__

    def small_queue(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self._high_water = 1024

    def counted(self: Any, pause: Any, resume: Any) -> None:
        self._pause = lambda: (pauses.append("pause"), pause())
        self._resume = lambda: (pauses.append("resume"), resume())

    monkeypatch.setattr(writer_module.BlobWriter, "__init__", small_queue)
    monkeypatch.setattr(writer_module.BlobWriter, "throttle_with", counted)
    real_write = writer_module.BlobWriter._write_batch

    def slow_write(self: Any, batch: list[bytes]) -> None:
        import time

        time.sleep(0.01)
        real_write(self, batch)

    monkeypatch.setattr(writer_module.BlobWriter, "_write_batch", slow_write)
    client = env.client()
    dest = env.dest()
    assert await client.get_blob(ref, image["layers"][0], dest) == len(LAYER)
    with open(dest, "rb") as f:
        assert sha256(f.read()) == image["layers"][0]
    assert "pause" in pauses and pauses.count("pause") == pauses.count("resume")


@pytest_twisted.ensureDeferred
async def test_wrong_blob_size(env):
    fake, served, image, ref = image_setup(env)
    client = env.client()
    exc = await expect(client.get_blob(ref, image["layers"][0], env.dest(), expected_size=10), DigestMismatch)
    assert "expected 10" in str(exc)
    assert not os.path.exists(env.dest())


@pytest_twisted.ensureDeferred
async def test_retries_5xx_then_succeeds(env):
    fake, served, image, ref = image_setup(env)
    client = env.client(retries=3)
    await client.get_manifest(ref, ACCEPT)  # learn the scheme first
    before = len(fake.requests)
    fake.failures = [500, 503]
    manifest = await client.get_manifest(ref, ACCEPT)
    assert manifest.digest == image["digest"]
    assert len(fake.requests) - before == 3


@pytest_twisted.ensureDeferred
async def test_retries_give_up_after_n_attempts(env):
    fake, served, image, ref = image_setup(env)
    client = env.client(retries=3)
    await client.get_manifest(ref, ACCEPT)
    before = len(fake.requests)
    fake.failures = [500, 429, 502, 500, 500]
    exc = await expect(client.get_manifest(ref, ACCEPT), Unavailable)
    assert "502" in str(exc) or "500" in str(exc)
    assert "injected failure" in str(exc)
    assert len(fake.requests) - before == 3


@pytest_twisted.ensureDeferred
async def test_4xx_is_not_retried(env):
    fake, served, image, ref = image_setup(env)
    client = env.client(retries=3)
    await client.get_manifest(ref, ACCEPT)
    before = len(fake.requests)
    fake.failures = [400, 400]
    exc = await expect(client.get_manifest(ref, ACCEPT), InvalidArgument)
    assert "NAME_INVALID" in str(exc)
    assert len(fake.requests) - before == 1
    fake.failures = [405]
    exc = await expect(client.get_manifest(ref, ACCEPT), RuntimeFailure)
    assert "405" in str(exc)


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_unavailable(env):
    port = env.servers.closed_port()
    client = env.client(retries=2)
    exc = await expect(client.get_manifest(parse(f"127.0.0.1:{port}/app:1"), ACCEPT), Unavailable)
    assert f"http://127.0.0.1:{port}/v2/app/manifests/1" in str(exc)
    assert "refused" in str(exc).lower() and "HTTPS" in str(exc)
    assert "gave up after 2 attempts" in str(exc)


# -- authentication -------------------------------------------------------------------------------


def bearer_setup(env: Env, **token_kwargs: Any):
    fake, served, image, ref = image_setup(env)
    tokens = TokenServer(**token_kwargs)
    token_served = env.servers.listen(tokens)
    fake.auth = "bearer"
    fake.token_server = tokens
    fake.token_realm = f"{token_served.url}/token"
    return fake, served, image, ref, tokens


@pytest_twisted.ensureDeferred
async def test_bearer_token_flow_with_basic_credentials_and_caching(env):
    fake, served, image, ref, tokens = bearer_setup(env, users={"alice": "s3cret"}, anonymous=False)
    client = env.client()
    creds = Credentials(username="alice", password="s3cret")
    manifest = await client.get_manifest(ref, ACCEPT, creds)
    assert manifest.digest == image["digest"]
    for digest in image["layers"] + [image["config"]]:
        await client.get_blob(ref, digest, env.dest(digest[7:15]), creds)
    assert len(tokens.requests) == 1
    req = tokens.requests[0]
    assert req.method == "GET"
    assert req.args == {"service": "fake-registry", "scope": "repository:test/app:pull"}
    assert req.authorization == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    # Only the very first registry request went out without the token.
    assert [r.authorization is None for r in fake.requests[-5:]] == [True, False, False, False, False]
    assert all(r.authorization == "Bearer tok-1" for r in fake.requests[-4:])


@pytest_twisted.ensureDeferred
async def test_bearer_token_anonymous(env):
    fake, served, image, ref, tokens = bearer_setup(env)
    client = env.client()
    await client.get_manifest(ref, ACCEPT)
    assert len(tokens.requests) == 1 and tokens.requests[0].authorization is None


@pytest_twisted.ensureDeferred
async def test_bearer_token_credentials_given_as_auth_field(env):
    fake, served, image, ref, tokens = bearer_setup(env, users={"bob": "pw:with:colons"}, anonymous=False)
    client = env.client()
    creds = Credentials.from_cri(SimpleNamespace(auth=base64.b64encode(b"bob:pw:with:colons").decode()))
    await client.get_manifest(ref, ACCEPT, creds)
    assert tokens.requests[0].authorization == "Basic " + base64.b64encode(b"bob:pw:with:colons").decode()


class ShiftedClock:
    """The real reactor, except that ``seconds()`` can be moved forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return real_reactor.seconds() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(real_reactor, name)


@pytest_twisted.ensureDeferred
async def test_bearer_token_expiry(env):
    fake, served, image, ref, tokens = bearer_setup(env, expires_in=60)
    clock = ShiftedClock()
    client = env.client(reactor=clock, agent=env.agent())
    await client.get_manifest(ref, ACCEPT)
    clock.offset = 30
    await client.get_manifest(ref, ACCEPT)
    assert len(tokens.requests) == 1
    clock.offset = 61
    await client.get_manifest(ref, ACCEPT)
    assert len(tokens.requests) == 2
    assert fake.requests[-1].authorization == "Bearer tok-2"


@pytest_twisted.ensureDeferred
async def test_token_without_expires_in_defaults_to_60s(env):
    fake, served, image, ref, tokens = bearer_setup(env, expires_in=None)
    clock = ShiftedClock()
    client = env.client(reactor=clock, agent=env.agent())
    await client.get_manifest(ref, ACCEPT)
    clock.offset = 40
    await client.get_manifest(ref, ACCEPT)
    assert len(tokens.requests) == 1
    clock.offset = 61
    await client.get_manifest(ref, ACCEPT)
    assert len(tokens.requests) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_fetches_share_one_token_request(env):
    fake, served, image, ref, tokens = bearer_setup(env)
    client = env.client()
    await client.get_manifest(ref, ACCEPT)  # learn scheme and challenge
    other = parse(f"{served.host}/test/other:v1")
    fake.add_image("test/other", "v1", [b"x"])
    results = await defer.gatherResults([client.get_manifest(other, ACCEPT) for _ in range(5)])
    assert len(results) == 5
    assert [r.args["scope"] for r in tokens.requests] == ["repository:test/app:pull", "repository:test/other:pull"]


@pytest_twisted.ensureDeferred
async def test_identity_token_is_exchanged_by_post(env):
    fake, served, image, ref, tokens = bearer_setup(env, refresh_tokens={"refresh-me"}, anonymous=False)
    client = env.client()
    manifest = await client.get_manifest(ref, ACCEPT, Credentials(identity_token="refresh-me"))
    assert manifest.digest == image["digest"]
    assert len(tokens.requests) == 1
    req = tokens.requests[0]
    assert req.method == "POST"
    assert req.args == {
        "grant_type": "refresh_token",
        "service": "fake-registry",
        "scope": "repository:test/app:pull",
        "client_id": "rktlet",
        "refresh_token": "refresh-me",
    }
    assert fake.requests[-1].authorization == "Bearer tok-1"


@pytest_twisted.ensureDeferred
async def test_identity_token_refused(env):
    fake, served, image, ref, tokens = bearer_setup(env, refresh_tokens={"refresh-me"}, anonymous=False)
    client = env.client()
    exc = await expect(client.get_manifest(ref, ACCEPT, Credentials(identity_token="stale")), PermissionDenied)
    assert "refresh token is not valid" in str(exc)
    assert "refresh-me" not in str(exc) and "stale" not in str(exc)


@pytest_twisted.ensureDeferred
async def test_registry_token_is_sent_directly(env):
    fake, served, image, ref, tokens = bearer_setup(env, anonymous=False)
    tokens.issued["given-by-kubelet"] = "repository:test/app:pull"
    client = env.client()
    creds = Credentials(registry_token="given-by-kubelet")
    await client.get_manifest(ref, ACCEPT, creds)
    await client.get_blob(ref, image["config"], env.dest(), creds)
    assert tokens.requests == []
    assert all(r.authorization == "Bearer given-by-kubelet" for r in fake.requests)
    exc = await expect(client.get_manifest(ref, ACCEPT, Credentials(registry_token="bogus")), PermissionDenied)
    assert "UNAUTHORIZED" in str(exc)


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_for_token(env):
    fake, served, image, ref, tokens = bearer_setup(env, users={"alice": "s3cret"}, anonymous=False)
    client = env.client()
    exc = await expect(client.get_manifest(ref, ACCEPT, Credentials(username="alice", password="nope")),
                       PermissionDenied)
    message = str(exc)
    assert served.host in message and "test/app" in message
    assert "incorrect username or password" in message
    assert "nope" not in message
    exc = await expect(client.get_manifest(ref, ACCEPT), PermissionDenied)
    assert "authentication required" in str(exc)


@pytest_twisted.ensureDeferred
async def test_basic_auth_challenge(env):
    fake, served, image, ref = image_setup(env)
    fake.auth = "basic"
    fake.users = {"u": "p"}
    client = env.client()
    creds = Credentials(username="u", password="p")
    await client.get_manifest(ref, ACCEPT, creds)
    assert [r.authorization for r in fake.requests[-2:]] == [None, "Basic " + base64.b64encode(b"u:p").decode()]
    # Known now: the next request authenticates up front.
    count = len(fake.requests)
    await client.get_blob(ref, image["config"], env.dest(), creds)
    assert len(fake.requests) == count + 1 and fake.requests[-1].authorization.startswith("Basic ")


@pytest_twisted.ensureDeferred
async def test_basic_auth_wrong_or_missing_credentials(env):
    fake, served, image, ref = image_setup(env)
    fake.auth = "basic"
    fake.users = {"u": "p"}
    client = env.client()
    exc = await expect(client.get_manifest(ref, ACCEPT, Credentials(username="u", password="bad")), PermissionDenied)
    assert served.host in str(exc) and "test/app" in str(exc)
    assert "UNAUTHORIZED authentication required" in str(exc)
    exc = await expect(client.get_manifest(ref, ACCEPT), PermissionDenied)
    assert "none were given" in str(exc)


@pytest_twisted.ensureDeferred
async def test_credentials_never_go_to_a_plain_http_token_realm_of_a_secure_host(env):
    fake, served, image, ref, tokens = bearer_setup(env, users={"alice": "s3cret"}, anonymous=False)
    token_host = fake.token_realm.split("/")[2]
    client = env.client(is_insecure=lambda host: host != token_host)
    exc = await expect(client.get_manifest(ref, ACCEPT, Credentials(username="alice", password="s3cret")),
                       PermissionDenied)
    assert "plain-HTTP token realm" in str(exc) and "s3cret" not in str(exc)
    assert tokens.requests == []


@pytest_twisted.ensureDeferred
async def test_a_refresh_token_post_is_not_resent_to_another_host(env):
    fake, served, image, ref, tokens = bearer_setup(env, refresh_tokens={"refresh-me"}, anonymous=False)
    elsewhere = TokenServer(refresh_tokens={"refresh-me"})
    tokens.redirect_to = (307, env.servers.listen(elsewhere).url)
    client = env.client()
    exc = await expect(client.get_manifest(ref, ACCEPT, Credentials(identity_token="refresh-me")), PermissionDenied)
    assert "carrying credentials" in str(exc)
    assert len(tokens.requests) == 1 and elsewhere.requests == []


# -- redirects ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redirect_to_other_host_drops_authorization(env):
    fake, served, image, ref = image_setup(env)
    fake.auth = "basic"
    fake.users = {"u": "p"}
    storage = BlobHost()
    storage_served = env.servers.listen(storage)
    digest = image["layers"][0]
    storage.blobs[digest] = LAYER
    fake.redirect_blobs = storage_served.url
    client = env.client()
    size = await client.get_blob(ref, digest, env.dest(), Credentials(username="u", password="p"))
    assert size == len(LAYER)
    assert fake.requests[-1].authorization.startswith("Basic ")
    assert len(storage.requests) == 1 and storage.requests[0].authorization is None


# -- mirrors ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mirror_is_tried_first(env):
    upstream, up_served, image, ref = image_setup(env)
    mirror, mirror_served = env.registry()
    mirror.manifests = dict(upstream.manifests)
    mirror.blobs = dict(upstream.blobs)
    client = env.client(mirrors={ref.domain: [mirror_served.url + "/"]})
    manifest = await client.get_manifest(ref, ACCEPT)
    assert manifest.source == f"{mirror_served.url}/v2/test/app/manifests/v1"
    await client.get_blob(ref, image["config"], env.dest())
    assert upstream.requests == []
    assert [r.path for r in mirror.requests] == ["/v2/test/app/manifests/v1", f"/v2/test/app/blobs/{image['config']}"]


@pytest_twisted.ensureDeferred
async def test_mirror_falls_through_on_404_refused_and_corruption(env):
    upstream, up_served, image, ref = image_setup(env)
    empty, empty_served = env.registry()
    bad, bad_served = env.registry()
    bad.blobs = dict(upstream.blobs)
    bad.corrupt = set(image["layers"])
    dead = f"http://127.0.0.1:{env.servers.closed_port()}"
    mirrors = {ref.domain: [dead, empty_served.url, bad_served.url]}
    client = env.client(mirrors=mirrors, retries=1)
    manifest = await client.get_manifest(ref, ACCEPT)
    assert manifest.source.startswith(f"http://{up_served.host}/")
    assert [r.path for r in empty.requests] == ["/v2/test/app/manifests/v1"]
    dest = env.dest()
    size = await client.get_blob(ref, image["layers"][0], dest)
    assert size == len(LAYER)
    with open(dest, "rb") as f:
        assert f.read() == LAYER
    assert len(bad.requests) == 2  # manifest (404) and the corrupted blob


@pytest_twisted.ensureDeferred
async def test_mirrors_get_no_credentials(env):
    upstream, up_served, image, ref = image_setup(env)
    mirror, mirror_served = env.registry()
    client = env.client(mirrors={ref.domain: [mirror_served.url]})
    await client.get_manifest(ref, ACCEPT, Credentials(registry_token="secret"))
    assert mirror.requests[0].authorization is None
    assert upstream.requests[-1].authorization == "Bearer secret"


# -- transport -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_insecure_host_falls_back_to_http_once(env):
    fake, served, image, ref = image_setup(env)
    client = env.client()
    for _ in range(3):
        manifest = await client.get_manifest(ref, ACCEPT)
        assert manifest.source.startswith("http://")
    await client.get_blob(ref, image["config"], env.dest())
    assert served.tls_probes == 1


@pytest_twisted.ensureDeferred
async def test_insecure_probe_of_silent_plain_server_is_quick(env):
    # A plain-HTTP server that waits silently on a ClientHello (as twisted.web
    # does) must not hold the HTTPS probe until the idle timeout.
    fake, served, image, ref = image_setup(env, reject_tls=False)
    client = env.client(connect_timeout=0.3, idle_timeout=20)
    start = real_reactor.seconds()
    manifest = await client.get_manifest(ref, ACCEPT)
    assert manifest.source.startswith("http://")
    assert real_reactor.seconds() - start < 3


@pytest_twisted.ensureDeferred
async def test_secure_host_never_falls_back_to_http(env):
    fake, served, image, ref = image_setup(env)
    client = env.client(is_insecure=lambda host: False, retries=1)
    exc = await expect(client.get_manifest(ref, ACCEPT), Unavailable)
    assert f"https://{served.host}/" in str(exc)
    assert all(r.path != "/v2/test/app/manifests/v1" for r in fake.requests)


@pytest_twisted.ensureDeferred
async def test_self_signed_https_rejected_unless_insecure(env):
    fake, served, image, ref = image_setup(env, tls=True)
    strict = env.client(is_insecure=lambda host: False, retries=3)
    exc = await expect(strict.get_manifest(ref, ACCEPT), Unavailable)
    assert "certificate" in str(exc).lower()
    assert f"https://{served.host}/v2/test/app/manifests/v1" in str(exc)
    assert fake.requests == []
    # Insecure: HTTPS without verification is used (no plain-HTTP fallback needed).
    lax = env.client(is_insecure=lambda host: host == served.host)
    manifest = await lax.get_manifest(ref, ACCEPT)
    assert manifest.source.startswith("https://")
    await lax.get_blob(ref, image["config"], env.dest())


@pytest_twisted.ensureDeferred
async def test_cancel_get_blob_removes_partial_file(env):
    fake, served, image, ref = image_setup(env)
    digest = image["layers"][0]
    fake.stall_blobs[digest] = 1000
    client = env.client()
    dest = env.dest()
    got_data: defer.Deferred[None] = defer.Deferred()

    def progress(done: int, total: int | None) -> None:
        assert total == len(LAYER)
        if not got_data.called:
            got_data.callback(None)

    d = client.get_blob(ref, digest, dest, progress=progress)
    await got_data
    assert os.path.exists(dest)
    d.cancel()
    await expect(d, defer.CancelledError)
    assert not os.path.exists(dest)
    # The connection was dropped, not left hanging on the server.
    for _ in range(50):
        if fake.stalled_closed == [True]:
            break
        await deferLater(0.01)
    assert fake.stalled_closed == [True]


@pytest_twisted.ensureDeferred
async def test_idle_timeout_mid_body(env):
    fake, served, image, ref = image_setup(env)
    digest = image["layers"][0]
    fake.stall_blobs[digest] = 1000
    client = env.client(idle_timeout=0.3, retries=2)
    dest = env.dest()
    exc = await expect(client.get_blob(ref, digest, dest), DeadlineExceeded)
    assert "no data" in str(exc) and digest in str(exc)
    assert not os.path.exists(dest)
    assert len(fake.stalled) == 2


def deferLater(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    real_reactor.callLater(seconds, d.callback, None)
    return d


# -- pure helpers -----------------------------------------------------------------------------------


def test_credentials_from_cri() -> None:
    assert Credentials.from_cri(None) is None
    assert Credentials.from_cri(SimpleNamespace(username="", password="", auth="", identity_token="",
                                                server_address="x", registry_token="")) is None
    creds = Credentials.from_cri(SimpleNamespace(username="u", password="p"))
    assert creds == Credentials(username="u", password="p")
    assert creds.basic() == ("u", "p")
    assert "p" not in repr(Credentials(password="hunter2", auth="xyz")).replace("password", "")
    assert "hunter2" not in repr(Credentials(password="hunter2"))
    with pytest.raises(InvalidArgument):
        Credentials(auth="!!!").basic()
    assert Credentials(auth=base64.b64encode(b"a:b:c").decode()).basic() == ("a", "b:c")
    assert Credentials(identity_token="t").basic() is None


def test_parse_challenges() -> None:
    [c] = _parse_challenges(['Bearer realm="https://auth.example/token",service="reg",'
                             'scope="repository:a/b:pull,push"'])
    assert c.scheme == "bearer"
    assert (c.get("realm"), c.get("service"), c.get("scope")) == (
        "https://auth.example/token", "reg", "repository:a/b:pull,push")
    both = _parse_challenges(['Basic realm="x"', 'Bearer realm="y"'])
    assert [c.scheme for c in both] == ["basic", "bearer"]
    [d] = _parse_challenges(['Basic realm="with \\"quote\\""'])
    assert d.get("realm") == 'with "quote"'


def test_digest_of_layer_constant() -> None:
    assert sha256(LAYER) == "sha256:" + hashlib.sha256(LAYER).hexdigest()
