"""wsapp as a Flask extension, in this process: routes the flask-sock way and the WSApp way,
frame types, room rules, pushes, hooks, settings from app.config, and a good citizen in
someone else's app (two apps in one process, nothing process-wide, tasks that stop).

Each app is served over real socket pairs (`inprocess`); the same API under a real
gunicorn is tests/test_extending.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import gevent
import pytest
from flask import Blueprint, Flask
from inprocess import InProcess, in_process, until

from helpers import ROOT, SECRET, free_port, make_token, raw_handshake
from wsapp import Connection, FrameError, Identity, Sock, WSApp
from wsapp.settings import Settings, SettingsError
from wsapp.testing import HandshakeRefused, connect


def joined(client: Any, room: str, msg_id: str | None = None) -> dict[str, Any]:
    """Send a join (with `msg_id`, an ack follows the `joined`); the answer."""
    client.send({"type": "join", "room": room, **({"id": msg_id} if msg_id else {})})
    return client.receive()


# ---- routes --------------------------------------------------------------------------


def test_a_route_added_the_flask_sock_way_gets_a_connection() -> None:
    with in_process() as inproc:
        sock = inproc.app.extensions["wsapp.sock"]

        @sock.route("/ws/upper")
        def upper(ws):  # type: ignore[no-untyped-def]  # flask-sock's shape: f(ws)
            while (message := ws.receive()) is not None:
                ws.send(message.upper())

        client = inproc.connect("/ws/upper")
        client.send("shout")
        assert client.receive() == "SHOUT"
        client.close()
        assert client.wait_closed() == 1000
        until(lambda: inproc.service.registry.held == 0, "the slot is back")


def test_sock_then_route_before_init_app_needs_no_app_context() -> None:
    sock = Sock()  # flask-sock's documented pattern: routes first, the app later

    @sock.route("/ws/early/<name>")
    def early(ws: Connection, name: str) -> None:
        ws.send({"name": name, "client": ws.client_id})

    app = Flask(__name__)
    sock.init_app(app)
    with in_process(app) as inproc:
        client = inproc.connect("/ws/early/kim", client_id="bo")
        assert client.receive() == {"name": "kim", "client": "bo"}
        assert client.wait_closed() == 1000  # the handler returned: a normal close


def test_ws_route_before_init_app_and_on_a_blueprint() -> None:
    ws = WSApp()
    bp = Blueprint("things", __name__, url_prefix="/things")

    @ws.route("/ws/first")
    def first(conn: Connection) -> None:
        conn.send("first")

    @ws.route("/ws/second", bp=bp)
    def second(conn: Connection) -> None:
        conn.send(b"\x00second")

    app = Flask(__name__)
    app.config.update(WSAPP_JWT_SECRET=SECRET)
    ws.init_app(app)
    app.register_blueprint(bp)
    try:
        for path, message in (("/ws/first", "first"), ("/things/ws/second", b"\x00second")):  # text, binary
            resp = app.test_client().get(path)  # no handshake: answered as JSON by the route itself
            assert (resp.status_code, resp.json["error"]) == (400, "not_websocket")  # type: ignore[index]
            with _serve(app) as inproc:
                assert inproc.connect(path).receive() == message
    finally:
        ws.close()


def test_every_route_is_checked_before_the_101() -> None:
    with in_process() as inproc:

        @inproc.ws.route("/ws/private")
        def private(conn: Connection) -> None:
            raise AssertionError("never runs")

        for headers, refusal in (
            ({}, (401, "missing_token")),
            ({"Authorization": "Bearer nonsense"}, (401, "invalid_token")),
            ({"Authorization": f"Bearer {make_token()}", "Origin": "http://evil.example"}, (403, "origin_not_allowed")),
        ):
            assert _refusal(inproc, "/ws/private", headers) == refusal
        assert inproc.service.registry.held == 0
        assert len(inproc.lines(r"^refused GET /ws/private status=40")) == 3


def test_a_handler_that_raises_is_closed_1011_logged_once_and_gives_everything_back() -> None:
    with in_process() as inproc:

        @inproc.ws.route("/ws/boom")
        def boom(conn: Connection) -> None:
            conn.join("r")
            raise RuntimeError("the handler's bug")

        for _ in range(inproc.service.settings.max_connections_per_client + 1):  # a leak would 429 the last
            client = inproc.connect("/ws/boom")
            assert client.wait_closed() == 1011
            until(lambda: inproc.service.registry.held == 0, "the slot is back")
        assert inproc.service.registry.peers() == [] and inproc.ws.members("r") == []
        assert len(inproc.lines("error in boom session")) == inproc.service.settings.max_connections_per_client + 1


def test_receive_with_a_timeout_returns_none_and_the_connection_stays_open() -> None:
    with in_process() as inproc:

        @inproc.ws.route("/ws/patient")
        def patient(conn: Connection) -> None:
            first = conn.receive(timeout=0.05)
            conn.send({"first": first, "open": conn.open})
            conn.send({"then": conn.receive(timeout=5)})

        client = inproc.connect("/ws/patient")
        assert client.receive() == {"first": None, "open": True}
        client.send("late")
        assert client.receive() == {"then": "late"}


def test_connect_and_disconnect_hooks_see_the_connection() -> None:
    seen: list[tuple[str, str, frozenset[str]]] = []
    with in_process() as inproc:

        @inproc.ws.on_connect
        def hello(conn: Connection) -> None:
            seen.append(("connect", conn.client_id, conn.rooms))

        @inproc.ws.on_disconnect
        def bye(conn: Connection) -> None:
            seen.append(("disconnect", conn.client_id, conn.rooms))

        client = inproc.connect(client_id="hooked")
        assert client.receive()["type"] == "welcome"
        assert joined(client, "lobby")["type"] == "joined"
        client.close()
        assert client.wait_closed() == 1000
        until(lambda: len(seen) == 2, "both hooks ran")
    assert seen == [("connect", "hooked", frozenset()), ("disconnect", "hooked", frozenset({"lobby"}))]


# ---- frame types ---------------------------------------------------------------------


def test_an_app_adds_a_frame_type_beside_the_built_in_ones() -> None:
    with in_process() as inproc:
        ws = inproc.ws

        @ws.on("typing")
        def typing(conn: Connection, frame: dict[str, Any]) -> int:
            if "room" not in frame:
                raise FrameError("missing_field", "'room' is required")
            return ws.broadcast({"type": "typing", "from": conn.client_id}, room=frame["room"])

        alice, bob = inproc.connect(client_id="alice"), inproc.connect(client_id="bob")
        for client in (alice, bob):
            assert client.receive()["type"] == "welcome"
            assert joined(client, "r")["type"] == "joined"
        assert alice.receive()["event"] == "join"  # bob came in
        alice.send({"type": "typing", "room": "r", "id": 7})
        for client in (alice, bob):
            got = client.receive()
            assert (got["type"], got["room"], got["from"], got["data"]) == (
                "room",
                "r",
                "server",
                {"type": "typing", "from": "alice"},
            )
        assert alice.receive() == {"type": "ack", "id": 7, "delivered": 2}
        alice.send({"type": "typing", "id": "no-room"})
        assert alice.receive() == {
            "type": "error",
            "code": "missing_field",
            "message": "'room' is required",
            "id": "no-room",
        }
        alice.send({"type": "reading", "id": 8})  # nobody registered it
        assert alice.receive()["code"] == "unknown_type"
        alice.send({"type": "broadcast", "data": "still open", "id": 9})  # the built-ins still work
        assert alice.receive()["data"] == "still open"


def test_an_app_may_replace_a_built_in_frame_type() -> None:
    with in_process() as inproc:

        @inproc.ws.on("broadcast")
        def no_broadcasts(conn: Connection, frame: dict[str, Any]) -> int:
            raise FrameError("forbidden", "broadcasts are off here")

        client = inproc.connect()
        assert client.receive()["type"] == "welcome"
        client.send({"type": "broadcast", "data": 1, "id": "b"})
        assert client.receive() == {
            "type": "error",
            "code": "forbidden",
            "message": "broadcasts are off here",
            "id": "b",
        }


# ---- room rules ----------------------------------------------------------------------


def test_authorize_join_refuses_with_forbidden_and_the_connection_stays_open() -> None:
    asked: list[tuple[str, str]] = []
    with in_process() as inproc:

        @inproc.ws.authorize_join
        def may_join(identity: Identity, room: str) -> bool:
            asked.append((identity.client_id, room))
            return room in identity.claims.get("rooms", []) or identity.is_admin

        client = inproc.connect(token=make_token("carol", rooms=["team"]))
        assert client.receive()["type"] == "welcome"
        assert joined(client, "team", "j-team") == {
            "type": "joined",
            "room": "team",
            "members": ["carol"],
            "offset": 0,
            "epoch": "",
        }
        assert client.receive() == {"type": "ack", "id": "j-team", "delivered": 0}
        assert joined(client, "board", "j-board") == {
            "type": "error",
            "code": "forbidden",
            "message": "you may not join 'board'",
            "id": "j-board",
        }
        client.send({"type": "room", "room": "board", "data": 1, "id": "r"})
        assert client.receive()["code"] == "not_in_room"
        admin = inproc.connect(token=make_token("root", admin=True))
        assert admin.receive()["type"] == "welcome"
        assert joined(admin, "board")["type"] == "joined"
        # the server's own rights: ws.broadcast reaches a room whatever the rule says
        assert inproc.ws.broadcast("notice", room="board") == 1
        assert admin.receive()["data"] == "notice"
    assert asked == [("carol", "team"), ("carol", "board"), ("root", "board")]


@pytest.mark.parametrize(
    ("claim", "room", "allowed"),
    [
        (["team", "shop:*"], "team", True),
        (["team", "shop:*"], "shop:paris", True),
        (["team", "shop:*"], "shopping", False),
        (["team", "shop:*"], "Team", False),  # case-sensitive, whatever the platform
        ("team", "team", True),  # one name as a string
        (None, "team", False),  # no claim: no room
        (42, "team", False),
        ([1, "team"], "team", True),
    ],
)
def test_the_rooms_claim_rule(claim: Any, room: str, allowed: bool) -> None:
    with in_process(WSAPP_ROOMS_CLAIM="rooms") as inproc:
        ident = Identity("dee", False, time.time() + 60, {"rooms": claim} if claim is not None else {})
        assert inproc.ws.may_join(ident, room) is allowed
        assert inproc.ws.may_join(Identity("root", True, 0, {}), room)  # admins join any room


def test_the_rooms_claim_on_the_wire() -> None:
    with in_process(WSAPP_ROOMS_CLAIM="rooms") as inproc:
        client = inproc.connect(token=make_token("dee", rooms=["shop:*"]))
        assert client.receive()["type"] == "welcome"
        assert joined(client, "shop:lyon")["type"] == "joined"
        assert joined(client, "staff")["code"] == "forbidden"
    with in_process() as inproc:  # no claim setting, no hook: any room, as before
        client = inproc.connect(token=make_token("dee"))
        assert client.receive()["type"] == "welcome"
        assert joined(client, "staff")["type"] == "joined"


# ---- pushes --------------------------------------------------------------------------


def test_pushes_from_a_view_a_greenlet_and_a_cli_command_are_the_contracts_frames() -> None:
    app = Flask(__name__)
    with in_process(app) as inproc:
        ws = inproc.ws

        @app.post("/ship/<to>")
        def ship(to: str) -> dict[str, int]:
            return {"delivered": ws.send(to, {"order": 1})}

        @app.cli.command("announce")
        def announce() -> None:
            print(ws.broadcast("from the cli"))

        @ws.route("/ws/quiet")  # not addressable: pushes pass it by
        def quiet(conn: Connection) -> None:
            for _ in conn:
                pass

        alice1, alice2, bob = (inproc.connect(client_id=c) for c in ("alice", "alice", "bob"))
        quiet_alice = inproc.connect("/ws/quiet", client_id="alice")
        for client in (alice1, alice2, bob):
            assert client.receive()["type"] == "welcome"
        assert ws.clients() == {"alice": 2, "bob": 1}

        assert app.test_client().post("/ship/alice").json == {"delivered": 2}
        for client in (alice1, alice2):
            got = client.receive()
            assert {k: got[k] for k in ("type", "from", "to", "data")} == {
                "type": "direct",
                "from": "server",
                "to": "alice",
                "data": {"order": 1},
            }
        assert app.test_client().post("/ship/nobody").json == {"delivered": 0}

        pushed = gevent.spawn(ws.send, "bob", "from a greenlet", sender="billing")
        assert pushed.get(timeout=5) == 1
        got = bob.receive()
        assert (got["type"], got["from"], got["data"]) == ("direct", "billing", "from a greenlet")

        result = app.test_cli_runner().invoke(args=["announce"])
        assert result.output.strip() == "3"
        for client in (alice1, alice2, bob):
            got = client.receive()
            assert (got["type"], got["from"], got["data"]) == ("broadcast", "server", "from the cli")

        assert joined(bob, "r")["type"] == "joined"
        assert ws.members("r") == ["bob"]
        assert ws.broadcast({"x": 1}, room="r", sender="ops") == 1
        got = recv_type(bob, "room")
        assert (got["room"], got["from"], got["data"]) == ("r", "ops", {"x": 1})

        # revoking access: every connection of the client, any route
        assert ws.disconnect("alice", 4403, "revoked") == 3
        for client in (alice1, alice2, quiet_alice):
            assert client.wait_closed() == 4403
        until(lambda: ws.clients() == {"bob": 1}, "alice is gone")
        assert ws.disconnect("alice") == 0


def recv_type(client: Any, kind: str) -> dict[str, Any]:
    while (got := client.receive())["type"] != kind:
        pass
    return got


# ---- settings ------------------------------------------------------------------------


def test_settings_come_from_app_config_first_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSAPP_JWT_SECRET", SECRET)
    monkeypatch.setenv("WSAPP_MAX_ROOMS", "7")
    monkeypatch.setenv("WSAPP_PING_INTERVAL", "30")
    monkeypatch.setenv("FLASK_WSAPP_RATE_LIMIT", "12.5")
    app = Flask(__name__)
    app.config.from_prefixed_env()
    app.config.update(WSAPP_MAX_ROOMS=3, WSAPP_COMPRESSION=True, WSAPP_ALLOWED_ORIGINS=["https://a.example"])
    ws = WSApp(app)
    try:
        s = ws.settings
        assert (s.max_rooms, s.compression, s.allowed_origins) == (3, True, ("https://a.example",))
        assert (s.rate_limit, s.ping_interval_s) == (12.5, 30.0)  # from_prefixed_env; the environment
    finally:
        ws.close()


def test_bad_config_values_are_one_line_each() -> None:
    app = Flask(__name__)
    app.config.update(WSAPP_JWT_SECRET=SECRET, WSAPP_MAX_ROOMS=0, WSAPP_CHAT_PATH="chat", WSAPP_COMPRESSION="maybe")
    with pytest.raises(SettingsError) as err:
        WSApp(app)
    lines = err.value.lines()
    assert len(lines) == 3
    assert lines[0].startswith("wsapp: invalid setting WSAPP_MAX_ROOMS=") and "'0'" in lines[0]
    assert any(line.startswith("wsapp: invalid setting WSAPP_CHAT_PATH='chat'") for line in lines)
    assert "wsapp" not in app.extensions


def test_the_chat_route_path_is_a_setting_and_can_be_off() -> None:
    with in_process(WSAPP_CHAT_PATH="/live") as inproc:
        assert inproc.connect("/live").receive()["type"] == "welcome"
        assert _refusal(inproc, "/ws/chat", {})[0] == 404
    with in_process(WSAPP_CHAT_PATH="") as inproc:
        assert _refusal(inproc, "/ws/chat", {})[0] == 404
        assert not any(rule.rule == "/ws/chat" for rule in inproc.app.url_map.iter_rules())


# ---- a good citizen ------------------------------------------------------------------


def test_two_apps_in_one_process_keep_apart() -> None:
    with in_process() as one, in_process(WSAPP_MAX_ROOMS="1") as two:
        a = one.connect(client_id="same")
        b = two.connect(client_id="same")
        assert a.receive()["type"] == "welcome" and b.receive()["type"] == "welcome"
        assert one.ws.send("same", "to one") == 1
        assert a.receive()["data"] == "to one"
        assert two.ws.broadcast("to two") == 1
        assert b.receive()["data"] == "to two"
        assert one.service.registry is not two.service.registry
        assert one.service.metrics.registry is not two.service.metrics.registry
        assert one.service.metrics.connection_slots._value.get() == 1
        assert two.service.metrics.connection_slots._value.get() == 1
        assert joined(b, "x")["type"] == "joined"
        assert joined(b, "y")["code"] == "too_many_rooms"  # two's setting
        assert joined(a, "x")["type"] == "joined"
        assert joined(a, "y")["type"] == "joined"  # not one's
        a.close()
        assert a.wait_closed() == 1000
        until(lambda: one.service.registry.held == 0, "one's slot is back")
        assert two.service.registry.held == 1


def test_the_extension_changes_nothing_process_wide() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.logThreads, logging.getLogger("wsapp").handlers[:])
    app = Flask(__name__)
    app.config.update(WSAPP_JWT_SECRET=SECRET)
    ws = WSApp(app)
    try:
        after = (list(root.handlers), root.level, logging.logThreads, logging.getLogger("wsapp").handlers[:])
        assert after == before
        assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("wsapp").handlers if h.level == 0)
        assert app.error_handler_spec == {}  # no error handler on the app
        assert {r.rule for r in app.url_map.iter_rules()} == {"/static/<path:filename>", "/ws/chat"}
        assert app.config.get("MAX_CONTENT_LENGTH") is None
        resp = app.test_client().get("/nope")
        assert resp.status_code == 404 and resp.mimetype == "text/html"  # the app's own answer
    finally:
        ws.close()


def test_close_stops_the_heartbeat_and_a_second_init_app_is_refused() -> None:
    app = Flask(__name__)
    app.config.update(WSAPP_JWT_SECRET=SECRET)
    ws = WSApp(app)
    app.test_client().get("/")  # the first request starts the heartbeat (init_app starts nothing)
    beat = ws._heartbeat
    assert beat is not None and not beat.dead
    with pytest.raises(RuntimeError, match="one WSApp per app"):
        ws.init_app(Flask(__name__))
    ws.close()
    until(lambda: beat.dead, "the heartbeat stopped")
    ws.close()  # idempotent


def test_a_library_user_s_app_still_logs_nothing_of_wsapp_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wsapp"), in_process() as inproc:
        inproc.connect().receive()
    assert any(r.name == "wsapp.connections" and r.getMessage().startswith("connect ") for r in caplog.records)


# ---- the server adapter --------------------------------------------------------------


def test_a_server_without_gevent_sockets_gets_501_and_one_sentence(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with in_process() as inproc:
        server_end, client_end = socket.socketpair()  # a plain socket: Werkzeug's threaded server
        with caplog.at_level(logging.ERROR):
            resp = inproc.app.test_client().get(  # by hand: wsapp.testing's sockets are gevent's
                "/ws/chat",
                headers={**UPGRADE, "Authorization": f"Bearer {make_token()}"},
                environ_overrides={"werkzeug.socket": server_end},
            )
        server_end.close()
        client_end.close()
        assert (resp.status_code, resp.json["error"]) == (501, "unsupported_server")  # type: ignore[index]
        (line,) = [r.getMessage() for r in caplog.records if "gevent" in r.getMessage()]
        assert "gunicorn -k gevent" in line and "\n" not in line
        assert inproc.service.registry.held == 0


def test_flask_run_answers_501_and_says_to_use_gunicorn() -> None:
    """`flask --app app run`: the shipped app under Werkzeug's development server."""
    port = free_port()
    env = {"WSAPP_JWT_SECRET": SECRET, "WSAPP_INSTANCE_PATH": ROOT.as_posix(), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _hdrs, body, sock = raw_handshake(port, "/ws/chat", {"Authorization": f"Bearer {make_token()}"})
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "flask run did not start"
                time.sleep(0.1)
        sock.close()
        assert status == 501 and b"unsupported_server" in body
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert "WebSockets need gunicorn's gevent worker" in out and "gunicorn -k gevent app:app" in out
    assert "Traceback" not in out and "Bad file descriptor" not in out


# ---- helpers -------------------------------------------------------------------------


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def _refusal(inproc: InProcess, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
    """A handshake that must be refused (`headers` added, no token of its own): its status and error."""
    with pytest.raises(HandshakeRefused) as refused:
        connect(inproc.ws, path, headers=headers)
    return refused.value.status, refused.value.error


def _serve(app: Flask) -> Any:
    """An `InProcess` view of an app whose WSApp exists already."""
    import contextlib

    @contextlib.contextmanager
    def serving() -> Any:
        ext = app.extensions["wsapp"]
        running = InProcess(app, ext.service, [], ext)
        try:
            yield running
        finally:
            running.shut()

    return serving()


def test_settings_can_be_given_whole() -> None:
    app = Flask(__name__)
    ws = WSApp(app, settings=Settings(jwt_secret=SECRET, chat_path=""))
    try:
        assert ws.settings.chat_path == "" and not ws.sock.routes
    finally:
        ws.close()


def test_the_site_blueprint_is_optional_and_its_errors_are_its_own() -> None:
    from wsapp import site

    app = Flask(__name__)
    with in_process(app) as inproc:
        app.register_blueprint(site.blueprint(inproc.ws))
        client = app.test_client()
        admin = {"Authorization": f"Bearer {make_token('ops', admin=True)}"}
        assert client.get("/api/clients", headers=admin).json == {"clients": [], "total": 0, "connections": 0}
        resp = client.get("/api/clients")
        assert (resp.status_code, resp.json["error"]) == (401, "missing_token")  # type: ignore[index]
        assert client.get("/healthz").json == {"status": "ok"}
        assert client.get("/").status_code == 404  # no static folder given: no demo page
        assert client.get("/nope").mimetype == "text/html"  # the app's own 404, not wsapp's
        assert not any(app.error_handler_spec[None].values())  # handlers on the blueprint only
        assert any(app.error_handler_spec["wsapp"].values())


def test_docs_extending_names_every_public_name() -> None:
    text = (ROOT / "docs" / "extending.md").read_text()
    for name in (
        "WSApp",
        "Connection",
        "Identity",
        "FrameError",
        "ws.route",
        "ws.on(",
        "ws.authorize_join",
        "ws.send(",
        "ws.broadcast(",
        "ws.clients()",
        "ws.members(",
        "ws.disconnect(",
        "ws.on_connect",
        "ws.on_disconnect",
        "conn.client_id",
        "conn.identity",
        "conn.rooms",
        "conn.join(",
        "conn.leave(",
        "conn.send(",
        "conn.receive(",
        "conn.close(",
        "examples/orders.py",
        "from wsapp.server import on_starting, post_worker_init",
    ):
        assert name in text, name


def test_a_wsapp_without_an_app_says_so() -> None:
    ws = WSApp()
    with pytest.raises(RuntimeError, match="init_app"):
        ws.send("alice", 1)
    ws.close()  # nothing to stop


def test_gunicorn_config_imports_no_flask_in_the_master() -> None:
    """The drain's hooks come from wsapp.server, imported by gunicorn's master before the
    gevent worker monkey-patches: it must not bring Flask (or ssl) in."""
    code = (
        "import runpy, sys; runpy.run_path('gunicorn.conf.py'); "
        "print(sorted(m for m in ('flask', 'werkzeug', 'ssl') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"WSAPP_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1012, 2999, 5000, 70000, True])
def test_a_close_code_a_server_may_not_send_fails_where_it_is_asked_for(code: int) -> None:
    with in_process() as inproc:
        client = inproc.connect(client_id="alice")
        assert client.receive()["type"] == "welcome"
        with pytest.raises(ValueError, match="not a close code"):
            inproc.ws.disconnect("alice", code)
        assert inproc.ws.send("alice", "still open") == 1


@pytest.mark.parametrize("code", [1000, 1008, 1011, 3000, 4999])
def test_close_codes_a_server_may_send(code: int) -> None:
    with in_process() as inproc:
        client = inproc.connect(client_id="alice")
        assert client.receive()["type"] == "welcome"
        assert inproc.ws.disconnect("alice", code, "bye") == 1
        assert client.wait_closed() == code


def test_a_frame_handler_returning_something_else_than_a_count_acks_0() -> None:
    with in_process() as inproc:

        @inproc.ws.on("odd")
        def odd(conn: Connection, frame: dict[str, Any]) -> Any:
            return {"not": "a count"}

        client = inproc.connect()
        assert client.receive()["type"] == "welcome"
        client.send({"type": "odd", "id": 1})
        assert client.receive() == {"type": "ack", "id": 1, "delivered": 0}
