"""SPDY/3 frames as Kubernetes uses them: layouts, name/value header blocks
and their zlib compression with the SPDY/3 dictionary.

Pure code, no I/O: :class:`FrameWriter` turns frame objects into bytes and
:class:`FrameReader` turns a byte stream, fed in arbitrary pieces, back into
frame objects. Each owns the zlib context of one direction of a connection:
SPDY compresses all header blocks of a direction as *one* zlib stream, each
block ending in a sync flush, so a reader or writer must live exactly as long
as its connection (pitfall 2 of the streaming reference).

The "3.1" of the ``Upgrade: SPDY/3.1`` token changes nothing here: the framing
is version 3 (the Go framer Kubernetes uses never sets anything else).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

# Control frame types (the Go framer knows no others; 5/NOOP and 10/CREDENTIAL
# do not exist there, and an unknown type makes it drop the connection, so we
# never send anything else).
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
INVALID_CREDENTIALS = 10
FRAME_TOO_LARGE = 11

# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

MAX_LENGTH = 0xFFFFFF  # 24-bit length field
MAX_STREAM_ID = 0x7FFFFFFF
# Decompressed header blocks larger than this are refused: a few bytes of
# deflate can expand to megabytes, and Kubernetes sends a handful of headers.
MAX_HEADER_BLOCK = 256 * 1024

# The SPDY/3 header compression dictionary, as the draft specifies it: a run
# of 4-byte-length-prefixed words followed by a run of raw text. Built here
# from that structure; tests check it against its published length (1423),
# Adler-32 (0xe3c6a7c2, the zlib DICTID) and SHA-256.
_DICTIONARY_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control "
    "connection content-base content-encoding content-language content-length "
    "content-location content-md5 content-range content-type date etag expect "
    "expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma "
    "proxy-authenticate proxy-authorization range referer retry-after server te "
    "trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status"
).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414"
    "415416417502504505203 Non-Authoritative Information204 No Content301 Moved "
    "Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 "
    "Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar "
    "Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, "
    "Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in _DICTIONARY_WORDS) + _DICTIONARY_TAIL.encode(
    "ascii"
)

Headers = dict[str, str]
"""A header block: lower-case name -> value (several values joined by NUL)."""


class ProtocolError(Exception):
    """The peer sent bytes that are not valid SPDY/3; the connection is unusable."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    associated_id: int = 0
    priority: int = 0
    slot: int = 0
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)

    @property
    def unidirectional(self) -> bool:
        return bool(self.flags & FLAG_UNIDIRECTIONAL)


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    """``entries``: (flags, id, value) triples."""

    entries: tuple[tuple[int, int, int], ...] = ()
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes = b""
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True)
class UnknownControl:
    """A control frame of a version or type this framer does not know; the
    connection ignores it."""

    version: int
    frame_type: int
    flags: int
    payload: bytes


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data | UnknownControl


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: count, then length-prefixed pairs.
    Names go out lower-case, as the Go peer requires."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        n = name.lower().encode("latin-1")
        v = value.encode("latin-1")
        parts.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
    return b"".join(parts)


def decode_header_block(block: bytes) -> Headers:
    """Parse an uncompressed name/value block; the block must be used exactly."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        pos = 4
        headers: Headers = {}
        for _ in range(count):
            (nlen,) = struct.unpack_from(">I", block, pos)
            pos += 4
            name = block[pos : pos + nlen]
            if len(name) != nlen or nlen == 0:
                raise ProtocolError("truncated or empty header name")
            pos += nlen
            (vlen,) = struct.unpack_from(">I", block, pos)
            pos += 4
            value = block[pos : pos + vlen]
            if len(value) != vlen:
                raise ProtocolError("truncated header value")
            pos += vlen
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            # Duplicates are a peer bug; keep every value, NUL-joined as SPDY does.
            headers[key] = headers[key] + "\0" + text if key in headers else text
    except struct.error as e:
        raise ProtocolError(f"truncated header block: {e}") from None
    if pos != len(block):
        raise ProtocolError(f"{len(block) - pos} stray bytes after the header block")
    return headers


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError("control frame too large")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def data_frame_header(stream_id: int, length: int, flags: int = 0) -> bytes:
    """The 8 bytes in front of a DATA payload of *length* bytes."""
    if not 0 < stream_id <= MAX_STREAM_ID or length > MAX_LENGTH:
        raise ValueError(f"invalid DATA frame (stream {stream_id}, {length} bytes)")
    return struct.pack(">II", stream_id, (flags << 24) | length)


class FrameWriter:
    """Encodes frames for one direction of a connection (owns its compressor)."""

    def __init__(self, level: int = zlib.Z_DEFAULT_COMPRESSION) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, zdict=DICTIONARY)

    def compress_headers(self, headers: Headers) -> bytes:
        """One header block of this direction's zlib stream, sync-flushed."""
        block = encode_header_block(headers)
        return self._compressor.compress(block) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case Data(stream_id, data, flags):
                return data_frame_header(stream_id, len(data), flags) + data
            case SynStream(sid, headers, assoc, priority, slot, flags):
                payload = struct.pack(">IIBB", sid, assoc, (priority & 7) << 5, slot) + self.compress_headers(headers)
                return _control(SYN_STREAM, flags, payload)
            case SynReply(sid, headers, flags):
                return _control(SYN_REPLY, flags, struct.pack(">I", sid) + self.compress_headers(headers))
            case HeadersFrame(sid, headers, flags):
                return _control(HEADERS, flags, struct.pack(">I", sid) + self.compress_headers(headers))
            case RstStream(sid, status):
                return _control(RST_STREAM, 0, struct.pack(">II", sid, status))
            case Settings(entries, flags):
                body = b"".join(struct.pack(">II", (f << 24) | i, v) for f, i, v in entries)
                return _control(SETTINGS, flags, struct.pack(">I", len(entries)) + body)
            case Ping(ping_id):
                return _control(PING, 0, struct.pack(">I", ping_id))
            case GoAway(last, status):
                return _control(GOAWAY, 0, struct.pack(">II", last, status))
            case WindowUpdate(sid, delta):
                return _control(WINDOW_UPDATE, 0, struct.pack(">II", sid, delta))
            case UnknownControl(version, frame_type, flags, payload):
                return struct.pack(">HHI", 0x8000 | version, frame_type, (flags << 24) | len(payload)) + payload
        raise TypeError(f"not a SPDY frame: {frame!r}")


