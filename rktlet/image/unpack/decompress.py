"""Decompression of layer blobs (gzip, zstd, none) into a flat stream of
chunks, and the :class:`Stream` the tar reader reads from: bounded, hashed
(the layer's ``diff_id``) and cancellable."""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Generator, Iterator
from typing import BinaryIO

import zstandard

from rktlet.errors import NotFound, ResourceExhausted
from rktlet.image.unpack.limits import Control, UnpackCancelled

#: The compressions :func:`~rktlet.image.unpack.unpack_layer` understands.
COMPRESSIONS = ("gzip", "zstd", "none")

# Uncompressed data moves in chunks of at most this size: big enough that
# the per-chunk Python overhead is negligible, small enough that memory use
# stays flat however large (or well compressed) the layer is.
_CHUNK = 1 << 20
# Compressed input is read in pieces of this size.
_IN_CHUNK = 256 << 10
# Extension headers (PAX records, GNU long names) are held in memory; real

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# -- decompression -----------------------------------------------------------------


class Corrupt(Exception):
    """The stream (compression or tar framing) is damaged; the message says how."""


def _gunzip(f: BinaryIO) -> Generator[bytes, None, None]:
    """Uncompressed chunks (at most :data:`_CHUNK` bytes) of a gzip stream of
    one or more members, optionally followed by zero padding."""
    d: zlib._Decompress | None = None
    members = 0
    data = b""
    while True:
        if not data:
            data = f.read(_IN_CHUNK)
            if not data:
                break
        if d is None:
            if data[0] == 0:
                # Zero padding after the last member (some writers pad to a
                # block size); anything else after it is garbage.
                while data:
                    if data.count(0) != len(data):
                        raise Corrupt("corrupt gzip stream: garbage after the last member")
                    data = f.read(_IN_CHUNK)
                break
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            members += 1
        try:
            out = d.decompress(data, _CHUNK)
        except zlib.error as e:
            raise Corrupt(f"corrupt gzip stream: {e}") from None
        if out:
            yield out
        if d.eof:
            data = d.unused_data
            d = None
        else:
            data = d.unconsumed_tail
    if d is not None:
        # Input is exhausted; inflate may still hold a few bytes of output.
        try:
            out = d.flush()
        except zlib.error as e:
            raise Corrupt(f"corrupt gzip stream: {e}") from None
        if out:
            yield out
        if not d.eof:
            raise Corrupt("truncated gzip stream")
    if members == 0:
        raise Corrupt("empty gzip stream")


