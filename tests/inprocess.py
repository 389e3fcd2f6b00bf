"""A WSApp served in the test's own process over socket pairs: a real app and real
sockets, where a test can break a part on purpose or reach the app's objects.

The server end of each pair is a gevent socket handed to the app as `werkzeug.socket`
(what `wsapp.server` accepts from Werkzeug); the session greenlets run whenever the
test yields to gevent (the client's reads, `until`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.socket
from flask import Flask

from helpers import SECRET, make_token
from wsapp import WSApp
from wsapp.service import Service
from wsapp.settings import Settings


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame."""
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Client:
    """The client end of a socket pair: sends masked frames, reads the server's frames."""

    def __init__(self, sock: gevent.socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        sock.settimeout(5)

    def send(self, obj: Any) -> None:
        self.sock.sendall(client_frame(json.dumps(obj).encode()))

    def close(self) -> None:
        self.sock.sendall(client_frame((1000).to_bytes(2, "big"), 0x8))

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def frame(self) -> tuple[int, bytes] | None:
        """The next (opcode, payload), or None at EOF."""
        if not self._fill(2):
            return None
        n, head = self.buf[1] & 0x7F, 2
        if n == 126:
            self._fill(4)
            n, head = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            self._fill(10)
            n, head = int.from_bytes(self.buf[2:10], "big"), 10
        self._fill(head + n)
        opcode, payload = self.buf[0] & 0x0F, self.buf[head : head + n]
        self.buf = self.buf[head + n :]
        return opcode, payload

    def json(self) -> dict[str, Any]:
        got = self.frame()
        assert got is not None and got[0] == 0x1, got
        return json.loads(got[1])  # type: ignore[no-any-return]

    def close_code(self) -> int:
        """Read up to the server's close frame; its code."""
        while (got := self.frame()) is not None:
            if got[0] == 0x8:
                return int.from_bytes(got[1][:2], "big")
        raise AssertionError("EOF before a close frame")

    def at_eof(self) -> bool:
        return self.frame() is None


@dataclass
class InProcess:
    app: Any
    service: Service
    records: list[logging.LogRecord]
    ws: WSApp
    sockets: list[Any] = field(default_factory=list)  # both ends of every pair: closed at the end

    def pair(self) -> tuple[Any, Any]:
        server_end, client_end = gevent.socket.socketpair()
        self.sockets += [server_end, client_end]
        return server_end, client_end

    def shut(self) -> None:
        """Hang up every client, let the sessions end, close every socket (no descriptor left)."""
        for peer in self.service.registry.peers():
            peer.ws.abort()
        for sock in self.sockets:
            sock.close()
        deadline = time.monotonic() + 5
        while self.service.registry.held and time.monotonic() < deadline:
            gevent.sleep(0.01)

    def connect(self, path: str = "/ws/chat", client_id: str = "alice", token: str | None = None) -> Client:
        server_end, client_end = self.pair()
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Authorization": f"Bearer {token or make_token(client_id)}",
        }
        resp = self.app.test_client().get(path, headers=headers, environ_overrides={"werkzeug.socket": server_end})
        assert resp.status_code == 200, resp.data  # the 101 went out on the socket itself
        client = Client(client_end)
        assert client._fill(4) and b"101 Switching Protocols" in client.buf.split(b"\r\n\r\n")[0]
        client.buf = client.buf.split(b"\r\n\r\n", 1)[1]
        return client

    def handshake(self, path: str, headers: dict[str, str], server_end: Any = None) -> Any:
        """A handshake with `headers` added; the test client's response (for refusals)."""
        base = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        if server_end is None:
            server_end, _client_end = self.pair()
        return self.app.test_client().get(
            path, headers={**base, **headers}, environ_overrides={"werkzeug.socket": server_end}
        )

    def lines(self, pattern: str) -> list[str]:
        return [r.getMessage() for r in self.records if re.search(pattern, r.getMessage())]


def until(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Poll `check`, letting the app's greenlets run, until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        gevent.sleep(0.01)


class _Records(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@contextlib.contextmanager
def in_process(app: Flask | None = None, **env: str) -> Iterator[InProcess]:
    """A WSApp on `app` (a fresh Flask app by default) with a known secret and `env`'s
    settings; its log records collected; closed at the end."""
    settings = Settings.from_env({"WSAPP_JWT_SECRET": SECRET, "WSAPP_INSTANCE_PATH": tempfile.mkdtemp(), **env})
    app = app or Flask(__name__)
    ws = WSApp(app, settings=settings)
    records: list[logging.LogRecord] = []
    handler = _Records(records)
    logger = logging.getLogger("wsapp")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    running = InProcess(app, ws.service, records, ws)
    try:
        yield running
    finally:
        running.shut()
        logger.removeHandler(handler)
        logger.setLevel(level)
        ws.close()
