"""Build real, deterministic container images for tests.

Images are assembled from :class:`Layer` objects (tar archives written with
:mod:`tarfile`, fixed mtimes and owners, sorted entries, so digests are stable
from run to run), wrapped in an image config and a Docker schema 2 or OCI
manifest by :func:`build_image`, optionally grouped into a multi-platform
manifest list / OCI index by :func:`build_index`, and pushed to a
:class:`~harness.registry.LocalRegistry` with :func:`push_image`.

The ready-made images (:func:`busybox_image`, :func:`named_user_image`,
:func:`web_image`, :func:`multi_layer_image`, :func:`busybox_multiarch_index`)
are all based on the host's ``/bin/busybox`` (busybox-static) so their
containers can really run.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import platform as _platform
import posixpath
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import zstandard

if TYPE_CHECKING:  # pragma: no cover
    from harness.registry import LocalRegistry

__all__ = [
    # entries
    "File", "Dir", "Symlink", "HardLink", "Whiteout", "OpaqueDir", "Entry",
    # building blocks
    "Layer", "ImageSpec", "BuiltImage", "BuiltIndex",
    "build_image", "build_index", "push_image", "host_architecture",
    # ready-made
    "busybox_layer", "busybox_image", "named_user_image", "web_image",
    "multi_layer_image", "busybox_multiarch_index",
    # constants
    "BUSYBOX_PATH", "BUSYBOX_APPLETS", "DEFAULT_ENV", "LAYER_MTIME", "CREATED",
    "WEB_INDEX_HTML", "NAMED_USER", "NAMED_UID", "NAMED_GID",
    "MULTI_LAYER_PRESENT", "MULTI_LAYER_ABSENT",
    "MEDIA_TYPES", "decompress",
]

BUSYBOX_PATH = "/bin/busybox"

#: Applets installed as hard links to ``bin/busybox`` by :func:`busybox_layer`.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "echo", "sleep", "cat", "ls", "env", "id", "true", "false", "ps",
    "kill", "mkdir", "rm", "wc", "head", "tail", "touch", "test", "grep",
    "hostname", "httpd", "nc", "ping", "wget", "top", "printf", "date", "stat",
    "readlink", "chmod", "dd", "mount", "whoami", "sed",
)

DEFAULT_ENV: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)

#: mtime of every tar entry (2024-01-01T00:00:00Z) and the images' creation time.
LAYER_MTIME = 1704067200
CREATED = "2024-01-01T00:00:00Z"

MEDIA_TYPES: dict[str, str] = {
    "docker_manifest": "application/vnd.docker.distribution.manifest.v2+json",
    "docker_list": "application/vnd.docker.distribution.manifest.list.v2+json",
    "docker_config": "application/vnd.docker.container.image.v1+json",
    "docker_layer_gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "docker_layer_tar": "application/vnd.docker.image.rootfs.diff.tar",
    "oci_manifest": "application/vnd.oci.image.manifest.v1+json",
    "oci_index": "application/vnd.oci.image.index.v1+json",
    "oci_config": "application/vnd.oci.image.config.v1+json",
    "oci_layer_gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "oci_layer_zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "oci_layer_tar": "application/vnd.oci.image.layer.v1.tar",
}

_LAYER_MEDIA_TYPES: dict[tuple[str, str], str] = {
    ("docker", "gzip"): MEDIA_TYPES["docker_layer_gzip"],
    ("docker", "none"): MEDIA_TYPES["docker_layer_tar"],
    # Docker schema 2 has no zstd type; containerd and others use the OCI one.
    ("docker", "zstd"): MEDIA_TYPES["oci_layer_zstd"],
    ("oci", "gzip"): MEDIA_TYPES["oci_layer_gzip"],
    ("oci", "none"): MEDIA_TYPES["oci_layer_tar"],
    ("oci", "zstd"): MEDIA_TYPES["oci_layer_zstd"],
}

FORMATS = ("docker", "oci")
COMPRESSIONS = ("gzip", "zstd", "none")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}, expected one of {FORMATS}")


def host_architecture() -> str:
    """The host's architecture in OCI/Go spelling (``amd64``, ``arm64``...)."""
    machine = _platform.machine().lower()
    return {
        "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
        "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
        "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
    }.get(machine, machine)


# -- layer entries ----------------------------------------------------------------


