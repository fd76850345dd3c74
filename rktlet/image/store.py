"""The image store under ``<root>/images``: content-addressed blobs, unpacked
layers and image records.

Layout::

    blobs/sha256/<hex>        verified manifests and configs (layer blobs are
                              dropped once unpacked: the layer is what is used)
    ingest/                   downloads in progress (emptied at start-up)
    layers/<chain hex>/       one unpacked layer: ``diff/`` (an overlay lowerdir)
                              and ``layer.json``; made under a temporary name
                              and renamed into place when complete
    images.json               the image records, replaced atomically

An image record is written only after everything it names is in place, so a
daemon killed mid-pull leaves no half-pulled image visible; the leftovers
(ingest files, temporary layer dirs, layers no record names) are removed when
the store loads.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

from rktlet import logs
from rktlet.errors import InvalidArgument
from rktlet.fsutil import PRIVATE_DIR, make_dir, read_json, write_json_atomic
from rktlet.image import reference as references

log = logs.logger("rktlet.image.store")

_TMP_PREFIX = ".tmp-"

def _hex(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64:
        raise InvalidArgument(f"malformed digest {digest!r}")
    return hexpart

@dataclass(frozen=True)
class ImageRecord:
    """One image as the store keeps it; never changed once made (a change
    is a new record), so any thread may read the records it finds.

    :ivar id: the config digest (``sha256:…``), the CRI image id.
    :ivar repo_tags: ``name:tag`` references pointing at it.
    :ivar repo_digests: ``name@digest`` references (the digest of the
        manifest or index it was pulled by).
    :ivar chain_ids: its layers, bottom first.
    :ivar size: bytes of its unpacked layers plus config.
    :ivar user: the image config's ``User``.
    :ivar manifest_digest: the platform manifest's digest.
    :ivar source: where it was pulled from (a URL; a mirror's when one served it).
    :ivar pulled_at: when, in seconds since the epoch.
    """

    id: str
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    chain_ids: list[str] = field(default_factory=list)
    size: int = 0
    user: str = ""
    manifest_digest: str = ""
    index_digest: str = ""
    source: str = ""
    pulled_at: float = 0.0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ImageRecord":
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)

@dataclass(frozen=True)
class LayerInfo:
    """An unpacked layer's metadata (``layer.json``)."""

    chain_id: str
    diff_id: str
    parent: str
    size: int
    inodes: int

class ImageStore:
    """Blobs, layers and image records on disk, with an in-memory index.

    The index is changed on the reactor thread only. The image records
    (:attr:`images`) are also read from gRPC threads: a record is never
    changed once made, and the index is replaced, never changed in place,
    once the new one is persisted (:meth:`with_image`, :meth:`without_image`
    build the next version). What writes or reads files comes in two forms:
    one call that changes the index and the disk together (blocking;
    start-up and tests), and the disk half alone (:meth:`put_blob`,
    :meth:`read_blob`, :meth:`write_layer`, :meth:`write_records`) that the
    image manager runs in its thread pool while it changes the index on the
    reactor (:meth:`add_layer`). Removing directory trees is returned as
    work for a thread.

    :param root: the daemon's ``--root``.
    """

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "images")
        self.blobs_dir = os.path.join(self.dir, "blobs", "sha256")
        self.ingest_dir = os.path.join(self.dir, "ingest")
        self.layers_dir = os.path.join(self.dir, "layers")
        self._records_path = os.path.join(self.dir, "images.json")
        self.images: dict[str, ImageRecord] = {}
        self._layers: dict[str, LayerInfo] = {}

    # -- start-up -----------------------------------------------------------

    def load(self) -> list[str]:
        """Read the records and layers; clear what an interrupted pull left.

        Blocking (directory scans): called once before serving.

        :returns: paths of directories to remove (in a thread).
        """
        # 0700 whatever an older daemon made: unpacked layers may hold
        # setuid files, blobs private images; host users reach neither.
        for d in (self.dir, os.path.dirname(self.blobs_dir), self.blobs_dir, self.ingest_dir, self.layers_dir):
            make_dir(d, PRIVATE_DIR)
        for name in os.listdir(self.ingest_dir):
            os.unlink(os.path.join(self.ingest_dir, name))
        doc = read_json(self._records_path, {}) or {}
        self.images = {r["id"]: ImageRecord.from_json(r) for r in doc.get("images", [])}
        trash = []
        for name in os.listdir(self.layers_dir):
            path = os.path.join(self.layers_dir, name)
            info = read_json(os.path.join(path, "layer.json")) if not name.startswith(_TMP_PREFIX) else None
            if info is None:
                trash.append(path)
                continue
            self._layers[info["chain_id"]] = LayerInfo(**info)
        for record in list(self.images.values()):
            missing = [c for c in record.chain_ids if c not in self._layers]
            if missing or not self.has_blob(record.id):
                log.error("image {id} is incomplete on disk (missing {missing}); dropping its record",
                          id=record.id, missing=missing or [record.id])
                self.images = {k: v for k, v in self.images.items() if k != record.id}
        if len(self.images) != len(doc.get("images", [])):
            self._save()
        return trash

    # -- blobs --------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        """Where the verified blob *digest* lives."""
        return os.path.join(self.blobs_dir, _hex(digest))

    def has_blob(self, digest: str) -> bool:
        """Whether blob *digest* is stored."""
        return os.path.exists(self.blob_path(digest))

    def ingest_path(self) -> str:
        """A fresh path for a download in progress."""
        return os.path.join(self.ingest_dir, uuid.uuid4().hex)

    def commit_blob(self, ingest_path: str, digest: str) -> str:
        """Move a verified download into place; returns its path."""
        path = self.blob_path(digest)
        os.rename(ingest_path, path)
        return path

    def put_blob(self, digest: str, data: bytes) -> None:
        """Store a small verified blob (a manifest) directly (blocking, any thread)."""
        if not self.has_blob(digest):
            tmp = self.ingest_path()
            with open(tmp, "wb") as f:
                f.write(data)
            self.commit_blob(tmp, digest)

    def read_blob(self, digest: str) -> bytes:
        """The content of a small stored blob (manifest or config); blocking, any thread."""
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    # -- layers -------------------------------------------------------------

    def layer(self, chain_id: str) -> LayerInfo | None:
        """The unpacked layer *chain_id*, if present."""
        return self._layers.get(chain_id)

    def layer_diff_dir(self, chain_id: str) -> str:
        """The directory holding layer *chain_id*'s files (an overlay lowerdir)."""
        return os.path.join(self.layers_dir, _hex(chain_id), "diff")

    def new_layer_dir(self) -> str:
        """A temporary directory to unpack a layer into; its ``diff/`` exists."""
        path = os.path.join(self.layers_dir, _TMP_PREFIX + uuid.uuid4().hex)
        os.mkdir(path, PRIVATE_DIR)
        os.mkdir(os.path.join(path, "diff"), 0o755)  # the layer's "/"; its mode comes from the layer
        return path

    def commit_layer(self, tmp_dir: str, info: LayerInfo) -> None:
        """Make an unpacked layer visible under its chain id (blocking:
        :meth:`write_layer` then :meth:`add_layer`)."""
        self.write_layer(tmp_dir, info)
        self.add_layer(info)

    def write_layer(self, tmp_dir: str, info: LayerInfo) -> None:
        """Blocking, any thread: record *info* in the unpacked layer
        *tmp_dir* and rename it into place under its chain id."""
        write_json_atomic(os.path.join(tmp_dir, "layer.json"), asdict(info))
        os.rename(tmp_dir, os.path.join(self.layers_dir, _hex(info.chain_id)))

    def add_layer(self, info: LayerInfo) -> None:
        """Index a layer :meth:`write_layer` put in place."""
        self._layers[info.chain_id] = info

    # -- images -------------------------------------------------------------

    def _save(self, images: dict[str, ImageRecord] | None = None) -> None:
        """Persist *images* (default: the current ones), then make them
        current (blocking; see :meth:`put_image`)."""
        images = self.images if images is None else images
        self.write_records(self.records_doc(images))
        self.images = images

    def records_doc(self, images: dict[str, ImageRecord] | None = None) -> dict[str, Any]:
        """*images* (default: the current ones) as written to ``images.json``."""
        records = sorted((self.images if images is None else images).values(), key=lambda r: r.id)
        return {"images": [asdict(r) for r in records]}

    def write_records(self, doc: dict[str, Any]) -> None:
        """Blocking, any thread: replace ``images.json`` with *doc* atomically."""
        write_json_atomic(self._records_path, doc)

    def put_image(self, record: ImageRecord) -> ImageRecord:
        """Add or update an image (see :meth:`with_image`). Persisted, then
        made current, before returning (blocking)."""
        images, record = self.with_image(record)
        self._save(images)
        return record

    def with_image(self, record: ImageRecord) -> tuple[dict[str, ImageRecord], ImageRecord]:
        """The index with *record* added or updated, and the record as
        stored: its tags are taken from any image that had them (a tag
        names one image). Nothing is changed: :attr:`images` is replaced,
        never changed in place (readers on other threads hold versions of
        it), once the new index is persisted."""
        images = dict(self.images)
        existing = images.get(record.id)
        if existing is not None:
            record = replace(record, repo_tags=sorted(set(existing.repo_tags) | set(record.repo_tags)),
                             repo_digests=sorted(set(existing.repo_digests) | set(record.repo_digests)))
        for other in list(images.values()):
            if other.id != record.id and set(other.repo_tags) & set(record.repo_tags):
                images[other.id] = replace(other, repo_tags=[t for t in other.repo_tags if t not in record.repo_tags])
        images[record.id] = record
        return images, record

    def find(self, name: str) -> ImageRecord | None:
        """The image *name* refers to: an id (``sha256:…``, bare hex, or a
        unique prefix of at least 12 hex digits), a tag or a digest reference."""
        if not name:
            return None
        images = self.images  # one version throughout (any thread may ask)
        bare = name[len("sha256:"):] if name.startswith("sha256:") else name
        if len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare):
            matches = [r for r in images.values() if r.id[len("sha256:"):].startswith(bare)]
            if len(matches) == 1:
                return matches[0]
            if name.startswith("sha256:"):
                return None
        try:
            ref = references.parse(name)
        except InvalidArgument:
            return None
        for record in images.values():
            if ref.digest and f"{ref.name}@{ref.digest}" in record.repo_digests:
                return record
            if not ref.digest and f"{ref.name}:{ref.tag}" in record.repo_tags:
                return record
        return None

    def remove_image(self, record: ImageRecord) -> None:
        """Forget an image (all its tags and digests). Persisted before
        returning; its layers and blobs go with the next garbage collection."""
        images = self.without_image(record)
        if images is not None:
            self._save(images)

    def without_image(self, record: ImageRecord) -> dict[str, ImageRecord] | None:
        """The index without *record*, or None when it is not there (see
        :meth:`with_image`: nothing is changed here)."""
        if record.id not in self.images:
            return None
        return {k: v for k, v in self.images.items() if k != record.id}

    def garbage(self, layers_in_use: Iterable[str] = (), blobs_in_use: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """Layers and blobs that no image (and no container, and no pull in
        flight: *layers_in_use*, *blobs_in_use*) refers to.

        Forgets them at once: layers are renamed and blobs moved to the
        ingest directory out of sight (so a pull racing the removal fetches
        them again rather than finding them and losing them later), and
        returns ``(directories, files)`` to delete in a thread.
        """
        wanted_layers = set(layers_in_use)
        wanted_blobs = set(blobs_in_use)
        for record in self.images.values():
            wanted_layers.update(record.chain_ids)
            wanted_blobs.update({record.id, record.manifest_digest, record.index_digest})
        dirs = []
        for chain_id in [c for c in self._layers if c not in wanted_layers]:
            del self._layers[chain_id]
            path = os.path.join(self.layers_dir, _hex(chain_id))
            doomed = os.path.join(self.layers_dir, _TMP_PREFIX + uuid.uuid4().hex)
            os.rename(path, doomed)  # out of sight at once; deleted later
            dirs.append(doomed)
        files = []
        for name in os.listdir(self.blobs_dir):
            if f"sha256:{name}" not in wanted_blobs:
                doomed = self.ingest_path()  # emptied at start-up, should we die first
                try:
                    os.rename(os.path.join(self.blobs_dir, name), doomed)
                except FileNotFoundError:
                    continue
                files.append(doomed)
        return dirs, files

def delete_paths(dirs: Iterable[str], files: Iterable[str] = ()) -> None:
    """Remove directory trees and files (blocking: run in a thread)."""
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)

def usage(path: str) -> tuple[int, int]:
    """``(bytes, inodes)`` used under *path*, hard links counted once
    (blocking: run in a thread)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total, len(seen)