class _ZstdFraming:
    """Follows the frame and block boundaries of a zstd stream (RFC 8878)
    from its headers alone, without decoding, to tell whether the stream
    ends exactly where a frame ends: python-zstandard's stream_reader
    silently accepts a truncated last frame."""

    _MAGIC, _SKIPPABLE_SIZE, _FRAME_HEADER, _BLOCK_HEADER = range(4)
    _HEADER_SIZE = (4, 4, 1, 3)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._header = b""  # the current header's bytes gathered so far
        self._skip = 0  # bytes to pass over before the next header
        self._checksum = False
        #: Frames seen (skippable ones included).
        self.frames = 0

    def feed(self, data: bytes) -> None:
        """Follow *data*, the next bytes of the compressed stream."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            need = self._HEADER_SIZE[self._state] - len(self._header)
            self._header += data[pos:pos + need]
            pos += need
            if len(self._header) == self._HEADER_SIZE[self._state]:
                header, self._header = self._header, b""
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        state = self._state
        if state == self._MAGIC:
            self.frames += 1
            if header == _ZSTD_MAGIC:
                self._state = self._FRAME_HEADER
            elif header[0] & 0xF0 == 0x50 and header[1:] == b"\x2a\x4d\x18":
                self._state = self._SKIPPABLE_SIZE
            else:
                raise Corrupt("corrupt zstd stream: no frame magic where a frame should start")
        elif state == self._SKIPPABLE_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._state = self._MAGIC
        elif state == self._FRAME_HEADER:
            descriptor = header[0]
            if descriptor & 0x08:
                raise Corrupt("corrupt zstd stream: reserved frame header bit set")
            single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            # Window descriptor, dictionary id, frame content size.
            self._skip = ((0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03]
                          + (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6])
            self._state = self._BLOCK_HEADER
        else:
            value = int.from_bytes(header, "little")
            block_type = (value >> 1) & 0x03
            if block_type == 3:
                raise Corrupt("corrupt zstd stream: reserved block type")
            self._skip = 1 if block_type == 1 else value >> 3  # an RLE block holds one byte
            if value & 0x01:  # last block of the frame
                self._skip += 4 if self._checksum else 0
                self._state = self._MAGIC

    def complete(self) -> bool:
        """True when the bytes fed so far end exactly at the end of a frame."""
        return self._state == self._MAGIC and not self._header and not self._skip


def _unzstd(f: BinaryIO) -> Generator[bytes, None, None]:
    """Uncompressed chunks (at most :data:`_CHUNK` bytes, however well the
    data compressed) of a zstd stream of one or more frames, skippable frames
    included; a truncated stream is noticed."""
    framing = _ZstdFraming()

    class _Source:
        # What stream_reader reads from: the blob, with its framing followed.
        @staticmethod
        def read(n: int = -1) -> bytes:
            data = f.read(n)
            framing.feed(data)
            return data

    reader = zstandard.ZstdDecompressor().stream_reader(
        _Source(), read_size=_IN_CHUNK, read_across_frames=True, closefd=False)
    try:
        while chunk := reader.read(_CHUNK):
            yield chunk
    except zstandard.ZstdError as e:
        raise Corrupt(f"corrupt zstd stream: {e}") from None
    if _Source.read(_IN_CHUNK):
        raise Corrupt("corrupt zstd stream: data after the last frame")
    if framing.frames == 0:
        raise Corrupt("empty zstd stream")
    if not framing.complete():
        raise Corrupt("truncated zstd stream")


def _plain(f: BinaryIO) -> Generator[bytes, None, None]:
    """Chunks of an uncompressed blob."""
    while data := f.read(_CHUNK):
        yield data


class Stream:
    """The uncompressed tar stream, hashed as it is produced.

    The tar reader takes headers with :meth:`read` and file data with
    :meth:`copy_to` / :meth:`skip`, which hand whole chunks to ``os.write``
    without copying them.
    """

    def __init__(self, chunks: Iterator[bytes], limit: int | None = None, control: Control | None = None,
                 what: str = "") -> None:
        self._chunks = chunks
        self._limit = limit
        self._control = control
        self._what = what
        self._filled = 0
        self._hash = hashlib.sha256()
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        #: Offset in the uncompressed stream of the next byte to be read.
        self.offset = 0

    def _fill(self) -> bool:
        """Make the next chunk current; False at the end of the stream."""
        control = self._control
        if control is not None:
            if control.cancelled:
                raise UnpackCancelled(f"unpacking {self._what} was cancelled")
            control.offset = self.offset
        for chunk in self._chunks:
            if chunk:
                self._filled += len(chunk)
                if self._limit is not None and self._filled > self._limit:
                    raise ResourceExhausted(
                        f"{self._what}: its uncompressed tar stream is longer than {self._limit} bytes "
                        f"(the limit its byte and inode budgets allow)")
                self._hash.update(chunk)
                self._buf = chunk
                self._view = memoryview(chunk)
                self._pos = 0
                return True
        return False

    def read(self, n: int) -> bytes:
        """Exactly *n* bytes; fewer (possibly none) only at the end of the stream."""
        end = self._pos + n
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            self.offset += n
            return data
        parts = [self._buf[self._pos:]]
        have = len(parts[0])
        self._pos = len(self._buf)
        while have < n and self._fill():
            take = min(n - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        self.offset += have
        return b"".join(parts)

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next *n* bytes to *fd*."""
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise Corrupt(f"truncated tar stream at offset {self.offset}")
                continue
            take = avail if avail < n else n
            view = self._view[self._pos:self._pos + take]
            written = os.write(fd, view)
            while written < take:  # regular files only write short when full
                written += os.write(fd, view[written:])
            self._pos += take
            self.offset += take
            n -= take

    def skip(self, n: int) -> None:
        """Discard the next *n* bytes."""
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise Corrupt(f"truncated tar stream at offset {self.offset}")
                continue
            take = avail if avail < n else n
            self._pos += take
            self.offset += take
            n -= take

    def drain(self) -> None:
        """Read (and hash) whatever follows the end of the archive."""
        self._pos = len(self._buf)
        while self._fill():
            self.offset += len(self._buf)
        self._pos = len(self._buf)

    def hexdigest(self) -> str:
        """sha256 of everything read so far, in hex."""
        return self._hash.hexdigest()


def detect_compression(path: str) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"`` for the blob at *path*, from its
    magic bytes (a zstd stream may start with a skippable frame)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise NotFound(f"layer blob {path} does not exist") from None
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    if head == _ZSTD_MAGIC or (len(head) == 4 and head[0] & 0xF0 == 0x50 and head[1:] == b"\x2a\x4d\x18"):
        return "zstd"
    return "none"


#: The chunk sources for each compression :func:`detect_compression` names.
DECOMPRESSORS = {"gzip": _gunzip, "zstd": _unzstd, "none": _plain}
