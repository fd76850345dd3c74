"""Unit tests of the test-image builder (harness/images.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest
import zstandard

from harness import images
from harness.images import (
    BUSYBOX_APPLETS,
    MEDIA_TYPES,
    Dir,
    File,
    HardLink,
    Layer,
    OpaqueDir,
    Symlink,
    Whiteout,
    build_image,
    build_index,
)

needs_busybox = pytest.mark.skipif(not os.path.exists(images.BUSYBOX_PATH), reason="no /bin/busybox")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_entries() -> list:
    return [
        File("etc/hello", "hello\n", mode=0o600, uid=10, gid=20),
        Dir("var/empty", mode=0o711),
        Symlink("etc/link", "hello"),
        HardLink("etc/hard", "etc/hello"),
        Whiteout("etc/gone"),
        OpaqueDir("opt/app"),
    ]


def members(layer: Layer) -> dict[str, tarfile.TarInfo]:
    return {m.name.rstrip("/"): m for m in layer.members()}


def test_layer_is_deterministic() -> None:
    a = Layer(small_entries())
    b = Layer(list(reversed(small_entries())))
    assert a.tar == b.tar
    assert a.blob == b.blob
    assert a.digest == b.digest and a.diff_id == b.diff_id


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_digest_and_diff_id(compression: str) -> None:
    layer = Layer(small_entries(), compression=compression)
    assert layer.diff_id == sha(layer.tar)
    assert layer.digest == sha(layer.blob)
    assert layer.size == len(layer.blob)
    if compression == "gzip":
        assert layer.blob[:2] == b"\x1f\x8b"
        assert gzip.decompress(layer.blob) == layer.tar
        assert layer.digest != layer.diff_id
    elif compression == "zstd":
        assert layer.blob[:4] == b"\x28\xb5\x2f\xfd"
        assert zstandard.ZstdDecompressor().decompress(layer.blob) == layer.tar
        assert layer.digest != layer.diff_id
    else:
        assert layer.blob == layer.tar
        assert layer.digest == layer.diff_id
    assert images.decompress(layer.blob) == layer.tar


@pytest.mark.parametrize(
    "fmt,compression,media_type",
    [
        ("docker", "gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("docker", "none", "application/vnd.docker.image.rootfs.diff.tar"),
        ("oci", "gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("oci", "zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("oci", "none", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_layer_media_types(fmt: str, compression: str, media_type: str) -> None:
    layer = Layer([File("a", "a")], compression=compression)
    assert layer.for_format(fmt).media_type == media_type
    image = build_image([layer], format=fmt)
    assert image.manifest_json["layers"][0]["mediaType"] == media_type


def test_entries_in_tar() -> None:
    layer = Layer(small_entries())
    m = members(layer)
    hello = m["etc/hello"]
    assert hello.isreg() and hello.mode == 0o600 and (hello.uid, hello.gid) == (10, 20)
    assert hello.mtime == images.LAYER_MTIME and hello.uname == "" and hello.gname == ""
    assert m["var/empty"].isdir() and m["var/empty"].mode == 0o711
    assert m["var"].isdir()  # implicit parent
    assert m["etc/link"].issym() and m["etc/link"].linkname == "hello"
    assert m["etc/hard"].islnk() and m["etc/hard"].linkname == "etc/hello"
    # whiteout and opaque markers
    assert m["etc/.wh.gone"].isreg() and m["etc/.wh.gone"].size == 0
    assert "etc/gone" not in m
    assert m["opt/app"].isdir()
    assert m["opt/app/.wh..wh..opq"].isreg()
    # parents come before children, hard links after their targets
    names = layer.names()
    for name in names:
        parent = os.path.dirname(name)
        if parent:
            assert names.index(parent) < names.index(name)
    assert names.index("etc/hello") < names.index("etc/hard")


def test_tar_extracts(tmp_path) -> None:
    layer = Layer(small_entries())
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:
        # The tar is the test's own: trust it fully (extraction filters came
        # with Python 3.11.4; older 3.11 trusts every archive anyway).
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(tmp_path, filter="fully_trusted")
        else:
            tar.extractall(tmp_path)
    assert (tmp_path / "etc/hello").read_text() == "hello\n"
    assert os.path.samefile(tmp_path / "etc/hard", tmp_path / "etc/hello")
    assert os.readlink(tmp_path / "etc/link") == "hello"


def test_bad_entries() -> None:
    with pytest.raises(ValueError):
        Layer([File("a"), File("/a")])
    with pytest.raises(ValueError):
        Layer([HardLink("b", "missing")])
    with pytest.raises(ValueError):
        Layer([File("a")], compression="lz4")


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_manifest_and_config(fmt: str) -> None:
    l1 = Layer([File("a", "1")])
    l2 = Layer([File("b", "2")], compression="zstd" if fmt == "oci" else "gzip")
    image = build_image(
        [l1, l2],
        format=fmt,
        entrypoint=["/bin/sh", "-c"],
        cmd=["echo hi"],
        env=["A=1"],
        user="1000:1000",
        working_dir="/w",
        exposed_ports={"80/tcp": {}},
        labels={"k": "v"},
        stop_signal="SIGINT",
        architecture="arm64",
        variant="v8",
    )
    manifest = json.loads(image.manifest)
    config = json.loads(image.config)
    assert manifest["schemaVersion"] == 2
    expected_types = {
        "docker": (MEDIA_TYPES["docker_manifest"], MEDIA_TYPES["docker_config"]),
        "oci": (MEDIA_TYPES["oci_manifest"], MEDIA_TYPES["oci_config"]),
    }[fmt]
    assert (manifest["mediaType"], manifest["config"]["mediaType"]) == expected_types
    assert image.manifest_media_type == expected_types[0]
    assert manifest["config"]["digest"] == image.config_digest == image.image_id == sha(image.config)
    assert manifest["config"]["size"] == len(image.config)
    assert image.manifest_digest == sha(image.manifest)
    for desc, layer in zip(manifest["layers"], [l1, l2], strict=True):
        assert desc["digest"] == layer.digest == sha(layer.blob)
        assert desc["size"] == len(layer.blob)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [l1.diff_id, l2.diff_id]}
    assert [h.get("empty_layer", False) for h in config["history"]] == [False, False, True]
    assert (config["architecture"], config["os"], config["variant"]) == ("arm64", "linux", "v8")
    assert config["config"] == {
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "Env": ["A=1"],
        "User": "1000:1000",
        "WorkingDir": "/w",
        "ExposedPorts": {"80/tcp": {}},
        "Labels": {"k": "v"},
        "StopSignal": "SIGINT",
    }
    assert image.platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert dict(image.blobs()) == {l1.digest: l1.blob, l2.digest: l2.blob, image.config_digest: image.config}


def test_default_architecture_is_host() -> None:
    image = build_image([Layer([File("a")])])
    assert image.config_json["architecture"] == images.host_architecture()
    assert image.config_json["os"] == "linux"


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_index(fmt: str) -> None:
    layer = Layer([File("a")])
    amd = build_image([layer], format=fmt, architecture="amd64")
    arm = build_image([layer], format=fmt, architecture="arm64", variant="v8")
    index = build_index({"linux/amd64": amd, "linux/arm64/v8": arm}, format=fmt)
    body = json.loads(index.manifest)
    assert index.digest == sha(index.manifest)
    assert body["mediaType"] == index.media_type == (
        MEDIA_TYPES["docker_list"] if fmt == "docker" else MEDIA_TYPES["oci_index"]
    )
    assert body["manifests"] == [
        {"mediaType": amd.manifest_media_type, "size": len(amd.manifest), "digest": amd.manifest_digest,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": arm.manifest_media_type, "size": len(arm.manifest), "digest": arm.manifest_digest,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
    ]
    assert index.image_for("arm64") is arm
    with pytest.raises(ValueError):
        build_index({"linux/s390x": amd}, format=fmt)


@needs_busybox
def test_busybox_layer_hard_links() -> None:
    layer = images.busybox_layer()
    m = members(layer)
    assert m["bin/busybox"].isreg() and m["bin/busybox"].mode == 0o755
    with open(images.BUSYBOX_PATH, "rb") as f:
        assert layer.tar.count(f.read()[:4096]) == 1  # stored once
    for applet in BUSYBOX_APPLETS:
        member = m[f"bin/{applet}"]
        assert member.islnk(), applet
        assert member.linkname == "bin/busybox"
    assert m["tmp"].mode == 0o1777
    for d in ("usr/bin", "etc", "root", "home", "proc", "sys", "dev"):
        assert m[d].isdir(), d


@needs_busybox
def test_ready_made_images_are_deterministic() -> None:
    first = images.busybox_layer().digest
    images.busybox_layer.cache_clear()
    images.busybox_image.cache_clear()
    assert images.busybox_layer().digest == first
    assert images.busybox_image("oci").manifest_digest == images.busybox_image("oci").manifest_digest


@needs_busybox
def test_ready_made_images() -> None:
    assert images.busybox_image().config_json["config"]["Cmd"] == ["sh"]
    named = images.named_user_image()
    assert named.config_json["config"]["User"] == "app"
    passwd = members(named.layers[1])
    assert passwd["home/app"].uid == 1234 and passwd["home/app"].gid == 1234
    web = images.web_image("oci")
    assert web.config_json["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert web.config_json["config"]["Entrypoint"] == ["httpd", "-f", "-p", "80", "-h", "/www"]
    multi = images.multi_layer_image("oci", "zstd")
    assert len(multi.layers) == 3
    third = multi.layers[2].names()
    assert "data/.wh.remove-me.txt" in third
    assert "data/olddir/.wh..wh..opq" in third
    assert multi.layers[2].media_type == MEDIA_TYPES["oci_layer_zstd"]
    index = images.busybox_multiarch_index("oci")
    assert [i.platform["architecture"] for i in index.images] == ["amd64", "arm64"]
    assert len({i.manifest_digest for i in index.images}) == 2
