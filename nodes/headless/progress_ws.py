"""ComfyUI's step progress for the catalogue runner's progress line: a listener on its websocket
(``/ws?clientId=``) that keeps the last ``progress`` message (value, max) of each prompt.

Standard library only: the websocket handshake and unmasked server frames (RFC 6455), read-only. If
the socket cannot be opened or breaks, progress simply has no steps; the run does not depend on it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import urllib.parse


class StepWatcher:
    """``steps(prompt_id)`` -> (value, max) of the last progress ComfyUI sent for it, or None."""

    def __init__(self, url: str, client_id: str, timeout: float = 5.0):
        self.url, self.client_id, self.timeout = url, client_id, timeout
        self._steps: dict[str, tuple[int, int]] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StepWatcher:
        try:
            self._sock = self._connect()
        except OSError:
            self._sock = None
            return self
        self._thread = threading.Thread(target=self._listen, name="comfyui-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def steps(self, prompt_id: str) -> tuple[int, int] | None:
        return self._steps.get(prompt_id)

    def _connect(self) -> socket.socket:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http":
            raise OSError("only plain http servers are watched")
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=self.timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = f"{parts.path.rstrip('/')}/ws?clientId={urllib.parse.quote(self.client_id)}"
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("the websocket handshake was cut")
            head += chunk
        if not head.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
            sock.close()
            raise OSError(f"no websocket: {head.splitlines()[0]!r}")
        self._buffer = head.split(b"\r\n\r\n", 1)[1]
        sock.settimeout(None)
        return sock

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _listen(self) -> None:
        try:
            while True:
                first, second = self._read(2)
                opcode, size = first & 0x0F, second & 0x7F
                if size == 126:
                    size = struct.unpack(">H", self._read(2))[0]
                elif size == 127:
                    size = struct.unpack(">Q", self._read(8))[0]
                mask = self._read(4) if second & 0x80 else None
                payload = self._read(size)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 8:
                    return
                if opcode == 1:
                    self._message(payload)
        except (OSError, ValueError):
            return

    def _message(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        data = message.get("data") or {}
        if message.get("type") == "progress" and data.get("prompt_id"):
            self._steps[data["prompt_id"]] = (int(data.get("value", 0)), int(data.get("max", 0)))
