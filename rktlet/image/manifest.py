"""Image manifests, indexes and configs: parsing, validation, platform choice.

Docker schema 2 manifests and manifest lists and OCI manifests and indexes
are understood; Docker schema 1 is refused, as containerd and CRI-O do.
"""

from __future__ import annotations

import hashlib
import json
import platform as platform_module
from dataclasses import dataclass, field
from typing import Any

from rktlet.errors import InvalidArgument, NotFound
from rktlet.image.reference import validate_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws")
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What a pull asks the registry for, most wanted first.
ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

# Layer media types and the compression of their blobs.
LAYER_COMPRESSION = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
}


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of *data*."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Platform:
    """An os/architecture/variant triple as indexes describe them."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# uname machine → (GOARCH, default variant)
_MACHINES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "i686": ("386", ""),
}


def host_platform() -> Platform:
    """The platform of this machine, in the registry's vocabulary."""
    machine = platform_module.machine()
    arch, variant = _MACHINES.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform image manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index (OCI index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def _descriptor(doc: Any, where: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: descriptor is not an object")
    digest = doc.get("digest")
    size = doc.get("size")
    if not isinstance(digest, str):
        raise InvalidArgument(f"{where}: descriptor has no digest")
    validate_digest(digest)
    if not isinstance(size, int) or size < 0:
        raise InvalidArgument(f"{where}: descriptor {digest} has no valid size")
    plat = doc.get("platform")
    parsed_platform = None
    if isinstance(plat, dict):
        parsed_platform = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")), str(plat.get("variant", "")))
    urls = doc.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidArgument(f"{where}: descriptor {digest} urls is not a list of strings")
    return Descriptor(str(doc.get("mediaType", "")), digest, size, parsed_platform, tuple(urls))


def parse_manifest(media_type: str, body: bytes, where: str) -> ImageManifest | ImageIndex:
    """Parse a manifest or index fetched from *where* (named in errors).

    :param media_type: the Content-Type the registry sent (may be empty; the
        body's ``mediaType`` is used then).
    """
    if media_type in DOCKER_SCHEMA1:
        raise InvalidArgument(f"{where}: Docker schema 1 manifests are not supported (push the image again with a current client)")
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidArgument(f"{where}: manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: manifest is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise InvalidArgument(f"{where}: Docker schema 1 manifests are not supported (push the image again with a current client)")
    kind = doc.get("mediaType") or media_type
    if kind not in INDEX_TYPES + MANIFEST_TYPES:
        # Some registries send a generic Content-Type: tell by the shape.
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "config" in doc else kind
    if kind in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument(f"{where}: index has no 'manifests' list")
        return ImageIndex(kind, tuple(_descriptor(m, where) for m in entries))
    if kind in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument(f"{where}: manifest has no 'layers' list")
        parsed = tuple(_descriptor(layer, where) for layer in layers)
        for layer in parsed:
            if layer.media_type not in LAYER_COMPRESSION:
                raise InvalidArgument(f"{where}: layer {layer.digest} has unsupported media type {layer.media_type!r}")
        return ImageManifest(kind, _descriptor(doc.get("config"), where), parsed)
    raise InvalidArgument(f"{where}: unsupported manifest media type {kind!r}")


def _platform_matches(candidate: Platform, want: Platform) -> bool:
    if candidate.os != want.os or candidate.architecture != want.architecture:
        return False
    if want.architecture == "arm64":  # v8 is the only arm64 variant in use; absent means v8
        return candidate.variant in ("", "v8")
    return not want.variant or not candidate.variant or candidate.variant == want.variant


def select_platform(index: ImageIndex, want: Platform, where: str) -> Descriptor:
    """The index entry for platform *want*.

    :raises NotFound: no entry fits; the message lists those available.
    """
    for entry in index.manifests:
        if entry.platform is not None and _platform_matches(entry.platform, want):
            return entry
    available = ", ".join(str(m.platform) for m in index.manifests if m.platform) or "none"
    raise NotFound(f"{where}: no image for platform {want} in the index (available: {available})")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config rktlet uses.

    :ivar raw: the whole config document (shown by ImageStatus verbose).
    """

    diff_ids: tuple[str, ...]
    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _object(value: Any, where: str, field: str) -> dict[str, Any]:
    """An optional JSON object of an image config (absent or null: empty);
    any other type is the image's fault, named."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: image config {field} is a {type(value).__name__}, not an object")
    return value


def parse_config(body: bytes, where: str) -> ImageConfig:
    """Parse an image config blob."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise InvalidArgument(f"{where}: image config is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: image config is not a JSON object")
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidArgument(f"{where}: image config has no rootfs.diff_ids")
    for i, d in enumerate(diff_ids):
        if not isinstance(d, str):
            raise InvalidArgument(f"{where}: image config rootfs.diff_ids[{i}] is not a string")
        validate_digest(d)
    c = _object(doc.get("config"), where, "config")

    def strings(value: Any) -> tuple[str, ...]:
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    return ImageConfig(
        diff_ids=tuple(diff_ids),
        user=str(c.get("User") or ""),
        env=strings(c.get("Env")),
        entrypoint=strings(c.get("Entrypoint")),
        cmd=strings(c.get("Cmd")),
        working_dir=str(c.get("WorkingDir") or ""),
        stop_signal=str(c.get("StopSignal") or ""),
        labels={str(k): str(v) for k, v in _object(c.get("Labels"), where, "config.Labels").items()},
        exposed_ports=tuple(sorted(_object(c.get("ExposedPorts"), where, "config.ExposedPorts"))),
        volumes=tuple(sorted(_object(c.get("Volumes"), where, "config.Volumes"))),
        raw=doc,
    )


def chain_ids(diff_ids: tuple[str, ...]) -> tuple[str, ...]:
    """The OCI chain ids of a stack of layers (bottom first): the first is
    its diff id, each next is sha256 of ``"<parent chain id> <diff id>"``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return tuple(out)
