"""RegistryClient against the real docker-registry (distribution) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.config import Config
from rktlet.errors import NotFound, PermissionDenied
from rktlet.image.reference import parse
from rktlet.image.registry import Credentials, RegistryClient
from harness.images import MEDIA_TYPES
from harness.registry import LocalRegistry, registry_available

_unavailable = registry_available()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_unavailable is not None, reason=f"local registry unavailable: {_unavailable}"),
]

ALL_TYPES = (
    MEDIA_TYPES["docker_manifest"],
    MEDIA_TYPES["docker_list"],
    MEDIA_TYPES["oci_manifest"],
    MEDIA_TYPES["oci_index"],
)


def file_digest(path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


@pytest_twisted.async_yield_fixture
async def client():
    # The daemon's own rule: 127.0.0.1 is always an insecure (plain HTTP) registry.
    c = RegistryClient(reactor, Config().is_insecure_registry, idle_timeout=10, connect_timeout=5)
    yield c
    await c.close()


@pytest_twisted.ensureDeferred
async def test_docker_manifest_by_tag_and_digest(client, pushed_images):
    pushed = pushed_images["busybox"]
    ref = parse(pushed.ref)
    manifest = await client.get_manifest(ref, ALL_TYPES)
    assert manifest.media_type == MEDIA_TYPES["docker_manifest"]
    assert manifest.digest == pushed.digest
    assert manifest.body == pushed.image.manifest
    assert manifest.source == f"http://{ref.domain}/v2/busybox/manifests/latest"
    by_digest = await client.get_manifest(parse(pushed.ref_by_digest), ALL_TYPES)
    assert (by_digest.digest, by_digest.body) == (pushed.digest, pushed.image.manifest)


@pytest_twisted.ensureDeferred
async def test_oci_manifest(client, pushed_images):
    pushed = pushed_images["busybox-oci"]
    manifest = await client.get_manifest(parse(pushed.ref), (MEDIA_TYPES["oci_manifest"],))
    assert manifest.media_type == MEDIA_TYPES["oci_manifest"]
    assert manifest.digest == pushed.digest


@pytest_twisted.ensureDeferred
async def test_index_and_children(client, pushed_images):
    pushed = pushed_images["busybox-multi"]
    ref = parse(pushed.ref)
    index = await client.get_manifest(ref, ALL_TYPES)
    assert index.media_type == MEDIA_TYPES["oci_index"]
    assert index.digest == pushed.digest
    for desc in json.loads(index.body)["manifests"]:
        child = await client.get_manifest(ref, ALL_TYPES, reference=desc["digest"])
        assert (child.media_type, child.digest, len(child.body)) == (desc["mediaType"], desc["digest"], desc["size"])


@pytest_twisted.ensureDeferred
async def test_every_blob_of_busybox(client, pushed_images, tmp_path):
    pushed = pushed_images["busybox"]
    ref = parse(pushed.ref)
    image = pushed.image
    wanted = [(layer.digest, len(layer.blob)) for layer in image.layers] + [(image.config_digest, len(image.config))]
    for digest, size in wanted:
        dest = tmp_path / digest.replace(":", "-")
        got = await client.get_blob(ref, digest, str(dest), expected_size=size)
        assert got == size
        assert file_digest(dest) == digest


@pytest_twisted.ensureDeferred
async def test_unknown_tag_is_not_found(client, pushed_images):
    ref = parse(pushed_images["busybox"].ref.rsplit(":", 1)[0] + ":no-such-tag")
    with pytest.raises(NotFound, match="MANIFEST_UNKNOWN"):
        await client.get_manifest(ref, ALL_TYPES)


@pytest_twisted.ensureDeferred
async def test_basic_auth_registry(client, tmp_path):
    reg = LocalRegistry(auth=("user", "pass"))
    try:
        reg.start()
        data = b"a blob behind basic auth\n"
        digest = reg.push_blob("private/app", data)
        ref = parse(reg.ref("private/app", "latest"))
        dest = tmp_path / "blob"
        got = await client.get_blob(ref, digest, str(dest), Credentials(username="user", password="pass"))
        assert got == len(data) and dest.read_bytes() == data
        with pytest.raises(PermissionDenied) as wrong:
            await client.get_blob(ref, digest, str(tmp_path / "wrong"), Credentials(username="user", password="bad"))
        assert reg.host in str(wrong.value) and "private/app" in str(wrong.value)
        assert "UNAUTHORIZED" in str(wrong.value)
        assert not (tmp_path / "wrong").exists()
        with pytest.raises(PermissionDenied, match="none were given"):
            await client.get_blob(ref, digest, str(tmp_path / "anon"))
    finally:
        reg.stop()
