"""Unpack one image layer blob, safely, into a directory overlayfs can use
as a lower layer.

:func:`unpack_layer` streams the blob (gzip, zstd or uncompressed) through a
small tar reader of its own, computes the layer's ``diff_id`` (sha256 of the
uncompressed tar) on the way, and recreates every entry under ``target``:

* files, directories, symlinks, hard links, character and block devices and
  FIFOs, with numeric owner, mode (setuid/setgid/sticky included), mtime and
  the extended attributes of PAX ``SCHILY.xattr.*`` records;
* OCI/Docker whiteouts in overlayfs form: ``.wh.NAME`` becomes a character
  device 0:0 named ``NAME``; ``DIR/.wh..wh..opq`` sets
  ``trusted.overlay.opaque=y`` on ``DIR``; other ``.wh..wh.*`` names (aufs
  bookkeeping such as ``.wh..wh.plnk``, with everything under such a
  directory at the layer root) are skipped;
* a later entry with the same path replaces the earlier one; a directory over
  an existing directory keeps its content and takes the new metadata.

Security policy (the layer is untrusted input, even with a good digest):

* Nothing is ever created, changed or removed outside ``target``. Every
  operation is relative to a directory file descriptor obtained by walking
  the entry's parent path one component at a time from ``target`` with
  ``O_NOFOLLOW|O_DIRECTORY``; no symlink is ever followed, and new files are
  created with ``O_CREAT|O_EXCL`` after removing whatever was at the name,
  so an earlier entry can never redirect a later write.
* :class:`~rktlet.errors.HostileContent` is raised, naming the entry, for:
  absolute names; names with a ``..`` component left after lexical
  normalisation (``./a/../../b``); a parent path that goes through a symlink
  (``evil -> /etc`` then ``evil/passwd``); hard links whose target is
  absolute, escapes with ``..``, goes through a symlink, is a directory or
  does not exist (yet) in this layer; whiteouts named ``.wh..`` or
  ``.wh...``.  Symlink *targets* are stored verbatim (absolute or relative):
  they are resolved inside the container, never by us.
* Layer xattrs named ``trusted.overlay.*`` or ``user.overlay.*`` are
  dropped: they are overlayfs's own control attributes (opaque, redirect,
  metacopy, origin...), and letting a layer set them would let it steer the
  overlay mount (e.g. a redirect exposing other paths); opacity comes only
  from ``.wh..wh..opq``.  Other xattrs are applied after chown (which clears
  ``security.capability``); one the store's filesystem cannot hold
  (``ENOTSUP``, or ``EPERM`` for ``user.*`` on a symlink or device) is
  skipped, an invalid one is an error.
* PAX global headers are ignored (as by Docker and containerd); sparse files,
  paths more than 256 directories deep and every entry type not listed
  above are refused with :class:`~rktlet.errors.InvalidArgument`.
* Memory stays flat: data moves in chunks of at most 1 MiB whatever the
  compression ratio (no decompression bomb can make us buffer).  A stream
  that is corrupt, truncated (gzip trailer or zstd frame missing, tar cut
  inside an entry) or followed by garbage is an
  :class:`~rktlet.errors.InvalidArgument` naming the blob.  A tar cut exactly
  between entries cannot be told from a complete one: the caller's check of
  the returned ``diff_id`` against the image config catches it.
* Budgets (:class:`Limits`): bytes of file content (checked from each
  header before its data is written, so a decompression bomb is stopped
  before it lands), inodes and tar entries per layer, the length of the
  uncompressed stream, and an image-wide :class:`Budget` several layers
  unpacking at once charge together; over one is
  :class:`~rktlet.errors.ResourceExhausted` naming the entry and the limit.
* A :class:`Control` shows another thread how far the stream has been read
  (a watchdog tells a working unpack from a stuck one) and cancels the
  unpack at its next chunk or entry (:class:`UnpackCancelled`).
* Work is linear in the entries: a replaced directory drops its pending
  times in O(depth) (they are kept as a tree), not by scanning them all.
* The layer may hold setuid binaries and device nodes: the caller must keep
  the layer store itself unreachable for unprivileged host users (mode 0700
  on its root), as containerd does.

The layer root (``target`` itself) is set to mode 0755 unless the layer has a
``./`` entry saying otherwise: a temporary directory's 0700 would otherwise
become the container's ``/`` when this layer is the top one.

Ownership is only restored when running as root (as ``tar`` does); rktlet
always runs as root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import stat
import threading
import zlib
from collections import OrderedDict
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from rktlet.errors import HostileContent, InvalidArgument, NotFound, ResourceExhausted, RktletError

__all__ = [
    "Budget", "COMPRESSIONS", "Control", "Limits", "UnpackCancelled", "UnpackResult", "detect_compression",
    "unpack_layer",
]

#: The compressions :func:`unpack_layer` understands.
COMPRESSIONS = ("gzip", "zstd", "none")

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
# Uncompressed data moves in chunks of at most this size: big enough that
# the per-chunk Python overhead is negligible, small enough that memory use
# stays flat however large (or well compressed) the layer is.
_CHUNK = 1 << 20
# Compressed input is read in pieces of this size.
_IN_CHUNK = 256 << 10
# Extension headers (PAX records, GNU long names) are held in memory; real
# ones are a few KiB (xattr values are at most 64 KiB each).
_MAX_EXT_HEADER = 16 << 20
# Deeper paths are refused: real layers stay far below, and Python's
# recursive shutil.rmtree (used to clean up and garbage-collect layers)
# fails on trees deeper than its recursion limit.
_MAX_DEPTH = 256
# Directory fds kept open between entries (most layers list a directory's
# children together, so a small cache makes parent lookups free).
_MAX_CACHED_DIRS = 128
# With byte and inode limits, the tar stream may exceed the content by this
# much per allowed entry (header, padding, a PAX record) plus a fixed slack
# (a few large extension headers).
_STREAM_OVERHEAD_PER_ENTRY = 2048
_STREAM_SLACK = 64 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_META_PREFIX = ".wh..wh."
_OPAQUE_XATTR = "trusted.overlay.opaque"
_DROPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

# Tar type flags.
_REG, _AREG, _CONT = b"0", b"\0", b"7"
_LNK, _SYM, _CHR, _BLK, _DIR, _FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
_PAX, _PAX_GLOBAL = b"x", b"g"
_GNU_LONGNAME, _GNU_LONGLINK = b"L", b"K"
_FILE_TYPES = (_REG, _AREG, _CONT)
# Entries whose size field is not followed by data (as archive/tar and
# tarfile read them).
_HEADER_ONLY_TYPES = (_LNK, _SYM, _CHR, _BLK, _DIR, _FIFO)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnpackCancelled(RktletError):
    """The unpacking was cancelled through its :class:`Control`."""


class Budget:
    """Bytes and inodes that several layers (one image's) may use together.

    Charged from unpacking threads, hence the lock.

    :param max_bytes: bytes of file content, ``None`` for no limit.
    :param max_inodes: inodes, ``None`` for no limit.
    :param what: how messages name the limit (``"the image's"``).
    """

    def __init__(self, max_bytes: int | None, max_inodes: int | None, what: str = "the image's") -> None:
        self.max_bytes = max_bytes
        self.max_inodes = max_inodes
        self.what = what
        self.bytes = 0
        self.inodes = 0
        self._lock = threading.Lock()

    def charge(self, nbytes: int, inodes: int) -> str | None:
        """Add *nbytes* and *inodes* (negative: freed); returns why that is
        over the budget (then nothing is charged), else ``None``."""
        with self._lock:
            if self.max_bytes is not None and nbytes > 0 and self.bytes + nbytes > self.max_bytes:
                return f"{self.what} layers together hold more than {self.max_bytes} bytes of files"
            if self.max_inodes is not None and inodes > 0 and self.inodes + inodes > self.max_inodes:
                return f"{self.what} layers together hold more than {self.max_inodes} inodes"
            self.bytes += nbytes
            self.inodes += inodes
            return None


@dataclass(frozen=True)
class Limits:
    """Budgets of one layer's unpacking; ``None`` is unlimited.

    :ivar max_bytes: bytes of file content written (replaced files count).
    :ivar max_inodes: inodes the layer holds, and tar entries it may have.
    :ivar shared: a :class:`Budget` charged as well (the image's).

    The uncompressed tar stream itself may be longer than the content by
    what headers need (:data:`_STREAM_OVERHEAD_PER_ENTRY` per allowed entry
    plus :data:`_STREAM_SLACK`) and no more.
    """

    max_bytes: int | None = None
    max_inodes: int | None = None
    shared: Budget | None = None

    @property
    def max_stream(self) -> int | None:
        if self.max_bytes is None or self.max_inodes is None:
            return None
        return self.max_bytes + self.max_inodes * _STREAM_OVERHEAD_PER_ENTRY + _STREAM_SLACK


class Control:
    """Watching and stopping an unpack running in another thread.

    :ivar offset: bytes of the uncompressed tar stream consumed so far (the
        owner polls it to tell a working unpack from a stuck one).
    """

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self.offset = 0

    def cancel(self) -> None:
        """Make the unpack stop (soon: at its next chunk or entry) with
        :class:`UnpackCancelled`."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


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
    sources = {"gzip": _gunzip, "zstd": _unzstd, "none": _plain}
    if compression not in sources:
        raise InvalidArgument(f"unknown layer compression {compression!r}, expected one of {COMPRESSIONS}")
    try:
        blob = open(blob_path, "rb", buffering=0)
    except FileNotFoundError:
        raise NotFound(f"{what} does not exist") from None
    chunks = sources[compression](blob)
    with blob, closing(chunks):
        stream = _Stream(chunks, limits.max_stream, control, what)
        with _Extractor(target, what, limits) as extractor:
            try:
                reader = _TarReader(stream)
                while (entry := reader.next()) is not None:
                    if control is not None and control.cancelled:
                        raise UnpackCancelled(f"unpacking {what} was cancelled")
                    extractor.extract(entry, reader)
                # The diff_id covers the whole stream, end-of-archive padding
                # included; draining also checks the compressed stream ends well.
                stream.drain()
            except _Corrupt as e:
                raise InvalidArgument(f"{what}: {e}") from None
            extractor.finish()
    return UnpackResult(diff_id="sha256:" + stream.hexdigest(), size=extractor.size, inodes=extractor.inodes)


# -- decompression -----------------------------------------------------------------


class _Corrupt(Exception):
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
                        raise _Corrupt("corrupt gzip stream: garbage after the last member")
                    data = f.read(_IN_CHUNK)
                break
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            members += 1
        try:
            out = d.decompress(data, _CHUNK)
        except zlib.error as e:
            raise _Corrupt(f"corrupt gzip stream: {e}") from None
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
            raise _Corrupt(f"corrupt gzip stream: {e}") from None
        if out:
            yield out
        if not d.eof:
            raise _Corrupt("truncated gzip stream")
    if members == 0:
        raise _Corrupt("empty gzip stream")


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
                raise _Corrupt("corrupt zstd stream: no frame magic where a frame should start")
        elif state == self._SKIPPABLE_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._state = self._MAGIC
        elif state == self._FRAME_HEADER:
            descriptor = header[0]
            if descriptor & 0x08:
                raise _Corrupt("corrupt zstd stream: reserved frame header bit set")
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
                raise _Corrupt("corrupt zstd stream: reserved block type")
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
        raise _Corrupt(f"corrupt zstd stream: {e}") from None
    if _Source.read(_IN_CHUNK):
        raise _Corrupt("corrupt zstd stream: data after the last frame")
    if framing.frames == 0:
        raise _Corrupt("empty zstd stream")
    if not framing.complete():
        raise _Corrupt("truncated zstd stream")


def _plain(f: BinaryIO) -> Generator[bytes, None, None]:
    """Chunks of an uncompressed blob."""
    while data := f.read(_CHUNK):
        yield data


class _Stream:
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
                    raise _Corrupt(f"truncated tar stream at offset {self.offset}")
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
                    raise _Corrupt(f"truncated tar stream at offset {self.offset}")
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


# -- tar ---------------------------------------------------------------------------


@dataclass
class _Entry:
    """One tar member, extension headers applied."""

    name: str
    type: bytes
    linkname: str
    size: int  # bytes of data following the header
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] | None


def _cstr(field: bytes) -> bytes:
    """A NUL-terminated header field."""
    end = field.find(0)
    return field if end < 0 else field[:end]


def _num(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 binary."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # negative, two's complement
            value -= 1 << (8 * (len(field) - 1))
        elif field[0] != 0x80:
            raise ValueError(f"bad base-256 number {field!r}")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _decode(raw: bytes) -> str:
    """A path from a header: bytes that are not UTF-8 survive the round trip
    to the file system (the os module encodes with surrogateescape too)."""
    return raw.decode("utf-8", "surrogateescape")


def _pax_ns(value: bytes) -> int:
    """A PAX time (``[-]seconds[.fraction]``) in nanoseconds."""
    text = value.decode("ascii").strip()
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-+").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(text)
    ns = int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    return -ns if negative else ns


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX extended header records: ``LEN KEY=VALUE\\n`` each, LEN counting
    the whole record.  Values stay bytes (xattr values are binary)."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the records
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0:
            raise _Corrupt("malformed PAX record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _Corrupt("malformed PAX record length") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise _Corrupt("malformed PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise _Corrupt("malformed PAX record")
        records[key] = value
        pos = end
    return records


class _TarReader:
    """Streaming reader of ustar / GNU / PAX archives.

    :meth:`next` returns the next entry with its extension headers (PAX
    records, GNU long names) applied; the entry's data is then read with
    :meth:`copy_data` or is skipped automatically by the following
    :meth:`next`.
    """

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._data_left = 0  # unread data of the current entry
        self._pad_left = 0  # then its padding to the block size

    def next(self) -> _Entry | None:
        """The next entry, or None at the end of the archive."""
        stream = self._stream
        stream.skip(self._data_left + self._pad_left)
        self._data_left = self._pad_left = 0
        pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            offset = stream.offset
            block = stream.read(_BLOCK)
            if not block or block == _ZERO_BLOCK:
                # End of archive (a missing end marker is tolerated, as by
                # tarfile and archive/tar: the diff_id still covers it).
                if pax or long_name is not None or long_link is not None:
                    raise _Corrupt(f"truncated tar stream: extension header at offset {offset} ends the archive")
                return None
            if len(block) < _BLOCK:
                raise _Corrupt(f"truncated tar stream: partial header at offset {offset}")
            try:
                header = self._header(block)
            except ValueError as e:
                raise _Corrupt(f"invalid tar header at offset {offset}: {e}") from None
            kind = header[1]
            size = header[3]
            if kind in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                if size > _MAX_EXT_HEADER:
                    raise _Corrupt(f"tar extension header of {size} bytes at offset {offset} is too large")
                data = stream.read(size)
                if len(data) < size:
                    raise _Corrupt(f"truncated tar stream: extension header at offset {offset}")
                stream.skip(-size % _BLOCK)
                if kind == _PAX:
                    pax.update(_parse_pax(data))
                elif kind == _GNU_LONGNAME:
                    long_name = _cstr(data)
                elif kind == _GNU_LONGLINK:
                    long_link = _cstr(data)
                # PAX global headers are ignored, as by Docker and containerd.
                continue
            return self._entry(header, pax, long_name, long_link, offset)

    @staticmethod
    def _header(block: bytes) -> tuple[bytes, bytes, bytes, int, int, int, int, int, int, int]:
        """(name, type, linkname, size, mode, uid, gid, mtime, devmajor,
        devminor) of a header block; ValueError if it is not one."""
        stored = _num(block[148:156])
        # The checksum is the sum of the header's bytes with its own field
        # read as spaces; some old tars summed signed bytes.
        unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
        if stored != unsigned:
            signed = unsigned - 256 * sum(1 for b in block if b & 0x80) + 256 * sum(
                1 for b in block[148:156] if b & 0x80)
            if stored != signed:
                raise ValueError("bad checksum")
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\0":  # POSIX ustar: name prefix field
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        kind = block[156:157]
        if kind == _AREG and name.endswith(b"/"):  # old tars: directory
            kind = _DIR
        return (
            name, kind, _cstr(block[157:257]), _num(block[124:136]), _num(block[100:108]),
            _num(block[108:116]), _num(block[116:124]), _num(block[136:148]),
            _num(block[329:337]), _num(block[337:345]),
        )

    def _entry(self, header: tuple, pax: dict[bytes, bytes], long_name: bytes | None,
               long_link: bytes | None, offset: int) -> _Entry:
        raw_name, kind, raw_link, size, mode, uid, gid, mtime, devmajor, devminor = header
        if long_name is not None:
            raw_name = long_name
        if long_link is not None:
            raw_link = long_link
        mtime_ns = mtime * 1_000_000_000
        atime_ns = None
        xattrs: dict[str, bytes] | None = None
        if pax:
            raw_name = pax.get(b"path", raw_name)
            raw_link = pax.get(b"linkpath", raw_link)
            try:
                if b"size" in pax:
                    size = int(pax[b"size"])
                if b"uid" in pax:
                    uid = int(pax[b"uid"])
                if b"gid" in pax:
                    gid = int(pax[b"gid"])
                if b"mtime" in pax:
                    mtime_ns = _pax_ns(pax[b"mtime"])
                if b"atime" in pax:
                    atime_ns = _pax_ns(pax[b"atime"])
            except (ValueError, UnicodeDecodeError):
                raise _Corrupt(f"invalid PAX record in the header at offset {offset}") from None
            for key, value in pax.items():
                if key.startswith(b"SCHILY.xattr."):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[_decode(key[13:])] = value
                elif key.startswith(b"GNU.sparse."):
                    raise InvalidArgument(
                        f"layer entry {_decode(raw_name)!r}: sparse files are not supported")
        if size < 0 or uid < 0 or gid < 0:
            raise _Corrupt(f"negative size or owner in the header at offset {offset}")
        if kind in _HEADER_ONLY_TYPES:
            self._data_left = self._pad_left = 0
        else:
            self._data_left, self._pad_left = size, -size % _BLOCK
        return _Entry(
            name=_decode(raw_name), type=kind, linkname=_decode(raw_link), size=self._data_left,
            mode=mode & 0o7777, uid=uid, gid=gid, mtime_ns=mtime_ns,
            atime_ns=mtime_ns if atime_ns is None else atime_ns,
            devmajor=devmajor, devminor=devminor, xattrs=xattrs,
        )

    def copy_data(self, fd: int) -> int:
        """Write the current entry's data to *fd*; returns its size."""
        n = self._data_left
        self._stream.copy_to(fd, n)
        self._data_left = 0
        return n


# -- extraction --------------------------------------------------------------------


class _PendingTimes:
    """Directory times to set at the end, kept as a tree of path components
    so that a replaced directory's subtree is dropped in O(depth), not by
    scanning every pending path (which made layers replacing many
    directories quadratic)."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        # A node: [times or None, {child name: node}].
        self._root: list = [None, {}]

    def set(self, path: str, times: tuple[int, int]) -> None:
        node = self._root
        if path:
            for part in path.split("/"):
                node = node[1].setdefault(part, [None, {}])
        node[0] = times

    def drop(self, path: str) -> None:
        """Forget *path* (never the root) and everything below it."""
        parent, _, name = path.rpartition("/")
        node = self._root
        if parent:
            for part in parent.split("/"):
                node = node[1].get(part)
                if node is None:
                    return
        node[1].pop(name, None)

    def items(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """``(path, times)`` of every pending directory, parents first."""
        stack = [("", self._root)]
        while stack:
            path, (times, children) = stack.pop()
            if times is not None:
                yield path, times
            for name, child in children.items():
                stack.append((f"{path}/{name}" if path else name, child))


class _Extractor:
    """Creates entries under the target directory, never following a symlink.

    Directories are reached through file descriptors opened component by
    component with ``O_NOFOLLOW``, cached by normalised path between entries.
    """

    def __init__(self, target: str, what: str, limits: Limits | None = None) -> None:
        self._what = what
        self._limits = limits or Limits()
        self._entries = 0
        self._charged_inodes = 0
        self._root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs: OrderedDict[str, int] = OrderedDict()
        # Directory mtimes are set last: creating children changes them.
        self._dir_times = _PendingTimes()
        self._chown = os.geteuid() == 0
        self._entry_name = ""
        self.size = 0
        self.inodes = 0
        # See the module docstring: a temp dir's 0700 must not leak into "/".
        os.fchmod(self._root, 0o755)

    def __enter__(self) -> "_Extractor":
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        os.close(self._root)

    # errors

    def _hostile(self, why: str) -> HostileContent:
        return HostileContent(f"{self._what}: entry {self._entry_name!r}: {why}")

    def _invalid(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self._what}: entry {self._entry_name!r}: {why}")

    # paths

    def _normalize(self, name: str, what: str) -> str:
        """*name* relative to the layer root, normalised ("" for the root)."""
        if "\0" in name:
            raise self._invalid(f"{what} contains a NUL byte")
        if name.startswith("/"):
            raise self._hostile(f"{what} {name!r} is absolute")
        norm = posixpath.normpath(name) if name else "."
        if norm == ".":
            return ""
        if norm == ".." or norm.startswith("../"):
            raise self._hostile(f"{what} {name!r} leads outside the layer")
        if norm.count("/") >= _MAX_DEPTH:
            raise self._invalid(f"{what} is deeper than {_MAX_DEPTH} directories")
        return norm

    def _dir(self, path: str, create: bool) -> int:
        """An fd of directory *path* (normalised, "" for the root), reached
        without following symlinks; missing components are created (mode
        0755) when *create*, else FileNotFoundError."""
        if not path:
            return self._root
        fd = self._dirs.get(path)
        if fd is not None:
            self._dirs.move_to_end(path)
            return fd
        parts = path.split("/")
        # Start from the deepest cached ancestor.
        depth = len(parts) - 1
        fd = self._root
        while depth > 0:
            cached = self._dirs.get("/".join(parts[:depth]))
            if cached is not None:
                fd = cached
                break
            depth -= 1
        owned = False  # whether fd is ours to close (an uncached ancestor)
        for i in range(depth, len(parts)):
            try:
                child = self._open_dir(fd, parts[i], create)
            finally:
                if owned:
                    os.close(fd)
            # Cache the directory itself and, within a bound, its ancestors
            # (fds in use by this entry must not be closed before _trim, so a
            # very deep path must not make us hold thousands of fds).
            if i == len(parts) - 1 or len(self._dirs) < 2 * _MAX_CACHED_DIRS:
                self._dirs["/".join(parts[:i + 1])] = child
                owned = False
            else:
                owned = True
            fd = child
        return fd

    def _open_dir(self, parent_fd: int, name: str, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.lstat(name, dir_fd=parent_fd)
            if stat.S_ISLNK(st.st_mode):
                raise self._hostile(f"its path goes through the symlink {name!r}") from None
            raise self._invalid(f"its path goes through {name!r}, which is not a directory") from None
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        self.inodes += 1
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, 0o755)  # whatever the umask
        return fd

    def _forget(self, path: str) -> None:
        """Drop cached fds and pending mtimes at and below removed *path*."""
        below = path + "/"
        # The fd cache holds at most 2 * _MAX_CACHED_DIRS entries: a scan is
        # cheap.  Pending times are a tree: dropping a subtree is O(depth).
        if self._dirs:
            for key in [k for k in self._dirs if k.startswith(below) or k == path]:
                os.close(self._dirs.pop(key))
        self._dir_times.drop(path)

    def _trim(self) -> None:
        """Close the least recently used dir fds beyond the cache size (only
        between entries, when no fd is in use)."""
        while len(self._dirs) > _MAX_CACHED_DIRS:
            os.close(self._dirs.popitem(last=False)[1])

    def _remove(self, parent_fd: int, name: str, path: str) -> None:
        """Remove whatever is at *name* (this layer's earlier entry)."""
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget(path)
            try:
                os.rmdir(name, dir_fd=parent_fd)  # the common case: empty
                self.inodes -= 1
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            self.inodes -= self._count_inodes(parent_fd, name)
            shutil.rmtree(name, dir_fd=parent_fd)  # fd-based, never follows symlinks
        else:
            os.unlink(name, dir_fd=parent_fd)
            if st.st_nlink == 1:
                self.inodes -= 1

    @staticmethod
    def _count_inodes(parent_fd: int, name: str) -> int:
        """Inodes that removing the tree *name* frees (hard-linked ones only
        when all their names are inside it)."""
        dirs = 0
        names_by_inode: dict[int, list[int]] = {}
        for _, subdirs, files, dir_fd in os.fwalk(name, dir_fd=parent_fd, follow_symlinks=False):
            dirs += 1
            for entry in files + subdirs:
                st = os.lstat(entry, dir_fd=dir_fd)
                if stat.S_ISDIR(st.st_mode):
                    continue  # counted when walked
                names_by_inode.setdefault(st.st_ino, [st.st_nlink, 0])[1] += 1
        return dirs + sum(1 for nlink, seen in names_by_inode.values() if seen >= nlink)

    # metadata

    def _set_xattrs(self, target: int | str, xattrs: dict[str, bytes]) -> None:
        """Apply the layer's xattrs to an fd or a (/proc/self/fd based) path,
        dropping overlayfs's own attributes (see the module docstring)."""
        follow = isinstance(target, int)  # an fd: nothing to follow (and os insists)
        for key, value in xattrs.items():
            if key.startswith(_DROPPED_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                    continue  # not representable on this file system / inode type
                raise self._invalid(f"cannot set xattr {key!r}: {e.strerror}") from None

    def _proc_path(self, parent_fd: int, name: str) -> str:
        # Symlinks, devices and FIFOs cannot be opened for fsetxattr without
        # following or triggering them; the magic link resolves to the
        # already verified parent, and the last component is not followed.
        return f"/proc/self/fd/{parent_fd}/{name}"

    # entries

    def extract(self, entry: _Entry, reader: _TarReader) -> None:
        """Create *entry* under the target (reading its data from *reader*)."""
        self._entry_name = entry.name
        limits = self._limits
        self._entries += 1
        if limits.max_inodes is not None and self._entries > limits.max_inodes:
            raise ResourceExhausted(f"{self._what} has more than {limits.max_inodes} entries "
                                    f"(the limit is {limits.max_inodes} inodes)")
        if entry.type in _FILE_TYPES and entry.size:
            self._charge_bytes(entry.size)
        try:
            self._extract(entry, reader)
            self._charge_inodes()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhausted(
                    f"no space left unpacking {self._what} (entry {entry.name!r})") from None
            if e.errno in (errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP, errno.ENOTDIR, errno.EISDIR,
                           errno.EEXIST, errno.ENOENT, errno.EMLINK, errno.ENOTEMPTY, errno.EXDEV):
                raise self._invalid(f"cannot create it: {e.strerror}") from None
            raise
        except (ValueError, OverflowError) as e:  # a NUL in a symlink target, a huge uid...
            raise self._invalid(str(e)) from None
        finally:
            self._trim()

    def _extract(self, entry: _Entry, reader: _TarReader) -> None:
        path = self._normalize(entry.name, "name")
        parent, _, name = path.rpartition("/")
        kind = entry.type

        if path.startswith(_META_PREFIX) and path != _OPAQUE_MARKER:
            return  # aufs bookkeeping trees at the root (.wh..wh.plnk/...)
        if name.startswith(_WHITEOUT_PREFIX):
            self._whiteout(parent, name, entry)
            return
        if not path:
            if kind != _DIR:
                raise self._invalid("only a directory can be the layer root")
            self._apply_dir_meta(self._root, "", entry)
            return

        if kind in _FILE_TYPES:
            parent_fd = self._dir(parent, True)
            fd = self._create(parent_fd, name, path,
                              lambda: os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd))
            try:
                self.size += reader.copy_data(fd)
                if self._chown:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, entry.mode)  # after chown, which clears setuid
                if entry.xattrs:
                    self._set_xattrs(fd, entry.xattrs)  # after chown too (capabilities)
                os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
            self.inodes += 1
        elif kind == _DIR:
            parent_fd = self._dir(parent, True)
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                self.inodes += 1
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
                    self._remove(parent_fd, name, path)
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                    self.inodes += 1
            self._apply_dir_meta(self._dir(path, False), path, entry)
        elif kind == _SYM:
            parent_fd = self._dir(parent, True)
            self._create(parent_fd, name, path, lambda: os.symlink(entry.linkname, name, dir_fd=parent_fd))
            self._apply_meta_nofollow(parent_fd, name, entry, chmod=False)
            self.inodes += 1
        elif kind == _LNK:
            self._hard_link(parent, name, path, entry)
        elif kind in (_CHR, _BLK, _FIFO):
            parent_fd = self._dir(parent, True)
            fmt = {_CHR: stat.S_IFCHR, _BLK: stat.S_IFBLK, _FIFO: stat.S_IFIFO}[kind]
            dev = os.makedev(entry.devmajor, entry.devminor) if kind != _FIFO else 0
            self._create(parent_fd, name, path, lambda: os.mknod(name, fmt | 0o600, dev, dir_fd=parent_fd))
            self._apply_meta_nofollow(parent_fd, name, entry, chmod=True)
            self.inodes += 1
        else:
            raise self._invalid(f"unsupported tar entry type {kind!r}")

    # budgets

    def _over(self, why: str) -> ResourceExhausted:
        return ResourceExhausted(f"{self._what}: entry {self._entry_name!r}: {why}")

    def _charge_bytes(self, n: int) -> None:
        """Account for *n* bytes of file content about to be written."""
        limits = self._limits
        if limits.max_bytes is not None and self.size + n > limits.max_bytes:
            raise self._over(f"the layer holds more than {limits.max_bytes} bytes of files")
        if limits.shared is not None and (why := limits.shared.charge(n, 0)) is not None:
            raise self._over(why)

    def _charge_inodes(self) -> None:
        """Account for the inodes the last entry made (or freed)."""
        limits = self._limits
        delta = self.inodes - self._charged_inodes
        if not delta:
            return
        if limits.max_inodes is not None and self.inodes > limits.max_inodes:
            raise self._over(f"the layer holds more than {limits.max_inodes} inodes")
        if limits.shared is not None and (why := limits.shared.charge(0, delta)) is not None:
            raise self._over(why)
        self._charged_inodes = self.inodes

    def _create(self, parent_fd: int, name: str, path: str, make):  # type: ignore[no-untyped-def]
        """Run *make* (which creates *name* exclusively); if something is in
        the way, remove it (a later entry replaces an earlier one) and retry."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent_fd, name, path)
            return make()

    def _apply_dir_meta(self, fd: int, path: str, entry: _Entry) -> None:
        if self._chown:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)  # after chown, which clears setgid
        if entry.xattrs:
            self._set_xattrs(fd, entry.xattrs)
        self._dir_times.set(path, (entry.atime_ns, entry.mtime_ns))

    def _apply_meta_nofollow(self, parent_fd: int, name: str, entry: _Entry, chmod: bool) -> None:
        """Owner, mode, xattrs and times of a symlink, device or FIFO *name*
        just created in *parent_fd* (never opened: that would follow or
        trigger it)."""
        if self._chown:
            os.chown(name, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        if chmod:
            # Linux has no lchmod; *name* is the device/FIFO just created
            # exclusively, not a symlink, so following it is moot.
            os.chmod(name, entry.mode, dir_fd=parent_fd)
        if entry.xattrs:
            self._set_xattrs(self._proc_path(parent_fd, name), entry.xattrs)
        os.utime(name, ns=(entry.atime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def _hard_link(self, parent: str, name: str, path: str, entry: _Entry) -> None:
        target = self._normalize(entry.linkname, "hard link target")
        if not target:
            raise self._hostile("hard link to the layer root")
        if target == path:
            raise self._invalid("hard link to itself")
        if target.startswith(path + "/"):
            raise self._invalid(f"hard link replaces a directory holding its target {entry.linkname!r}")
        target_parent, _, target_name = target.rpartition("/")
        missing = self._hostile(f"hard link target {entry.linkname!r} does not exist in this layer")
        try:
            target_parent_fd = self._dir(target_parent, False)
            st = os.lstat(target_name, dir_fd=target_parent_fd)
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        except InvalidArgument as e:  # a non-directory on the way: missing, too
            if isinstance(e, HostileContent):
                raise
            raise missing from None
        if stat.S_ISDIR(st.st_mode):
            raise self._hostile(f"hard link target {entry.linkname!r} is a directory")
        parent_fd = self._dir(parent, True)
        self._create(parent_fd, name, path, lambda: os.link(
            target_name, name, src_dir_fd=target_parent_fd, dst_dir_fd=parent_fd, follow_symlinks=False))

    def _whiteout(self, parent: str, name: str, entry: _Entry) -> None:
        if name == _OPAQUE_MARKER:
            # Creating the directory if the marker comes before its entry.
            fd = self._dir(parent, True)
            try:
                os.setxattr(fd, _OPAQUE_XATTR, b"y")
            except OSError as e:
                raise self._invalid(f"cannot mark {parent or '/'!r} opaque: {e.strerror}") from None
            return
        if name.startswith(_META_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs...)
        hidden = name[len(_WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise self._hostile(f"whiteout of {hidden!r} does not name an entry of its directory")
        parent_fd = self._dir(parent, True)
        path = f"{parent}/{hidden}" if parent else hidden
        self._remove(parent_fd, hidden, path)
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
        self.inodes += 1

    def finish(self) -> None:
        """Set directory mtimes, now that nothing more is created in them."""
        for path, times in self._dir_times.items():
            self._entry_name = path or "."
            os.utime(self._dir(path, False), ns=times)
            self._trim()
        self._dir_times = _PendingTimes()