class FrameReader:
    """Decodes the frames of one direction of a connection from bytes fed in
    any pieces (owns the decompressor of that direction)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._decompressor = zlib.decompressobj(zdict=DICTIONARY)
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Add *data* and return every frame now complete, in order.

        :raises ProtocolError: the stream is not valid SPDY/3; every later
            call raises it again (the zlib context cannot be trusted).
        """
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        frames: list[Frame] = []
        buf = self._buffer
        pos = 0
        try:
            while len(buf) - pos >= 8:
                word, flags_len = struct.unpack_from(">II", buf, pos)
                length = flags_len & MAX_LENGTH
                if len(buf) - pos < 8 + length:
                    break
                payload = bytes(buf[pos + 8 : pos + 8 + length])
                pos += 8 + length
                flags = flags_len >> 24
                if word & 0x80000000:
                    frames.append(self._control((word >> 16) & 0x7FFF, word & 0xFFFF, flags, payload))
                else:
                    if word == 0:
                        raise ProtocolError("DATA frame on stream 0")
                    frames.append(Data(word, payload, flags))
        except ProtocolError as e:
            self._broken = e
            raise
        finally:
            del buf[:pos]
        return frames

    def _headers(self, block: bytes) -> Headers:
        try:
            raw = self._decompressor.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise ProtocolError(f"header block does not decompress: {e}") from None
        if self._decompressor.unconsumed_tail:
            raise ProtocolError("header block too large")
        return decode_header_block(raw)

    def _control(self, version: int, frame_type: int, flags: int, payload: bytes) -> Frame:
        if version != VERSION or frame_type not in _LAYOUTS:
            return UnknownControl(version, frame_type, flags, payload)
        minimum, exact = _LAYOUTS[frame_type]
        if len(payload) < minimum or (exact and len(payload) != minimum):
            raise ProtocolError(f"control frame type {frame_type} with bad length {len(payload)}")
        if frame_type == SYN_STREAM:
            sid, assoc, prio, slot = struct.unpack_from(">IIBB", payload)
            sid &= MAX_STREAM_ID
            _require_stream(sid, "SYN_STREAM")
            return SynStream(sid, self._headers(payload[10:]), assoc & MAX_STREAM_ID, prio >> 5, slot, flags)
        if frame_type in (SYN_REPLY, HEADERS):
            (sid,) = struct.unpack_from(">I", payload)
            sid &= MAX_STREAM_ID
            _require_stream(sid, "SYN_REPLY" if frame_type == SYN_REPLY else "HEADERS")
            headers = self._headers(payload[4:])
            return SynReply(sid, headers, flags) if frame_type == SYN_REPLY else HeadersFrame(sid, headers, flags)
        if frame_type == RST_STREAM:
            sid, status = struct.unpack(">II", payload)
            _require_stream(sid & MAX_STREAM_ID, "RST_STREAM")
            if status == 0:
                raise ProtocolError("RST_STREAM with status 0")
            return RstStream(sid & MAX_STREAM_ID, status)
        if frame_type == SETTINGS:
            (count,) = struct.unpack_from(">I", payload)
            if len(payload) != 4 + 8 * count:
                raise ProtocolError("SETTINGS length does not match its count")
            entries = []
            for i in range(count):
                fid, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                entries.append((fid >> 24, fid & MAX_LENGTH, value))
            return Settings(tuple(entries), flags)
        if frame_type == PING:
            (ping_id,) = struct.unpack(">I", payload)
            if flags or ping_id == 0:
                raise ProtocolError("PING with flags or id 0")
            return Ping(ping_id)
        if frame_type == GOAWAY:
            last, status = struct.unpack(">II", payload)
            if flags:
                raise ProtocolError("GOAWAY with flags")
            return GoAway(last & MAX_STREAM_ID, status)
        sid, delta = struct.unpack(">II", payload)  # WINDOW_UPDATE
        return WindowUpdate(sid & MAX_STREAM_ID, delta & MAX_STREAM_ID)


# frame type -> (minimum payload length, whether it is the exact length)
_LAYOUTS = {
    SYN_STREAM: (10, False),
    SYN_REPLY: (4, False),
    RST_STREAM: (8, True),
    SETTINGS: (4, False),
    PING: (4, True),
    GOAWAY: (8, True),
    HEADERS: (4, False),
    WINDOW_UPDATE: (8, True),
}


def _require_stream(stream_id: int, what: str) -> None:
    if stream_id == 0:
        raise ProtocolError(f"{what} on stream 0")