def _norm(path: str) -> str:
    """Normalise a path inside a layer: relative, no ``.``/``..``, no trailing slash."""
    norm = posixpath.normpath("/" + path.strip()).lstrip("/")
    if not norm or norm == ".":
        raise ValueError(f"invalid layer path {path!r}")
    return norm


@dataclass(frozen=True)
class File:
    """A regular file with ``content`` (``str`` is UTF-8 encoded)."""

    path: str
    content: Union[bytes, str] = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Dir:
    """A directory."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    """A symbolic link ``path -> target`` (target stored verbatim)."""

    path: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class HardLink:
    """A hard link ``path`` to ``target``, a regular file of the same layer."""

    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    """Deletion of ``path`` from lower layers (written as ``DIR/.wh.NAME``)."""

    path: str


@dataclass(frozen=True)
class OpaqueDir:
    """Directory ``path`` hiding all lower-layer content (``PATH/.wh..wh..opq``).

    The directory entry itself is written too, with ``mode``/``uid``/``gid``.
    """

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


Entry = Union[File, Dir, Symlink, HardLink, Whiteout, OpaqueDir]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def _tarinfo(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = LAYER_MTIME
    return info


def _build_tar(entries: Sequence[Entry], add_parents: bool) -> bytes:
    """Write ``entries`` as a deterministic, sorted tar archive."""
    items: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    links: dict[str, tarfile.TarInfo] = {}

    def put(info: tarfile.TarInfo, data: bytes = b"") -> None:
        if info.name in items or info.name in links:
            raise ValueError(f"duplicate layer path {info.name!r}")
        if info.type == tarfile.LNKTYPE:
            links[info.name] = info
        else:
            items[info.name] = (info, data)

    for entry in entries:
        path = _norm(entry.path)
        if isinstance(entry, File):
            data = entry.content.encode() if isinstance(entry.content, str) else bytes(entry.content)
            info = _tarinfo(path, tarfile.REGTYPE, entry.mode, entry.uid, entry.gid)
            info.size = len(data)
            put(info, data)
        elif isinstance(entry, Dir):
            put(_tarinfo(path, tarfile.DIRTYPE, entry.mode, entry.uid, entry.gid))
        elif isinstance(entry, Symlink):
            info = _tarinfo(path, tarfile.SYMTYPE, 0o777, entry.uid, entry.gid)
            info.linkname = entry.target
            put(info)
        elif isinstance(entry, HardLink):
            info = _tarinfo(path, tarfile.LNKTYPE, 0o644)
            info.linkname = _norm(entry.target)
            put(info)
        elif isinstance(entry, Whiteout):
            parent, base = posixpath.split(path)
            put(_tarinfo(posixpath.join(parent, WHITEOUT_PREFIX + base), tarfile.REGTYPE, 0o644))
        elif isinstance(entry, OpaqueDir):
            put(_tarinfo(path, tarfile.DIRTYPE, entry.mode, entry.uid, entry.gid))
            put(_tarinfo(posixpath.join(path, OPAQUE_MARKER), tarfile.REGTYPE, 0o644))
        else:
            raise TypeError(f"not a layer entry: {entry!r}")

    # Hard links take the metadata of the file they point to.
    for name, info in links.items():
        target = items.get(info.linkname)
        if target is None or target[0].type != tarfile.REGTYPE:
            raise ValueError(f"hard link {name!r} -> {info.linkname!r}: no such regular file in the layer")
        info.mode, info.uid, info.gid = target[0].mode, target[0].uid, target[0].gid

    if add_parents:
        for name in list(items) + list(links):
            parent = posixpath.dirname(name)
            while parent and parent not in items:
                if parent in links:
                    raise ValueError(f"{parent!r} is a hard link, not a directory")
                items[parent] = (_tarinfo(parent, tarfile.DIRTYPE, 0o755), b"")
                parent = posixpath.dirname(parent)

    def key(name: str) -> tuple[str, ...]:
        return tuple(name.split("/"))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(items, key=key):
            info, data = items[name]
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        # Hard links last, so their targets are always extracted first.
        for name in sorted(links, key=key):
            tar.addfile(links[name])
    return buf.getvalue()


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}, expected one of {COMPRESSIONS}")


def decompress(blob: bytes) -> bytes:
    """Uncompress a layer blob, recognising gzip and zstd by their magic bytes."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompress(blob, max_output_size=1 << 31)
    return blob


