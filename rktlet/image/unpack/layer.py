"""Unpacking one layer blob: decompression, tar reading and extraction
wired together; the ``diff_id`` is the hash of the uncompressed stream."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

from rktlet.errors import InvalidArgument, NotFound
from rktlet.image.unpack.decompress import COMPRESSIONS, DECOMPRESSORS, Corrupt, Stream, detect_compression
from rktlet.image.unpack.extract import Extractor
from rktlet.image.unpack.limits import Control, Limits, UnpackCancelled
from rktlet.image.unpack.tar import TarReader

__all__ = ["UnpackResult", "unpack_layer"]


@dataclass(frozen=True)
class UnpackResult:
    """What :func:`unpack_layer` produced.

    :ivar diff_id: ``sha256:<hex>`` of the uncompressed tar stream, to check
        against the image config's ``rootfs.diff_ids``.
    :ivar size: bytes of regular-file content written.
    :ivar inodes: inodes the unpacked tree holds: every file, directory
        (including implied parents), symlink, device, FIFO and whiteout
        created, less those later replaced; hard links add none.
    """

    diff_id: str
    size: int
    inodes: int


def unpack_layer(
    blob_path: str,
    target: str,
    compression: str | None = None,
    *,
    limits: Limits | None = None,
    control: Control | None = None,
    name: str | None = None,
) -> UnpackResult:
    """Unpack the layer blob at *blob_path* into the empty directory *target*.

    Blocking; run it in a worker thread.  *compression* is ``"gzip"``,
    ``"zstd"``, ``"none"`` or ``None`` to detect it from the magic bytes.
    On failure *target* may hold part of the layer: the caller removes it.
    *limits* bounds what the layer may create; *control* lets another thread
    follow the progress and cancel; *name* is how errors name the layer
    (default ``layer blob <blob_path>``).

    :raises HostileContent: an entry tries to reach outside *target*.
    :raises InvalidArgument: the stream is corrupt or truncated, or an entry
        is of an unsupported kind or cannot be created as written.
    :raises NotFound: *blob_path* does not exist.
    :raises ResourceExhausted: the file system is full, or a limit of
        *limits* is reached (the message names it).
    :raises UnpackCancelled: *control* was cancelled.
    """
    limits = limits or Limits()
    what = name or f"layer blob {blob_path}"
    if compression is None:
        compression = detect_compression(blob_path)
    if compression not in DECOMPRESSORS:
        raise InvalidArgument(f"unknown layer compression {compression!r}, expected one of {COMPRESSIONS}")
    try:
        blob = open(blob_path, "rb", buffering=0)
    except FileNotFoundError:
        raise NotFound(f"{what} does not exist") from None
    chunks = DECOMPRESSORS[compression](blob)
    with blob, closing(chunks):
        stream = Stream(chunks, limits.max_stream, control, what)
        with Extractor(target, what, limits) as extractor:
            try:
                reader = TarReader(stream)
                while (entry := reader.next()) is not None:
                    if control is not None and control.cancelled:
                        raise UnpackCancelled(f"unpacking {what} was cancelled")
                    extractor.extract(entry, reader)
                # The diff_id covers the whole stream, end-of-archive padding
                # included; draining also checks the compressed stream ends well.
                stream.drain()
            except Corrupt as e:
                raise InvalidArgument(f"{what}: {e}") from None
            extractor.finish()
    return UnpackResult(diff_id="sha256:" + stream.hexdigest(), size=extractor.size, inodes=extractor.inodes)


