"""The test registry and image builder against the real docker-registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from harness import images, registry as registry_module
from harness.registry import LocalRegistry, RegistryError, registry_available

# The ``registry`` and ``pushed_images`` fixtures come from tests/conftest.py
# (``from harness.fixtures import *``).

_unavailable = registry_available()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_unavailable is not None, reason=f"local registry unavailable: {_unavailable}"),
]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie or a recycled PID would not be docker-registry any more.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return state != "Z" and b"docker-registry" in cmd


def test_registry_answers(registry) -> None:
    status, headers, _ = registry.request("GET", "/v2/")
    assert status == 200
    assert headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")
    assert registry.url == f"http://{registry.host}"


def test_pushed_images_manifests(registry, pushed_images) -> None:
    assert set(pushed_images) >= {
        "busybox", "busybox-oci", "named-user", "web", "multi-layer", "busybox-multi",
    }
    for name, pushed in pushed_images.items():
        assert pushed.ref == f"{registry.host}/{pushed.repo}:{pushed.tag}"
        media_type, body, digest = registry.get_manifest(pushed.repo, pushed.tag, pushed.media_type)
        assert media_type == pushed.media_type, name
        assert digest == pushed.digest == pushed.image.manifest_digest, name
        assert body == pushed.image.manifest, name
        # also resolvable by digest
        assert registry.get_manifest(pushed.repo, pushed.digest)[2] == pushed.digest
    assert pushed_images["busybox"].media_type == images.MEDIA_TYPES["docker_manifest"]
    assert pushed_images["busybox-oci"].media_type == images.MEDIA_TYPES["oci_manifest"]
    assert pushed_images["busybox-multi"].media_type == images.MEDIA_TYPES["oci_index"]


def test_index_children(registry, pushed_images) -> None:
    pushed = pushed_images["busybox-multi"]
    _, body, _ = registry.get_manifest(pushed.repo, pushed.tag, images.MEDIA_TYPES["oci_index"])
    index = json.loads(body)
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    for desc in index["manifests"]:
        media_type, child, digest = registry.get_manifest(pushed.repo, desc["digest"], desc["mediaType"])
        assert (media_type, digest, len(child)) == (desc["mediaType"], desc["digest"], desc["size"])
        config_digest = json.loads(child)["config"]["digest"]
        config = json.loads(registry.get_blob(pushed.repo, config_digest))
        assert config["architecture"] == desc["platform"]["architecture"]


def test_docker_manifest_list(registry) -> None:
    index = images.busybox_multiarch_index("docker")
    digest = images.push_image(registry, "busybox-list", "v1", index)
    media_type, body, got = registry.get_manifest("busybox-list", "v1")
    assert (media_type, got, body) == (images.MEDIA_TYPES["docker_list"], digest, index.manifest)


def test_blob_round_trip(registry, pushed_images) -> None:
    pushed = pushed_images["multi-layer"]
    for layer in pushed.image.layers:
        blob = registry.get_blob(pushed.repo, layer.digest)
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == layer.diff_id
    config = json.loads(registry.get_blob(pushed.repo, pushed.image.config_digest))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in pushed.image.layers]


def test_zstd_layers_pushed(registry, pushed_images) -> None:
    pushed = pushed_images["multi-layer-zstd"]
    _, body, _ = registry.get_manifest(pushed.repo, pushed.tag)
    layers = json.loads(body)["layers"]
    assert [entry["mediaType"] for entry in layers[1:]] == [images.MEDIA_TYPES["oci_layer_zstd"]] * 2
    blob = registry.get_blob(pushed.repo, layers[2]["digest"])
    assert images.decompress(blob) == pushed.image.layers[2].tar


def test_pulled_busybox_layer_has_hard_links(registry, pushed_images) -> None:
    pushed = pushed_images["busybox"]
    _, body, _ = registry.get_manifest(pushed.repo, pushed.tag)
    layer_digest = json.loads(body)["layers"][0]["digest"]
    blob = registry.get_blob(pushed.repo, layer_digest)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        by_name = {m.name: m for m in tar.getmembers()}
    assert by_name["bin/busybox"].isreg()
    for applet in images.BUSYBOX_APPLETS:
        assert by_name[f"bin/{applet}"].islnk()
        assert by_name[f"bin/{applet}"].linkname == "bin/busybox"


@pytest.mark.parametrize("method", ["post-put", "single-post", "chunked"])
def test_upload_methods(registry, method: str) -> None:
    data = f"blob uploaded with {method}\n".encode() * 1000
    digest = registry.push_blob("scratch", data, method=method, chunk_size=4096)
    assert registry.blob_exists("scratch", digest)
    assert registry.get_blob("scratch", digest) == data


def test_push_and_delete(registry) -> None:
    image = images.build_image([images.Layer([images.File("x", "y")])], format="oci")
    pushed = images.push_image(registry, "scratch", "one", image)
    assert registry.tags("scratch") == ["one"]
    registry.delete_manifest("scratch", pushed)
    with pytest.raises(RegistryError):
        registry.get_manifest("scratch", pushed)


def test_registry_stop_leaves_nothing() -> None:
    reg = LocalRegistry()
    with reg:
        pid = reg.pid
        tmpdir = reg.tmpdir
        assert pid is not None and _pid_alive(pid)
        reg.push_blob("x", b"data")
    assert reg.pid is None
    assert not _pid_alive(pid)
    assert not os.path.exists(f"/proc/{pid}")
    assert tmpdir is not None and not os.path.exists(tmpdir)
    reg.stop()  # idempotent


def test_registry_stops_when_body_fails() -> None:
    reg = LocalRegistry()
    with pytest.raises(ZeroDivisionError):
        with reg:
            pid = reg.pid
            1 / 0
    assert pid is not None and not _pid_alive(pid)


def test_retries_when_port_is_taken(monkeypatch) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real = registry_module._free_port
        monkeypatch.setattr(registry_module, "_free_port", lambda: next(ports, None) or real())
        with LocalRegistry() as reg:
            assert reg.port != taken.getsockname()[1]
            assert reg.request("GET", "/v2/")[0] == 200


def test_basic_auth_mode() -> None:
    with LocalRegistry(auth=("tester", "s3cret")) as reg:
        status, headers, _ = reg.request("GET", "/v2/", authenticate=False)
        assert status == 401
        assert headers.get("WWW-Authenticate", "").startswith("Basic")
        assert reg.request("GET", "/v2/")[0] == 200
        digest = images.push_image(reg, "private", "latest", images.busybox_image())
        assert reg.get_manifest("private", "latest")[2] == digest
        reg.auth = ("tester", "wrong")
        assert reg.request("GET", "/v2/")[0] == 401
