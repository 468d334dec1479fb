"""A WebSocket peer at the socket level, for clients that misbehave the way real networks and
broken clients do: a TCP reset in place of a close, a peer that goes silent (half-open: never
answers a ping), an Engine.IO handshake done by hand. Used by the abuse and lease tests and
bench/abuse.py."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time


class RawPeer:
    def __init__(self, port: int, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {self.buffer!r}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.headers = head.decode("latin-1").lower()
        if not self.headers.startswith("http/1.1 101"):
            raise ConnectionError(f"handshake refused: {self.headers.splitlines()[0]}")

    @property
    def leased(self) -> bool:
        """Guarded routes name the session's lease in the handshake, and only when one was granted."""
        return "x-voxloop-session:" in self.headers

    def send_frame(self, payload: bytes, opcode: int = 1) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(text.encode("utf-8", "surrogatepass"))

    def send_json(self, message: object) -> None:
        self.send_text(json.dumps(message))

    def recv_frame(self, timeout: float = 30.0) -> tuple[int, bytes]:
        """The next (opcode, payload); pings are answered unless the peer plays dead."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk

    def recv_text(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if opcode == 1:
                return payload.decode()
            if opcode == 8:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
            if opcode == 9:
                self.send_frame(payload, 10)  # pong

    def _parse(self) -> tuple[int, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, size, offset = data[0] & 0x0F, data[1] & 0x7F, 2
        if size == 126:
            if len(data) < 4:
                return None
            size, offset = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            if len(data) < 10:
                return None
            size, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + size:
            return None
        self.buffer = data[offset + size :]
        return opcode, data[offset : offset + size]

    def abort(self) -> None:
        """A TCP reset: no close frame, no FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.send_frame(struct.pack("!H", 1000), 8)
        except OSError:
            pass
        self.sock.close()


def socketio_peer(port: int, api_key: str, namespace: str = "/v1/audio/agent") -> tuple[RawPeer, str]:
    """An Engine.IO v4 WebSocket connected to ``namespace`` by hand; (peer, the first event name)."""
    peer = RawPeer(port, f"/socket.io/?EIO=4&transport=websocket&api_key={api_key}")
    opened = peer.recv_text()
    assert opened.startswith("0"), opened
    peer.send_text(f"40{namespace},")
    while True:
        text = peer.recv_text()
        if text == "2":  # Engine.IO ping
            peer.send_text("3")
        elif text.startswith(f"42{namespace},"):
            return peer, json.loads(text[len(f"42{namespace},") :])[0]
