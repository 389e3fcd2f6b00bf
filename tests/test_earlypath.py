"""wsapp.handshake.early and wsapp.handshake.head: accepted upgrades read before gunicorn's parser;
everything else reaches gunicorn with its bytes unread, and is answered as before."""

from __future__ import annotations

import logging
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gevent.socket
import pytest
from flask import Flask
from inprocess import InProcess, in_process, until

from helpers import ROOT, Server, make_token, raw_handshake
from wsapp.handshake import head as httphead
from wsapp.handshake import takeover
from wsapp.handshake.early import EarlyHandshakes
from wsapp.handshake.fast import FastHandshakes
from wsapp.testing import WebSocketTestClient

LIMITS = httphead.Limits()
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def head(*fields: str, line: str = "GET /ws/chat HTTP/1.1") -> bytes:
    return "\r\n".join([line, "Host: 127.0.0.1", *fields]).encode("latin-1")


# ---- httphead: a strict subset of what gunicorn reads ---------------------------------


@pytest.fixture
def no_known_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty name -> environ key cache, whatever earlier tests parsed."""
    monkeypatch.setattr(httphead, "_keys", {})


def test_a_plain_upgrade_head_is_parsed_into_environ_keys(no_known_names: None) -> None:
    raw = head(
        "Upgrade:  websocket \t",
        "Sec-WebSocket-Key: " + KEY,
        "content-type: x",
        "Origin: http://127.0.0.1:8000",  # a colon in the value: the name ends at the first
        "X-Tag: X1X",
        line="GET /ws/chat?a=%20b HTTP/1.1",
    )
    parsed = httphead.parse(raw, LIMITS)
    assert parsed is not None
    assert (parsed.path, parsed.query) == ("/ws/chat", "a=%20b")  # the query string stays raw, as gunicorn's
    assert parsed.headers == {
        "HTTP_HOST": "127.0.0.1",
        "HTTP_UPGRADE": "websocket",
        "HTTP_SEC_WEBSOCKET_KEY": KEY,
        "CONTENT_TYPE": "x",
        "HTTP_ORIGIN": "http://127.0.0.1:8000",
        "HTTP_X_TAG": "X1X",
    }
    assert httphead.parse(raw, LIMITS) == parsed  # the second time, from the names already seen


def test_the_cache_of_field_names_is_bounded(no_known_names: None) -> None:
    """Field names come from the network: the name -> key cache stops growing at its bound,
    and names past it are still read right."""
    for i in range(httphead._KEYS_MAX + 50):
        parsed = httphead.parse(head(f"X-N{i}: v"), LIMITS)
        assert parsed is not None and parsed.headers[f"HTTP_X_N{i}"] == "v"
    assert len(httphead._keys) == httphead._KEYS_MAX


@pytest.mark.parametrize(
    "raw",
    [
        head(line="POST /ws/chat HTTP/1.1"),
        head(line="GET /ws/chat HTTP/1.0"),
        head(line="GET  /ws/chat HTTP/1.1"),
        head(line="GET http://h/ws/chat HTTP/1.1"),  # absolute-form
        head(line="GET /ws/%63hat HTTP/1.1"),  # gunicorn decodes the path: its reading, not ours
        head(line="GET /ws/chat#x HTTP/1.1"),
        head(line="GET /ws/ch\x7fat HTTP/1.1"),
        head(line="GET /ws/ch\xe9at HTTP/1.1"),
        head("Upgrade: websocket", " continued"),  # obs-fold
        head("Upgrade: websocket", "\tcontinued"),
        head("Upgrade : websocket"),  # space before the colon
        head("X_Forwarded_For: 6.6.6.6"),  # gunicorn drops names with '_'
        head("Authorization: Bearer a", "authorization: Bearer b"),  # gunicorn joins repeats
        head("Host: 127.0.0.2"),  # a second Host
        head("Content-Length: 0"),
        head("Transfer-Encoding: chunked"),
        head("Expect: 100-continue"),
        head("Upgrade: web\x00socket"),
        head("Upgrade: web\rsocket"),
        head("Upgrade: websocket\nX-Smuggled: 1"),  # a bare LF
        head("Origin: http://\xe9.example"),  # obs-text
        head("NoColon"),
        head(": empty-name"),
        head("Bad(Name): 1"),
        head("X-Long: " + "a" * 8190),  # over limit_request_field_size
        head(line="GET /" + "a" * 4100 + " HTTP/1.1"),  # over limit_request_line
        head(*(f"X-F{i}: 1" for i in range(100))),  # 101 fields, over limit_request_fields
    ],
)
def test_anything_unusual_is_left_to_gunicorn(raw: bytes, no_known_names: None) -> None:
    assert httphead.parse(raw, LIMITS) is None


def test_gunicorns_limits_apply_as_its_parser_counts_them() -> None:
    raw = head("X-Long: " + "a" * 5000, "X-Two: 2", line="GET /" + "a" * 2000 + " HTTP/1.1")
    assert httphead.parse(raw, httphead.Limits(2013, 3, 5010)) is None  # the request line is 2,014
    assert httphead.parse(raw, httphead.Limits(2014, 2, 5010)) is None  # 3 fields
    assert httphead.parse(raw, httphead.Limits(2014, 3, 5009)) is None  # the field line is 5,008 + CRLF
    assert httphead.parse(raw, httphead.Limits(2014, 3, 5010)) is not None
    assert httphead.parse(raw, httphead.Limits(0, 3, 5010)) is not None  # request line: 0 is no bound
    assert httphead.parse(head(*(f"X-F{i}: 1" for i in range(99))), LIMITS) is not None  # 100 fields


def test_gunicorns_settings_are_normalised_as_its_parser_does() -> None:
    assert httphead.Limits.from_gunicorn(4094, 100, 8190) == httphead.Limits(4094, 100, 8190)
    assert httphead.Limits.from_gunicorn(1, 1, 1) == httphead.Limits(1, 1, 1)
    assert httphead.Limits.from_gunicorn(0, 0, 0) == httphead.Limits(0, 32768, 8190)
    assert httphead.Limits.from_gunicorn(-1, -1, -1) == httphead.Limits(8190, 32768, 8190)
    assert httphead.Limits.from_gunicorn(99999, 99999, 99999) == httphead.Limits(8190, 32768, 99999)


# ---- EarlyHandshakes in front of a real app, on real sockets ---------------------------


class Early:
    """`EarlyHandshakes` around an in-process app; gunicorn's own `handle` replaced by a
    recorder that reads what gunicorn would read (the bytes still unread)."""

    def __init__(self, inproc: InProcess, keepalive: float = 2) -> None:
        self.inproc = inproc
        self.given_to_gunicorn: list[bytes] = []
        cfg = SimpleNamespace(
            limit_request_line=4094,
            limit_request_fields=100,
            limit_request_field_size=8190,
            keepalive=keepalive,
            secure_scheme_headers={
                "X-FORWARDED-PROTOCOL": "ssl",
                "X-FORWARDED-PROTO": "https",
                "X-FORWARDED-SSL": "on",
            },
        )
        self.worker = SimpleNamespace(cfg=cfg, nr=0, max_requests=1000, alive=True, log=logging.getLogger("test"))
        assert isinstance(inproc.app.wsgi_app, FastHandshakes)
        self.handle = EarlyHandshakes(self.worker, inproc.app.wsgi_app, self._gunicorn)

    def _gunicorn(self, listener: Any, client: socket.socket, addr: Any) -> None:
        client.settimeout(1)
        self.given_to_gunicorn.append(client.recv(65536))

    def serve(self, *chunks: bytes, path: str = "/ws/chat", extra: str = "", token: str | None = None) -> Any:
        """Send the request (a default upgrade, or `chunks`) and run `handle` on it."""
        server_end, client_end = self.inproc.pair()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token or make_token('alice')}\r\n{extra}\r\n"
        ).encode()
        for chunk in chunks or (request,):
            client_end.sendall(chunk)
        self.handle(None, server_end, ("127.0.0.1", 40000))
        return client_end


@pytest.fixture
def inproc() -> Iterator[InProcess]:
    with in_process() as running:
        yield running


def read_101(client_end: Any) -> bytes:
    client_end.settimeout(5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += client_end.recv(4096)
    answer, _, rest = buf.partition(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols"), answer
    return rest


def test_an_accepted_upgrade_is_served_before_gunicorn_and_its_bytes_consumed(inproc: InProcess) -> None:
    early = Early(inproc)
    client_end = early.serve()
    rest = read_101(client_end)
    assert early.given_to_gunicorn == [] and early.worker.nr == 1
    client = WebSocketTestClient(client_end, rest)  # the public client, on a socket upgraded by hand
    assert client.receive()["type"] == "welcome"  # the session read no byte of the request as a frame
    client.send({"type": "join", "room": "lobby"})
    assert client.receive()["type"] == "joined"


@pytest.mark.parametrize(
    ("why", "extra"),
    [
        ("refused: Origin", "Origin: https://evil.example\r\n"),
        ("unusual head", "X_Forwarded_For: 6.6.6.6\r\n"),
    ],
)
def test_a_refusal_or_an_unusual_head_reaches_gunicorn_unread(inproc: InProcess, why: str, extra: str) -> None:
    early = Early(inproc)
    early.serve(extra=extra)
    assert len(early.given_to_gunicorn) == 1, why
    assert early.given_to_gunicorn[0].startswith(b"GET /ws/chat HTTP/1.1\r\n")
    assert early.given_to_gunicorn[0].endswith(extra.encode() + b"\r\n")  # the whole request, unread
    assert inproc.service.registry.held == 0 and early.worker.nr == 0  # nothing reserved, nothing counted


def test_a_bad_token_reaches_gunicorn(inproc: InProcess) -> None:
    early = Early(inproc)
    early.serve(token="not.a.token")
    assert len(early.given_to_gunicorn) == 1


def test_a_head_not_whole_in_the_first_read_or_followed_by_bytes_reaches_gunicorn(inproc: InProcess) -> None:
    early = Early(inproc)
    start = b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    early.serve(start)  # the rest would come later
    whole = (
        start
        + f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {make_token('alice')}\r\n\r\n".encode()
    )
    early.serve(whole + b"\x81\x80abcd")  # a frame sent before the 101
    assert early.given_to_gunicorn == [start, whole + b"\x81\x80abcd"]


def test_a_path_flask_must_route_or_plain_http_reaches_gunicorn() -> None:
    app = Flask(__name__)
    with in_process(app) as inproc:

        @inproc.ws.route("/ws/rooms/<name>")
        def rooms(conn: Any, name: str) -> None:
            conn.send({"room": name})

        early = Early(inproc)
        early.serve(path="/ws/rooms/<name>")
        early.serve(path="/ws/nowhere")
        early.serve(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert len(early.given_to_gunicorn) == 3 and inproc.service.registry.held == 0


def test_an_app_hook_or_a_middleware_added_later_sends_upgrades_to_gunicorn(inproc: InProcess) -> None:
    early = Early(inproc)
    inproc.app.before_request(lambda: None)
    early.serve()
    inproc.app.before_request_funcs.clear()
    inner = inproc.app.wsgi_app
    inproc.app.wsgi_app = lambda environ, start_response: inner(environ, start_response)  # type: ignore[method-assign]
    early.serve()
    assert len(early.given_to_gunicorn) == 2 and inproc.service.registry.held == 0


def test_a_connection_that_says_nothing_is_closed_after_keepalive(inproc: InProcess) -> None:
    early = Early(inproc, keepalive=0.05)
    server_end, client_end = inproc.pair()
    early.handle(None, server_end, ("127.0.0.1", 40000))  # returns: gunicorn would drop it too
    client_end.close()
    early.handle(None, server_end, ("127.0.0.1", 40000))  # closed before a byte: nothing to answer
    assert early.given_to_gunicorn == []


def test_max_requests_is_counted_as_gunicorn_does(inproc: InProcess) -> None:
    early = Early(inproc)
    early.worker.max_requests = 2
    read_101(early.serve())
    assert early.worker.alive
    read_101(early.serve())
    assert not early.worker.alive and early.worker.nr == 2
    until(lambda: inproc.service.registry.held == 2, "both sessions registered")


# ---- under a real gunicorn ----------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server(env={"WSAPP_TRUSTED_PROXIES": "127.0.0.1", "WSAPP_LOG_LEVEL": "INFO"}).start()
    yield srv
    srv.stop()


def test_gunicorn_serves_upgrades_before_its_parser_and_says_so(server: Server) -> None:
    assert "upgrades are read before gunicorn's HTTP parser" in server.log()
    status, _, _, sock = raw_handshake(server.port, "/ws/chat", {"Authorization": f"Bearer {make_token('early')}"})
    sock.close()
    assert status == 101


def test_a_repeated_header_means_what_gunicorn_makes_of_it(server: Server) -> None:
    # gunicorn joins repeats ("Bearer t,Bearer t"): not a token, so 401 as before
    token = make_token("twice")
    req = (
        f"GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(req.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_contradictory_scheme_headers_are_refused_by_gunicorn_as_before(server: Server) -> None:
    # from a peer in forwarded_allow_ips (127.0.0.1 by default) gunicorn answers 400
    token = make_token("scheme")
    one = {"Authorization": f"Bearer {token}", "X-Forwarded-Proto": "https"}
    status, _, _, sock = raw_handshake(server.port, "/ws/echo", one)
    sock.close()
    assert status == 101
    status, _, _, sock = raw_handshake(server.port, "/ws/echo", {**one, "X-Forwarded-Ssl": "off"})
    sock.close()
    assert status == 400


def test_a_header_name_with_an_underscore_is_dropped_as_gunicorn_drops_it(server: Server) -> None:
    # through a trusted proxy, X-Forwarded-For is believed; X_Forwarded_For never is
    token = make_token("underscore")
    status, _, _, sock = raw_handshake(
        server.port, "/ws/chat", {"Authorization": f"Bearer {token}", "X_Forwarded_For": "203.0.113.66"}
    )
    sock.close()
    assert status == 101
    until_log(server, "connect client=underscore ")
    line = next(x for x in server.log().splitlines() if "connect client=underscore " in x)
    assert "addr=127.0.0.1" in line and "203.0.113.66" not in line


def until_log(server: Server, text: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not logged"
        time.sleep(0.05)


def test_a_pre_request_hook_keeps_upgrades_on_gunicorns_path(tmp_path: Path) -> None:
    config = tmp_path / "hooked.conf.py"
    config.write_text(
        f"exec(open({str(ROOT / 'gunicorn.conf.py')!r}).read())\n"
        + textwrap.dedent(
            """
            def pre_request(worker, req):
                worker.log.info("pre_request saw %s %s", req.method, req.path)
            """
        )
    )
    srv = Server(config=str(config)).start()
    try:
        status, _, _, sock = raw_handshake(srv.port, "/ws/echo", {"Authorization": f"Bearer {make_token('hooked')}"})
        sock.close()
        assert status == 101
        until_log(srv, "pre_request saw GET /ws/echo")
        assert "upgrades are read before gunicorn's HTTP parser" not in srv.log()
    finally:
        srv.stop()


class Dribbling(gevent.socket.socket):
    """A socket whose reads and writes move at most 7 bytes per call (the kernel may do that)."""

    def recv(self, n: int, *args: Any) -> bytes:
        return super().recv(min(n, 7), *args)

    def send(self, data: Any, *args: Any, **kwargs: Any) -> int:
        return super().send(bytes(data[:7]), *args, **kwargs)


def test_take_over_consumes_every_peeked_byte_and_writes_the_whole_101_in_pieces() -> None:
    a, client_end = gevent.socket.socketpair()
    server_end = Dribbling(fileno=a.detach())
    request = b"GET /ws/echo HTTP/1.1\r\nHost: x\r\n\r\n"
    client_end.sendall(request + b"frames")
    sock = takeover.take_over(
        server_end, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", unread=len(request)
    )
    try:
        client_end.settimeout(5)
        got = b""
        while not got.endswith(b"\r\n\r\n"):
            got += client_end.recv(4096)
        assert got == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        assert sock.recv(100) == b"frames"[:7]  # the request consumed, frames kept
    finally:
        sock.close()
        client_end.close()