class Layer:
    """One image layer built from entries.

    :param entries: :class:`File`, :class:`Dir`, :class:`Symlink`,
        :class:`HardLink`, :class:`Whiteout`, :class:`OpaqueDir` objects.
    :param compression: ``"gzip"`` (default), ``"zstd"`` or ``"none"``.
    :param format: ``"docker"`` or ``"oci"``; only selects :attr:`media_type`
        (:func:`build_image` re-tags layers for the image's format).
    :param created_by: text for the image config's ``history``.
    :param add_parents: add missing parent directories (mode 0755, root).

    Attributes: ``tar`` (uncompressed archive), ``blob`` (what is pushed),
    ``digest`` (sha256 of ``blob``), ``diff_id`` (sha256 of ``tar``),
    ``size`` (length of ``blob``), ``media_type``.
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        compression: str = "gzip",
        format: str = "docker",
        created_by: str = "",
        add_parents: bool = True,
    ) -> None:
        _check_format(format)
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.compression = compression
        self.format = format
        self.created_by = created_by
        self.tar: bytes = _build_tar(self.entries, add_parents)
        self.blob: bytes = _compress(self.tar, compression)
        self.digest: str = _sha256(self.blob)
        self.diff_id: str = _sha256(self.tar)

    @property
    def size(self) -> int:
        """Size in bytes of the (compressed) blob."""
        return len(self.blob)

    @property
    def media_type(self) -> str:
        """Layer media type for this layer's format and compression."""
        return _LAYER_MEDIA_TYPES[(self.format, self.compression)]

    def for_format(self, format: str) -> "Layer":
        """The same layer (same bytes) labelled for image format ``format``."""
        _check_format(format)
        if format == self.format:
            return self
        other = object.__new__(Layer)
        other.__dict__.update(self.__dict__)
        other.format = format
        return other

    def descriptor(self) -> dict[str, Any]:
        """The layer's manifest descriptor (mediaType, size, digest)."""
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}

    def members(self) -> list[tarfile.TarInfo]:
        """The tar members, in archive order (parsed back from :attr:`tar`)."""
        with tarfile.open(fileobj=io.BytesIO(self.tar), mode="r:") as tar:
            return tar.getmembers()

    def names(self) -> list[str]:
        """Member names in archive order (directories without trailing ``/``)."""
        return [m.name.rstrip("/") for m in self.members()]

    def __repr__(self) -> str:
        return f"<Layer {self.digest[:19]} {self.compression} {self.size} bytes>"


