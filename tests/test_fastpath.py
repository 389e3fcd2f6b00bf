"""wsapp.handshake.fast: accepted handshakes on static routes skip Flask's request, and only
when nothing of the app's could notice; refusals are Flask's, answered as before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from inprocess import InProcess, in_process

from wsapp.handshake.fast import FastHandshakes
from wsapp.handshake.request import EnvironRequest
from wsapp.handshake.upgrade import Upgrader
from wsapp.testing import HandshakeRefused, connect


@pytest.fixture
def seen(monkeypatch: Any) -> list[str]:
    """'fast' or 'flask' per handshake that reached the one upgrade, in order."""
    calls: list[str] = []
    original = Upgrader.upgrade

    def spy(self: Upgrader, handler: Any, route: Any, args: Any, kwargs: Any, req: Any, **kw: Any) -> None:
        calls.append("fast" if isinstance(req, EnvironRequest) else "flask")
        original(self, handler, route, args, kwargs, req, **kw)

    monkeypatch.setattr(Upgrader, "upgrade", spy)
    return calls


@pytest.fixture
def inproc() -> Iterator[InProcess]:
    with in_process() as running:
        yield running


def test_an_accepted_handshake_skips_flask(inproc: InProcess, seen: list[str]) -> None:
    assert isinstance(inproc.app.wsgi_app, FastHandshakes)
    client = inproc.connect()
    assert client.receive()["type"] == "welcome"
    assert seen == ["fast"]


def test_a_refusal_is_checked_and_answered_once_by_the_fast_path(inproc: InProcess, seen: list[str]) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        connect(inproc.ws, "/ws/chat", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403 and refused.value.error == "origin_not_allowed"
    assert seen == ["fast"]  # refused there and answered as Flask's view would
    assert len(inproc.lines(r"^refused GET /ws/chat status=403")) == 1


def test_a_refusal_with_a_cookie_is_answered_by_flask(inproc: InProcess, seen: list[str]) -> None:
    """Flask's answer may refresh a permanent session's cookie: a request with one is Flask's."""
    server_end, _client_end = inproc.pair()
    client = inproc.app.test_client()  # Flask's own, for its cookie jar
    client.set_cookie("session", "x")
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Origin": "https://evil.example",
    }
    resp = client.get("/ws/chat", headers=headers, environ_overrides={"werkzeug.socket": server_end})
    assert resp.status_code == 403 and resp.get_json()["error"] == "origin_not_allowed"
    assert seen == ["fast", "flask"]
    assert len(inproc.lines(r"^refused GET /ws/chat status=403")) == 1


@pytest.mark.parametrize("hook", ["before_request", "after_request", "teardown_request", "url_value_preprocessor"])
def test_a_request_hook_of_the_app_sends_handshakes_through_flask(seen: list[str], hook: str) -> None:
    app = Flask(__name__)
    ran: list[str] = []

    def record(*args: Any) -> Any:
        ran.append(hook)
        return args[0] if hook == "after_request" else None

    getattr(app, hook)(record)
    with in_process(app) as inproc:
        inproc.connect()
    assert seen == ["flask"] and ran == [hook]


def test_a_signal_receiver_sends_handshakes_through_flask(seen: list[str]) -> None:
    from flask import request_started

    got: list[Any] = []

    def receiver(sender: Any, **extra: Any) -> None:
        got.append(sender)

    request_started.connect(receiver)
    try:
        with in_process() as inproc:
            inproc.connect()
    finally:
        request_started.disconnect(receiver)
    assert seen == ["flask"] and len(got) == 1


def test_a_route_with_a_converter_goes_through_flask(seen: list[str]) -> None:
    app = Flask(__name__)
    with in_process(app) as inproc:

        @inproc.ws.route("/ws/rooms/<name>")
        def rooms(conn: Any, name: str) -> None:
            conn.send({"room": name})

        client = inproc.connect("/ws/rooms/lobby")
        assert client.receive() == {"room": "lobby"}
        client = inproc.connect("/ws/rooms/<name>")  # the rule's own text is a room name too
        assert client.receive() == {"room": "<name>"}
    assert seen == ["flask", "flask"]


def test_a_middleware_wrapped_in_before_is_never_skipped() -> None:
    app = Flask(__name__)
    inner = app.wsgi_app
    app.wsgi_app = lambda environ, start_response: inner(environ, start_response)  # type: ignore[method-assign]
    with in_process(app) as inproc:
        assert not isinstance(inproc.app.wsgi_app, FastHandshakes)


def test_environ_request_reads_like_werkzeug() -> None:
    environ = {
        "REQUEST_METHOD": "get",
        "QUERY_STRING": "token=a%20b&token=second&resume=1&bad=%ff",
        "HTTP_COOKIE": "access_token=xyz; other=1",
        "HTTP_SEC_WEBSOCKET_PROTOCOL": "bearer, t",
        "CONTENT_TYPE": "text/plain",
        "REMOTE_ADDR": "10.0.0.1",
    }
    req = EnvironRequest(environ)
    assert req.method == "GET" and req.remote_addr == "10.0.0.1"
    assert req.headers.get("sec-websocket-protocol") == "bearer, t" and req.headers.get("Origin") is None
    assert req.headers["Content-Type"] == "text/plain"
    assert (
        req.args.get("token") == "a b" and req.args.get("resume") == "1" and req.args.get("bad") == "%FF"
    )  # kept percent-encoded, as Werkzeug does
    assert req.cookies.get("access_token") == "xyz"
    assert set(req.headers) == {"Cookie", "Sec-Websocket-Protocol", "Content-Type"} and len(req.headers) == 3
    assert EnvironRequest({}).args.get("token") is None and EnvironRequest({}).cookies == {}
