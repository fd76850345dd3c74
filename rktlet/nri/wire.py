"""NRI's byte-level framing: the connection multiplexer and ttrpc messages.

One unix-socket connection to a plugin carries two logical connections
(containerd/nri ``pkg/net/multiplex``): every frame is an 8-byte header —
connection id and payload length, both big-endian uint32 — then the payload.
Connection 1 carries the plugin's service (rktlet is the ttrpc client),
connection 2 the runtime's service (rktlet is the server).

On each logical connection flows a ttrpc byte stream (containerd/ttrpc
``channel.go``): a 10-byte header — length (uint32), stream id (uint32),
message type (uint8: 1 request, 2 response, 3 data), flags (uint8) — then the
protobuf message. Both parsers are pure (bytes in, frames out) and bounded:
a frame longer than the limit is a protocol error, never a buffer that grows.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Logical connection ids (multiplex.PluginServiceConn, RuntimeServiceConn).
PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2

MUX_HEADER = struct.Struct(">II")
TTRPC_HEADER = struct.Struct(">IIBB")

# ttrpc's limit on one message, and the multiplexer's on one frame's payload
# (one whole ttrpc message with its header), as upstream sets them.
TTRPC_MESSAGE_MAX = 4 << 20
MUX_PAYLOAD_MAX = TTRPC_HEADER.size + TTRPC_MESSAGE_MAX

MESSAGE_REQUEST = 0x1
MESSAGE_RESPONSE = 0x2
MESSAGE_DATA = 0x3

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4


class FramingError(Exception):
    """The peer broke the framing (an oversized frame): drop the connection."""


def mux_frames(conn_id: int, data: bytes) -> bytes:
    """*data* for logical connection *conn_id*, framed (split in frames of at
    most :data:`MUX_PAYLOAD_MAX` bytes, as upstream writes them)."""
    out = bytearray()
    view = memoryview(data)
    while True:
        chunk = view[:MUX_PAYLOAD_MAX]
        out += MUX_HEADER.pack(conn_id, len(chunk))
        out += chunk
        view = view[len(chunk):]
        if not view:
            return bytes(out)


class MuxDecoder:
    """Splits the trunk's bytes into ``(conn_id, payload)`` frames."""

    def __init__(self, max_payload: int = MUX_PAYLOAD_MAX) -> None:
        self._buffer = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add *data*; returns the frames now complete.

        :raises FramingError: a frame announces more than the limit.
        """
        self._buffer += data
        frames = []
        while len(self._buffer) >= MUX_HEADER.size:
            conn_id, length = MUX_HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise FramingError(f"multiplexer frame of {length} bytes exceeds the limit of {self._max}")
            end = MUX_HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((conn_id, bytes(self._buffer[MUX_HEADER.size:end])))
            del self._buffer[:end]
        return frames


@dataclass(frozen=True)
class Message:
    """One ttrpc message."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


def ttrpc_message(stream_id: int, message_type: int, flags: int, payload: bytes) -> bytes:
    """One ttrpc message, header and payload.

    :raises FramingError: *payload* exceeds :data:`TTRPC_MESSAGE_MAX`.
    """
    if len(payload) > TTRPC_MESSAGE_MAX:
        raise FramingError(f"ttrpc message of {len(payload)} bytes exceeds the limit of {TTRPC_MESSAGE_MAX}")
    return TTRPC_HEADER.pack(len(payload), stream_id, message_type, flags) + payload


class TtrpcDecoder:
    """Splits one logical connection's byte stream into :class:`Message` s."""

    def __init__(self, max_message: int = TTRPC_MESSAGE_MAX) -> None:
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[Message]:
        """Add *data*; returns the messages now complete.

        :raises FramingError: a message announces more than the limit.
        """
        self._buffer += data
        out = []
        while len(self._buffer) >= TTRPC_HEADER.size:
            length, stream_id, message_type, flags = TTRPC_HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise FramingError(f"ttrpc message of {length} bytes exceeds the limit of {self._max}")
            end = TTRPC_HEADER.size + length
            if len(self._buffer) < end:
                break
            out.append(Message(stream_id, message_type, flags, bytes(self._buffer[TTRPC_HEADER.size:end])))
            del self._buffer[:end]
        return out
