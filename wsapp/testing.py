"""Test a wsapp app without a server: WebSocket clients in the test's own process.

    from wsapp.testing import connect

    with connect(ws, "/ws/chat", client_id="alice") as alice:
        assert alice.receive()["type"] == "welcome"
        alice.send({"type": "join", "id": 1, "room": "lobby"})

`connect(ws, path, ...)` makes the handshake through the app's own Flask test client
(`ws.app.test_client()`), handing the app one end of a gevent socket pair as
`werkzeug.socket`: every check before the 101 runs as under gunicorn, the session runs
in a greenlet of its own, and the client speaks real (masked) RFC 6455 frames on the
other end. The app's greenlets run whenever the test waits on a client (`receive`,
`receive_until`, `close`), so a push from a view called through Flask's HTTP test
client (`app.test_client().post(...)`) reaches these clients too.

A refused handshake raises `HandshakeRefused` (its `status`, and the JSON `body` with
`error` and `message`). See docs/testing-your-app.md; the pytest fixtures are in
`wsapp.pytest_plugin` (entry point `pytest11`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.event
import gevent.socket
import jwt

from .frames import encode_close, unmask

if TYPE_CHECKING:
    from flask import Flask

    from .session import Connection
    from .settings import Settings


class WSApp(Protocol):
    """What the test client needs of a `wsapp.WSApp` (this module is below it: `WSApp.test_client`)."""

    @property
    def app(self) -> Flask | None: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def connect_hooks(self) -> list[Callable[[Connection], Any]]: ...


__all__ = ["ConnectionClosed", "HandshakeRefused", "WebSocketTestClient", "connect", "mint_token"]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NO_STATUS = 1005  # the server's close frame had no code
ABNORMAL = 1006  # the socket ended without a close frame

Received = dict[str, Any] | str | bytes


class HandshakeRefused(Exception):
    """The handshake was answered with an HTTP status instead of a 101."""

    def __init__(self, status: int, body: dict[str, Any] | None, text: str = "") -> None:
        self.status = status
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}
        self.error: str | None = self.body.get("error")
        self.message: str | None = self.body.get("message")
        super().__init__(f"handshake refused: HTTP {status} {self.error or ''}: {self.message or text[:200]}".strip())


class ConnectionClosed(Exception):
    """`receive` on a connection the server closed (or that was closed by `close`)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".strip())
        self.code = code
        self.reason = reason


