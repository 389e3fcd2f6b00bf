"""The suite's in-process set-up, around the public harness: connections are
`wsapp.testing`'s (`connect`, `WebSocketTestClient`, `HandshakeRefused`), the same a
user's tests get (docs/testing-your-app.md). What stays here is what only wsapp's own
tests need around it, and a user's would do otherwise:

- `in_process(app=None, **env)`: a WSApp on the suite's known secret with `WSAPP_*`
  settings given as keyword arguments (a user sets `app.config`), the `wsapp` log's
  records collected for `lines()` (a user has pytest's `caplog`), and at the end every
  connection hung up and every socket closed, whatever the test broke on purpose;
- `pair()`: raw socket pairs, for the tests that write the handshake bytes themselves
  (the early path's);
- `until(check, what)`: poll a condition while the app's greenlets run.
"""

from __future__ import annotations

import contextlib
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

from helpers import SECRET
from wsapp import WSApp
from wsapp.service import Service
from wsapp.settings import Settings
from wsapp.testing import WebSocketTestClient, connect


@dataclass
class InProcess:
    app: Any
    service: Service
    records: list[logging.LogRecord]
    ws: WSApp
    sockets: list[Any] = field(default_factory=list)  # both ends of every raw pair: closed at the end
    clients: list[WebSocketTestClient] = field(default_factory=list)

    def connect(self, path: str = "/ws/chat", client_id: str = "alice", **kwargs: Any) -> WebSocketTestClient:
        """`wsapp.testing.connect` on this app (a token for `client_id` unless `token=` is
        given); closed at the end."""
        client = connect(self.ws, path, client_id=client_id, **kwargs)
        self.clients.append(client)
        return client

    def pair(self) -> tuple[Any, Any]:
        server_end, client_end = gevent.socket.socketpair()
        self.sockets += [server_end, client_end]
        return server_end, client_end

    def shut(self) -> None:
        """Hang up every client, let the sessions end, close every socket (no descriptor left)."""
        for peer in self.service.registry.peers():
            peer.ws.abort()
        for client in self.clients:
            if not client.closed:
                client.close(timeout=1)
        for sock in self.sockets:
            sock.close()
        deadline = time.monotonic() + 5
        while self.service.registry.held and time.monotonic() < deadline:
            gevent.sleep(0.01)

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
