"""A small tar reader of our own: headers (ustar, GNU long names, PAX
records) parsed into :class:`Entry` values; data is copied straight from the
stream to a file descriptor."""

from __future__ import annotations

from dataclasses import dataclass

from rktlet.errors import InvalidArgument
from rktlet.image.unpack.decompress import Corrupt, Stream

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
# Extension headers (PAX records, GNU long names) are held in memory; real
# ones are a few KiB (xattr values are at most 64 KiB each).
_MAX_EXT_HEADER = 16 << 20

# Tar type flags.
REG, AREG, CONT = b"0", b"\0", b"7"
LNK, SYM, CHR, BLK, DIR, FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
PAX, PAX_GLOBAL = b"x", b"g"
GNU_LONGNAME, GNU_LONGLINK = b"L", b"K"
FILE_TYPES = (REG, AREG, CONT)
# Entries whose size field is not followed by data (as archive/tar and
# tarfile read them).
HEADER_ONLY_TYPES = (LNK, SYM, CHR, BLK, DIR, FIFO)

# -- tar ---------------------------------------------------------------------------


@dataclass
class Entry:
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
            raise Corrupt("malformed PAX record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise Corrupt("malformed PAX record length") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise Corrupt("malformed PAX record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise Corrupt("malformed PAX record")
        records[key] = value
        pos = end
    return records


class TarReader:
    """Streaming reader of ustar / GNU / PAX archives.

    :meth:`next` returns the next entry with its extension headers (PAX
    records, GNU long names) applied; the entry's data is then read with
    :meth:`copy_data` or is skipped automatically by the following
    :meth:`next`.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._data_left = 0  # unread data of the current entry
        self._pad_left = 0  # then its padding to the block size

    def next(self) -> Entry | None:
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
                    raise Corrupt(f"truncated tar stream: extension header at offset {offset} ends the archive")
                return None
            if len(block) < _BLOCK:
                raise Corrupt(f"truncated tar stream: partial header at offset {offset}")
            try:
                header = self._header(block)
            except ValueError as e:
                raise Corrupt(f"invalid tar header at offset {offset}: {e}") from None
            kind = header[1]
            size = header[3]
            if kind in (PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK):
                if size > _MAX_EXT_HEADER:
                    raise Corrupt(f"tar extension header of {size} bytes at offset {offset} is too large")
                data = stream.read(size)
                if len(data) < size:
                    raise Corrupt(f"truncated tar stream: extension header at offset {offset}")
                stream.skip(-size % _BLOCK)
                if kind == PAX:
                    pax.update(_parse_pax(data))
                elif kind == GNU_LONGNAME:
                    long_name = _cstr(data)
                elif kind == GNU_LONGLINK:
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
        if kind == AREG and name.endswith(b"/"):  # old tars: directory
            kind = DIR
        return (
            name, kind, _cstr(block[157:257]), _num(block[124:136]), _num(block[100:108]),
            _num(block[108:116]), _num(block[116:124]), _num(block[136:148]),
            _num(block[329:337]), _num(block[337:345]),
        )

    def _entry(self, header: tuple, pax: dict[bytes, bytes], long_name: bytes | None,
               long_link: bytes | None, offset: int) -> Entry:
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
                raise Corrupt(f"invalid PAX record in the header at offset {offset}") from None
            for key, value in pax.items():
                if key.startswith(b"SCHILY.xattr."):
                    if xattrs is None:
                        xattrs = {}
                    xattrs[_decode(key[13:])] = value
                elif key.startswith(b"GNU.sparse."):
                    raise InvalidArgument(
                        f"layer entry {_decode(raw_name)!r}: sparse files are not supported")
        if size < 0 or uid < 0 or gid < 0:
            raise Corrupt(f"negative size or owner in the header at offset {offset}")
        if kind in HEADER_ONLY_TYPES:
            self._data_left = self._pad_left = 0
        else:
            self._data_left, self._pad_left = size, -size % _BLOCK
        return Entry(
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