# -- images -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """Everything :func:`build_image` needs; ``ImageSpec(...).build()`` builds it.

    ``None`` fields are left out of the image config.
    """

    layers: Sequence[Layer]
    format: str = "docker"
    entrypoint: Optional[Sequence[str]] = None
    cmd: Optional[Sequence[str]] = None
    env: Optional[Sequence[str]] = DEFAULT_ENV
    user: Optional[str] = None
    working_dir: Optional[str] = None
    exposed_ports: Optional[Mapping[str, Mapping]] = None
    labels: Optional[Mapping[str, str]] = None
    stop_signal: Optional[str] = None
    volumes: Optional[Mapping[str, Mapping]] = None
    architecture: Optional[str] = None
    os: str = "linux"
    variant: Optional[str] = None
    created: str = CREATED
    annotations: Optional[Mapping[str, str]] = None

    def build(self) -> "BuiltImage":
        """Build the image described by this spec."""
        return _build(self)


@dataclass(frozen=True)
class BuiltImage:
    """A built image: config and manifest bytes plus its layers.

    ``config_digest`` is the image ID; ``manifest_digest`` is what a registry
    reference ``repo@digest`` resolves to.
    """

    spec: ImageSpec
    format: str
    layers: tuple[Layer, ...]
    config: bytes
    config_digest: str
    config_media_type: str
    manifest: bytes
    manifest_digest: str
    manifest_media_type: str
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        """The image ID, i.e. the digest of the config blob."""
        return self.config_digest

    @property
    def config_json(self) -> dict[str, Any]:
        """The parsed image config."""
        return json.loads(self.config)

    @property
    def manifest_json(self) -> dict[str, Any]:
        """The parsed manifest."""
        return json.loads(self.manifest)

    def blobs(self) -> list[tuple[str, bytes]]:
        """``(digest, bytes)`` of every blob the manifest refers to (layers, config)."""
        return [(layer.digest, layer.blob) for layer in self.layers] + [(self.config_digest, self.config)]

    def descriptor(self, with_platform: bool = False) -> dict[str, Any]:
        """Descriptor of the manifest (for an index), optionally with ``platform``."""
        desc: dict[str, Any] = {
            "mediaType": self.manifest_media_type,
            "size": len(self.manifest),
            "digest": self.manifest_digest,
        }
        if with_platform:
            desc["platform"] = dict(self.platform)
        return desc


def _build(spec: ImageSpec) -> BuiltImage:
    fmt = spec.format
    _check_format(fmt)
    if not spec.layers:
        raise ValueError("an image needs at least one layer")
    layers = tuple(layer.for_format(fmt) for layer in spec.layers)
    arch = spec.architecture or host_architecture()

    run_config: dict[str, Any] = {}
    for key, value in (
        ("Entrypoint", spec.entrypoint),
        ("Cmd", spec.cmd),
        ("Env", spec.env),
        ("User", spec.user),
        ("WorkingDir", spec.working_dir),
        ("ExposedPorts", spec.exposed_ports),
        ("Labels", spec.labels),
        ("StopSignal", spec.stop_signal),
        ("Volumes", spec.volumes),
    ):
        if value is None:
            continue
        if isinstance(value, Mapping):
            run_config[key] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
        elif isinstance(value, str):
            run_config[key] = value
        else:
            run_config[key] = list(value)

    history = [
        {"created": spec.created, "created_by": layer.created_by or f"rktlet-tests: layer {i}"}
        for i, layer in enumerate(layers)
    ]
    history.append({"created": spec.created, "created_by": "rktlet-tests: config", "empty_layer": True})
    config: dict[str, Any] = {
        "architecture": arch,
        "os": spec.os,
        "created": spec.created,
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    }
    if spec.variant:
        config["variant"] = spec.variant
    config_bytes = _canonical_json(config)
    config_digest = _sha256(config_bytes)

    if fmt == "docker":
        config_type, manifest_type = MEDIA_TYPES["docker_config"], MEDIA_TYPES["docker_manifest"]
    else:
        config_type, manifest_type = MEDIA_TYPES["oci_config"], MEDIA_TYPES["oci_manifest"]
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "size": len(config_bytes), "digest": config_digest},
        "layers": [layer.descriptor() for layer in layers],
    }
    if spec.annotations:
        if fmt != "oci":
            raise ValueError("annotations are only supported in OCI manifests")
        manifest["annotations"] = dict(spec.annotations)
    manifest_bytes = _canonical_json(manifest)

    plat = {"architecture": arch, "os": spec.os}
    if spec.variant:
        plat["variant"] = spec.variant
    return BuiltImage(
        spec=spec,
        format=fmt,
        layers=layers,
        config=config_bytes,
        config_digest=config_digest,
        config_media_type=config_type,
        manifest=manifest_bytes,
        manifest_digest=_sha256(manifest_bytes),
        manifest_media_type=manifest_type,
        platform=plat,
    )


def build_image(layers: Sequence[Layer], **config: Any) -> BuiltImage:
    """Build an image from ``layers``.

    Keyword arguments are the :class:`ImageSpec` fields: ``format``
    (``"docker"`` or ``"oci"``), ``entrypoint``, ``cmd``, ``env``, ``user``,
    ``working_dir``, ``exposed_ports``, ``labels``, ``stop_signal``,
    ``volumes``, ``architecture`` (default: the host's), ``os``, ``variant``,
    ``created``, ``annotations`` (OCI only).
    """
    return ImageSpec(layers=tuple(layers), **config).build()


@dataclass(frozen=True)
class BuiltIndex:
    """A Docker manifest list or OCI image index over several images."""

    format: str
    images: tuple[BuiltImage, ...]
    manifest: bytes
    digest: str
    media_type: str

    @property
    def manifest_digest(self) -> str:
        """Same as :attr:`digest` (for symmetry with :class:`BuiltImage`)."""
        return self.digest

    @property
    def manifest_media_type(self) -> str:
        """Same as :attr:`media_type`."""
        return self.media_type

    @property
    def manifest_json(self) -> dict[str, Any]:
        """The parsed index."""
        return json.loads(self.manifest)

    def image_for(self, architecture: str, os: str = "linux") -> BuiltImage:
        """The child image for a platform."""
        for image in self.images:
            if image.platform.get("architecture") == architecture and image.platform.get("os") == os:
                return image
        raise KeyError(f"{os}/{architecture}")


def _parse_platform(text: str) -> dict[str, str]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform must be OS/ARCH[/VARIANT], got {text!r}")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        plat["variant"] = parts[2]
    return plat


def build_index(
    images_by_platform: Union[Mapping[str, BuiltImage], Sequence[BuiltImage]],
    format: str = "oci",
) -> BuiltIndex:
    """Build a Docker manifest list (``format="docker"``) or an OCI index.

    ``images_by_platform`` maps ``"OS/ARCH[/VARIANT]"`` to images, or is a
    sequence of images whose platform comes from their config.  A mapping
    key must agree with the image's config.
    """
    _check_format(format)
    images: list[BuiltImage] = []
    if isinstance(images_by_platform, Mapping):
        for text, image in images_by_platform.items():
            plat = _parse_platform(text)
            if plat != image.platform:
                raise ValueError(f"platform {text!r} does not match the image config {image.platform}")
            images.append(image)
    else:
        images = list(images_by_platform)
    if not images:
        raise ValueError("an index needs at least one image")
    media_type = MEDIA_TYPES["docker_list"] if format == "docker" else MEDIA_TYPES["oci_index"]
    index = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.descriptor(with_platform=True) for image in images],
    }
    body = _canonical_json(index)
    return BuiltIndex(format=format, images=tuple(images), manifest=body, digest=_sha256(body), media_type=media_type)


def push_image(
    registry: "LocalRegistry",
    repo: str,
    tag: Optional[str],
    image: Union[BuiltImage, BuiltIndex],
) -> str:
    """Push an image (blobs, config, manifest) or an index with all its children.

    Children of an index are pushed by digest, then the index itself.  With
    ``tag=None`` the top manifest is pushed by digest only.  Returns the
    digest of the top manifest.
    """
    if isinstance(image, BuiltIndex):
        for child in image.images:
            push_image(registry, repo, None, child)
        return registry.push_manifest(repo, tag or image.digest, image.manifest, image.media_type)
    for layer in image.layers:
        registry.push_blob(repo, layer.blob)
    registry.push_blob(repo, image.config)
    return registry.push_manifest(repo, tag or image.manifest_digest, image.manifest, image.manifest_media_type)


# -- ready-made images --------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _busybox_binary() -> bytes:
    with open(BUSYBOX_PATH, "rb") as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def busybox_layer(compression: str = "gzip") -> Layer:
    """Base layer: ``/bin/busybox`` as ``bin/busybox`` plus applet hard links.

    The applets of :data:`BUSYBOX_APPLETS` are hard links (not symlinks) to
    ``bin/busybox``; directories ``usr/bin``, ``etc``, ``tmp`` (1777),
    ``root`` (0700), ``home``, ``proc``, ``sys``, ``dev`` and ``var`` exist.
    Cached per compression.
    """
    entries: list[Entry] = [
        Dir("bin"), Dir("usr"), Dir("usr/bin"), Dir("etc"), Dir("tmp", mode=0o1777),
        Dir("root", mode=0o700), Dir("home"), Dir("proc"), Dir("sys"), Dir("dev"), Dir("var"),
        File("bin/busybox", _busybox_binary(), mode=0o755),
    ]
    entries += [HardLink(f"bin/{applet}", "bin/busybox") for applet in BUSYBOX_APPLETS]
    return Layer(entries, compression=compression, created_by="COPY busybox-static /bin/busybox")


@functools.lru_cache(maxsize=None)
def busybox_image(format: str = "docker", architecture: Optional[str] = None) -> BuiltImage:
    """busybox only, ``Cmd ["sh"]``."""
    return build_image([busybox_layer()], format=format, cmd=["sh"], architecture=architecture)


NAMED_USER = "app"
NAMED_UID = 1234
NAMED_GID = 1234


@functools.lru_cache(maxsize=None)
def named_user_image(format: str = "docker") -> BuiltImage:
    """busybox plus a user ``app`` (uid/gid 1234, home ``/home/app``); ``User: "app"``."""
    layer = Layer(
        [
            File("etc/passwd",
                 "root:x:0:0:root:/root:/bin/sh\n"
                 f"{NAMED_USER}:x:{NAMED_UID}:{NAMED_GID}:app user:/home/{NAMED_USER}:/bin/sh\n"
                 "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
            File("etc/group", f"root:x:0:\n{NAMED_USER}:x:{NAMED_GID}:\nnogroup:x:65534:\n"),
            Dir("home", mode=0o755),
            Dir(f"home/{NAMED_USER}", mode=0o755, uid=NAMED_UID, gid=NAMED_GID),
        ],
        created_by="ADD passwd group; mkdir /home/app",
    )
    return build_image([busybox_layer(), layer], format=format, cmd=["sh"], user=NAMED_USER)


WEB_INDEX_HTML = b"<html><body>hello from the rktlet web test image</body></html>\n"


@functools.lru_cache(maxsize=None)
def web_image(format: str = "docker") -> BuiltImage:
    """busybox httpd serving ``/www/index.html`` (:data:`WEB_INDEX_HTML`) on port 80."""
    layer = Layer([Dir("www"), File("www/index.html", WEB_INDEX_HTML)], created_by="ADD index.html /www/")
    return build_image(
        [busybox_layer(), layer],
        format=format,
        entrypoint=["httpd", "-f", "-p", "80", "-h", "/www"],
        exposed_ports={"80/tcp": {}},
        labels={"org.rktlet.test": "web"},
        stop_signal="SIGTERM",
    )


#: Paths present / absent in the root filesystem of :func:`multi_layer_image`.
MULTI_LAYER_PRESENT: dict[str, bytes] = {
    "data/keep.txt": b"keep\n",
    "data/olddir/new.txt": b"new\n",
    "data/layer3.txt": b"third layer\n",
}
MULTI_LAYER_ABSENT: tuple[str, ...] = ("data/remove-me.txt", "data/olddir/a.txt", "data/olddir/sub/b.txt")


@functools.lru_cache(maxsize=None)
def multi_layer_image(format: str = "docker", compression: str = "gzip") -> BuiltImage:
    """Three layers: busybox; files under ``/data``; whiteout + opaque directory.

    Layer 2 adds ``data/keep.txt``, ``data/remove-me.txt`` and
    ``data/olddir/{a.txt,sub/b.txt}``.  Layer 3 deletes ``data/remove-me.txt``
    with a whiteout, makes ``data/olddir`` opaque with a new ``new.txt``,
    and adds ``data/layer3.txt``.  The result is described by
    :data:`MULTI_LAYER_PRESENT` and :data:`MULTI_LAYER_ABSENT`.  ``compression``
    applies to layers 2 and 3 (e.g. ``"zstd"`` with ``format="oci"``).
    """
    second = Layer(
        [
            Dir("data"),
            File("data/keep.txt", b"keep\n"),
            File("data/remove-me.txt", b"remove me\n"),
            File("data/olddir/a.txt", b"a\n"),
            File("data/olddir/sub/b.txt", b"b\n"),
        ],
        compression=compression,
        created_by="ADD data /data",
    )
    third = Layer(
        [
            Whiteout("data/remove-me.txt"),
            OpaqueDir("data/olddir"),
            File("data/olddir/new.txt", b"new\n"),
            File("data/layer3.txt", b"third layer\n"),
        ],
        compression=compression,
        created_by="RUN rm /data/remove-me.txt && rm -rf /data/olddir/* && ...",
    )
    return build_image([busybox_layer(), second, third], format=format, cmd=["sh"])


@functools.lru_cache(maxsize=None)
def busybox_multiarch_index(format: str = "docker", architectures: tuple[str, ...] = ("amd64", "arm64")) -> BuiltIndex:
    """An index of busybox images for ``architectures`` (default amd64 + arm64).

    Every child has a second layer with ``etc/platform`` containing
    ``linux/ARCH`` so tests can tell which one was pulled.  Only the host's
    architecture can actually run (the busybox binary is the host's).
    """
    images = {}
    for arch in architectures:
        marker = Layer([File("etc/platform", f"linux/{arch}\n")], created_by=f"ADD platform marker {arch}")
        variant = "v8" if arch == "arm64" else None
        images["linux/" + arch + (f"/{variant}" if variant else "")] = build_image(
            [busybox_layer(), marker], format=format, cmd=["sh"], architecture=arch, variant=variant
        )
    return build_index(images, format=format)