def mint_token(
    ws: WSApp, client_id: str | None = None, claims: Mapping[str, Any] | None = None, ttl_s: float = 3600
) -> str:
    """An HS256 token the app accepts: its client id claim (`WSAPP_JWT_CLIENT_ID_CLAIM`),
    `iat`, `exp` (`ttl_s` from now; negative for an expired one), `iss`/`aud` when the app
    checks them, `roles: []`; `claims` added last (they win: `{"roles": ["admin"]}`).
    Needs the app's `WSAPP_JWT_SECRET` (or demo mode's) and HS256 among its algorithms."""
    settings = ws.settings
    if not settings.jwt_secret:
        raise RuntimeError(
            "wsapp.testing mints HS256 tokens with the app's WSAPP_JWT_SECRET, and this app has none "
            "(a public key only): pass token= instead"
        )
    if "HS256" not in settings.jwt_algorithms:
        raise RuntimeError("wsapp.testing mints HS256 tokens, which WSAPP_JWT_ALGORITHMS does not accept: pass token=")
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "exp": now + int(ttl_s), "roles": []}
    if client_id is not None:
        body[settings.jwt_client_id_claim] = client_id
    if settings.jwt_issuer:
        body["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        body["aud"] = settings.jwt_audience
    body.update(claims or {})
    if settings.jwt_client_id_claim not in body:
        body[settings.jwt_client_id_claim] = "test-client"
    return jwt.encode(body, settings.jwt_secret, algorithm="HS256")


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with a fresh key (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + unmask(payload, mask)  # XOR with the mask both ways


class WebSocketTestClient:
    """The client end of one in-process connection (from `connect`). A context manager:
    leaving the block closes it (1000) if the server has not.

    `WebSocketTestClient(sock, buffered)` also wraps the client end of a socket whose
    handshake you made yourself (hand-written request bytes, say): `buffered` holds any
    bytes read after the 101's head."""

    def __init__(
        self, sock: gevent.socket.socket, buffered: bytes = b"", subprotocol: str | None = None, timeout: float = 5.0
    ) -> None:
        self._sock = sock
        self._buf = bytearray(buffered)
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self.subprotocol = subprotocol  # the one the server selected, if any
        self.timeout = timeout  # the default for `receive`, `receive_until`, `close`
        self.close_code: int | None = None  # set once the server's close frame (or EOF) is read
        self.close_reason: str = ""
        # the server closed the TCP connection too (after its close frame, as RFC 6455 §7.1.1
        # has it, within the wait that read that frame; or without one: 1006)
        self.hung_up = False
        self._sent_close = False

    # ---- sending ----------------------------------------------------------------------

    def send(self, data: str | bytes | bytearray | Mapping[str, Any] | list[Any]) -> None:
        """A text frame for `str`, binary for `bytes`, JSON text for a dict or list."""
        if isinstance(data, str):
            self.send_frame(OP_TEXT, data.encode("utf-8"))
        elif isinstance(data, (bytes, bytearray)):
            self.send_frame(OP_BINARY, bytes(data))
        else:
            self.send_frame(OP_TEXT, json.dumps(data).encode("utf-8"))

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One raw, final, masked frame (a ping, a protocol error on purpose...)."""
        if self._sent_close or self.close_code is not None:
            raise ConnectionClosed(self.close_code or ABNORMAL, self.close_reason or "closed")
        self._sock.sendall(_client_frame(opcode, payload))

    # ---- receiving --------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Received:
        """The next message: a dict for JSON object text, other text as `str`, binary as
        `bytes`. Pings are answered on the way. Raises `ConnectionClosed` once the server
        closed (`close_code`/`close_reason` are set), `TimeoutError` after `timeout`
        seconds (default: the client's, 5)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if self.close_code is not None:
                raise ConnectionClosed(self.close_code, self.close_reason)
            frame = self._next_frame(deadline)
            if frame is None:
                continue
            opcode, payload = frame
            if opcode in (OP_TEXT, OP_BINARY):
                return _decode(opcode, payload)

    def receive_until(self, predicate: Callable[[Received], bool], timeout: float | None = None) -> Received:
        """Read messages (dropping the others) until one satisfies `predicate`; that one."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            message = self.receive(max(0.0, deadline - time.monotonic()))
            if predicate(message):
                return message

    def wait_closed(self, timeout: float | None = None) -> int:
        """Read (dropping messages) until the server's close frame or EOF; the close code."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.close_code is None:
            self._next_frame(deadline)
        return self.close_code

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = None) -> int:
        """The closing handshake: a close frame, then wait for the server's (messages in
        between are dropped). `close_code` is the server's answer (1006 if none came)."""
        if self.close_code is None:
            if not self._sent_close:
                try:
                    self._sock.sendall(_client_frame(OP_CLOSE, encode_close(code, reason)[2:]))
                except OSError:
                    self._ended(ABNORMAL, "")
                self._sent_close = True
            try:
                self.wait_closed(timeout)
            except TimeoutError:
                self._ended(ABNORMAL, "no close frame from the server")
        self._sock.close()
        assert self.close_code is not None
        return self.close_code

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    def __enter__(self) -> WebSocketTestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WebSocketTestClient close_code={self.close_code}>"

    # ---- frames -----------------------------------------------------------------------

    def _ended(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._sock.close()

    def _eof(self) -> None:
        """The server closed the socket without a close frame: 1006."""
        self.hung_up = True
        self._ended(ABNORMAL, "")

    def _await_hangup(self, deadline: float) -> None:
        """After the closing handshake, the server closes the TCP connection first (RFC
        6455 §7.1.1): wait for that until `deadline`, then the client closes its end."""
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.hung_up = True
                return

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the server in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no message from the server in time") from None
            except OSError:
                chunk = b""
            if not chunk:
                return False
            self._buf += chunk
        return True

    def _next_frame(self, deadline: float) -> tuple[int, bytes] | None:
        """One server frame, control frames handled; a whole message's (opcode, payload),
        or None (a control frame, a fragment). At EOF the connection ends with 1006."""
        if not self._fill(2, deadline):
            self._eof()
            return None
        b0, b1 = self._buf[0], self._buf[1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if not self._fill(4, deadline):
                self._eof()
                return None
            n, head = struct.unpack_from("!H", self._buf, 2)[0], 4
        elif n == 127:
            if not self._fill(10, deadline):
                self._eof()
                return None
            n, head = struct.unpack_from("!Q", self._buf, 2)[0], 10
        if b1 & 0x80:
            raise AssertionError("the server sent a masked frame (RFC 6455 §5.1 forbids it)")
        if not self._fill(head + n, deadline):
            self._eof()
            return None
        payload = bytes(self._buf[head : head + n])
        del self._buf[: head + n]
        fin, opcode = b0 & 0x80, b0 & 0x0F
        if opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else NO_STATUS
            reason = payload[2:].decode("utf-8", "replace")
            if not self._sent_close:  # answer it, as a client must
                try:
                    self._sock.sendall(_client_frame(OP_CLOSE, payload[:2]))
                except OSError:
                    pass
                self._sent_close = True
            self._await_hangup(deadline)
            self._ended(code, reason)
            return None
        if opcode == OP_PING:
            try:
                self._sock.sendall(_client_frame(OP_PONG, payload))
            except OSError:
                pass
            return None
        if opcode == OP_PONG:
            return None
        if opcode != OP_CONT:
            self._fragment_op, self._fragments = opcode, []
        self._fragments.append(payload)
        if not fin:
            return None
        whole, self._fragments = b"".join(self._fragments), []
        return self._fragment_op, whole


def _decode(opcode: int, payload: bytes) -> Received:
    if opcode == OP_BINARY:
        return payload
    text = payload.decode("utf-8")
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict):
            return value
    return text


# ---- the handshake --------------------------------------------------------------------

# per app: our connect hook, and the `connect` calls waiting for it (oldest first)
_hooks: weakref.WeakKeyDictionary[WSApp, tuple[Callable[[Connection], None], list[gevent.event.Event]]] = (
    weakref.WeakKeyDictionary()
)


def _waiters(ws: WSApp) -> list[gevent.event.Event]:
    """A connect hook of ours, kept last (after the app's own, which may be added any
    time): it tells `connect` the session has registered and run every `on_connect`
    hook, so a push right after `connect` returns reaches the new connection."""
    if ws not in _hooks:
        waiting: list[gevent.event.Event] = []

        def connected(conn: Connection) -> None:
            if waiting:
                waiting.pop(0).set()

        _hooks[ws] = (connected, waiting)
    hook, waiting = _hooks[ws]
    if hook in ws.connect_hooks:
        ws.connect_hooks.remove(hook)
    ws.connect_hooks.append(hook)
    return waiting


def connect(
    ws: WSApp,
    path: str = "/ws/chat",
    *,
    token: str | None = None,
    client_id: str | None = None,
    claims: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    subprotocols: Iterable[str] | None = None,
    timeout: float = 5.0,
) -> WebSocketTestClient:
    """A connected client for the WebSocket route at `path` (a query string may follow)
    of `ws`'s app.

    The token: `token` as `Authorization: Bearer`, or, with `client_id` and/or `claims`
    and no `token`, one minted with the app's settings (`mint_token`); with neither, none
    (to test a refusal). `headers` are added to the handshake's (an `Origin`, your own
    `Authorization` or `Sec-WebSocket-Protocol`...); `subprotocols` are offered in
    `Sec-WebSocket-Protocol` (the browser's way: `subprotocols=[token]`).

    Returns once the session is registered and every `on_connect` hook has run. Raises
    `HandshakeRefused` for any answer but a 101."""
    if ws.app is None:
        raise RuntimeError("this WSApp serves no app yet: call ws.init_app(app) first")
    if token is None and (client_id is not None or claims):
        token = mint_token(ws, client_id, claims)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    if token is not None:
        handshake["Authorization"] = f"Bearer {token}"
    offered = list(subprotocols or [])
    if offered:
        handshake["Sec-WebSocket-Protocol"] = ", ".join(offered)
    handshake.update(headers or {})
    server_end, client_end = gevent.socket.socketpair()
    waiters = _waiters(ws)
    connected = gevent.event.Event()
    waiters.append(connected)
    try:
        response = ws.app.test_client().get(path, headers=handshake, environ_overrides={"werkzeug.socket": server_end})
        status, body = response.status_code, response.get_data()
        response.close()
        server_end.close()  # after a 101 its descriptor belongs to the session: a no-op then
        head, rest = _read_head(client_end, time.monotonic() + timeout) if status == 200 and not body else (b"", b"")
        if not head.startswith(b"HTTP/1.1 101"):
            client_end.close()
            raise _refusal(status, body)
        subprotocol = _check_head(head, key)
        client = WebSocketTestClient(client_end, rest, subprotocol, timeout)
        _settle(connected, client_end, time.monotonic() + timeout)
        return client
    finally:
        if connected in waiters:
            waiters.remove(connected)


def _refusal(status: int, body: bytes) -> HandshakeRefused:
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if status == 200:
        text = text or "no 101 on the socket: is this a WebSocket route of the app?"
    return HandshakeRefused(status, parsed if isinstance(parsed, dict) else None, text)


def _read_head(sock: gevent.socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """The 101's head and the bytes after it (the server writes it before answering the
    test client's request, so it is already there; b"" if nothing came)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if not buf and not select.select([sock], [], [], 0)[0]:  # nothing written: no 101
            return b"", b""
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            return b"", b""
        if not chunk:
            return b"", b""
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def _check_head(head: bytes, key: str) -> str | None:
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
    if fields.get("sec-websocket-accept") != accept:
        raise AssertionError(f"wrong Sec-WebSocket-Accept in the 101: {fields.get('sec-websocket-accept')!r}")
    return fields.get("sec-websocket-protocol")


def _settle(connected: gevent.event.Event, sock: gevent.socket.socket, deadline: float) -> None:
    """Let the session run until its `on_connect` hooks are done, or it wrote (a close
    when a hook raised), or `deadline`."""
    while not connected.is_set() and time.monotonic() < deadline:
        if select.select([sock], [], [], 0)[0]:
            return
        connected.wait(0.005)
