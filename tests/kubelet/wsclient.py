"""A minimal blocking WebSocket client (RFC 6455) over TLS, enough to speak
the Kubernetes ``*.channel.k8s.io`` protocols to the kubelet's /exec, /attach
and /portForward on 127.0.0.1 (its self-signed certificate is not checked)."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


class WebSocket:
    def __init__(self, port: int, path: str, protocols: list[str], timeout: float = 20) -> None:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {self._buf!r}")
            self._buf += chunk
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        self.status_line = lines[0]
        self.headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        if " 101 " not in self.status_line + " ":
            rest = self._buf
            raise ConnectionError(f"no upgrade: {self.status_line} {self.headers} {rest[:500]!r}")
        self.protocol = self.headers.get("sec-websocket-protocol", "")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def recv(self) -> tuple[int, bytes]:
        """One (whole) message: (opcode, payload)."""
        payload = b""
        opcode = None
        while True:
            b0, b1 = self._read(2)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(length)
            if mask:
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
            op = b0 & 0x0F
            if op >= 8:  # control frames may interleave
                if op == OP_PING:
                    self.send(data, OP_PONG)
                    continue
                return op, data
            if opcode is None:
                opcode = op
            payload += data
            if b0 & 0x80:
                return opcode, payload

    def send(self, data: bytes, opcode: int = OP_BINARY) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(data)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        self.sock.sendall(header + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data)))

    def close(self) -> None:
        try:
            self.send(struct.pack("!H", 1000), OP_CLOSE)
        except OSError:
            pass
        self.sock.close()

    def channels_until_close(self, limit: int = 1000) -> tuple[dict[int, bytes], bytes | None]:
        """Read channel messages (first byte = channel) until the server closes;
        (channel -> bytes, the close payload)."""
        out: dict[int, bytes] = {}
        for _ in range(limit):
            try:
                op, data = self.recv()
            except (ConnectionError, OSError):
                return out, None
            if op == OP_CLOSE:
                try:
                    self.send(data[:2], OP_CLOSE)
                except OSError:
                    pass
                return out, data
            if data:
                out[data[0]] = out.get(data[0], b"") + data[1:]
        return out, None
