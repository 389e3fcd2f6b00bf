"""wsapp.testing, the public in-process test client, and its pytest plugin: a real
WSApp in the test's process over gevent socket pairs (no server process), except the
plugin's user-path test (a `pytest` subprocess on docs/testing-your-app.md's example)
and the Redis test (a real redis-server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from flask import Flask

from helpers import ROOT, SECRET, RedisProcess, make_token
from wsapp import Connection, WSApp
from wsapp.settings import Settings
from wsapp.testing import ConnectionClosed, HandshakeRefused, WebSocketTestClient, connect, mint_token


def make_app(**env: str) -> tuple[Flask, WSApp]:
    settings = Settings.from_env({"WSAPP_JWT_SECRET": SECRET, "WSAPP_INSTANCE_PATH": tempfile.mkdtemp(), **env})
    app = Flask(__name__)
    ws = WSApp(app, settings=settings)

    @ws.route("/ws/feed", addressable=True)
    def feed(conn: Connection) -> None:
        conn.send({"hello": conn.client_id, "claims": conn.identity.claims})
        for message in conn:
            conn.send(message)

    @ws.route("/ws/echo")
    def echo(conn: Connection) -> None:
        for message in conn:
            conn.send(message)

    @app.post("/push/<to>")
    def push(to: str) -> dict[str, Any]:
        return {"delivered": ws.send(to, {"pushed": to})}

    @app.post("/announce/<room>")
    def announce(room: str) -> dict[str, Any]:
        return {"delivered": ws.broadcast("news", room=room)}

    return app, ws


@pytest.fixture
def app_ws() -> Iterator[tuple[Flask, WSApp]]:
    app, ws = make_app()
    yield app, ws
    ws.close()


def test_messages_round_trip_as_dict_str_and_bytes() -> None:
    _, ws = make_app(WSAPP_MAX_MESSAGE_BYTES="200000")
    with connect(ws, "/ws/echo", client_id="alice") as echo:
        echo.send("plain text")
        assert echo.receive() == "plain text"
        echo.send({"a": [1, 2]})
        assert echo.receive() == {"a": [1, 2]}
        echo.send(b"\x00\xffbinary")
        assert echo.receive() == b"\x00\xffbinary"
        echo.send("[1, 2]")  # JSON that is not an object stays text
        assert echo.receive() == "[1, 2]"
        big = "x" * 70_000  # a 64-bit length on the way in and out
        echo.send(big)
        assert echo.receive() == big
        echo.send("y" * 300)  # a 16-bit length
        assert echo.receive() == "y" * 300
    assert echo.close_code == 1000
    ws.close()


def test_a_minted_token_carries_the_client_id_and_claims(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with connect(ws, "/ws/feed", client_id="alice", claims={"shops": ["paris"]}) as alice:
        hello = alice.receive()
        assert isinstance(hello, dict) and hello["hello"] == "alice"
        assert hello["claims"]["shops"] == ["paris"] and hello["claims"]["roles"] == []
    with connect(ws, "/ws/chat", client_id="root", claims={"roles": ["admin"]}) as root:
        assert root.receive()["type"] == "welcome"  # type: ignore[index]
        root.send({"type": "broadcast", "id": 1, "data": "x"})  # chat broadcast: admins only
        assert root.receive_until(lambda m: isinstance(m, dict) and m.get("id") == 1)["type"] == "ack"  # type: ignore[index]


def test_minting_follows_the_apps_claim_issuer_and_audience() -> None:
    app, ws = make_app(WSAPP_JWT_CLIENT_ID_CLAIM="ID", WSAPP_JWT_ISSUER="shop", WSAPP_JWT_AUDIENCE="desk")
    try:
        with connect(ws, "/ws/feed", client_id="bob") as bob:
            assert bob.receive()["hello"] == "bob"  # type: ignore[index]
        with pytest.raises(HandshakeRefused) as refused:  # a token without iss/aud is not accepted
            connect(ws, "/ws/feed", token=make_token("bob"))
        assert refused.value.status == 401
    finally:
        ws.close()


def test_minting_without_a_secret_says_to_pass_a_token() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = Settings.from_env(
        {"WSAPP_JWT_PUBLIC_KEY": pem, "WSAPP_JWT_ALGORITHMS": "ES256", "WSAPP_INSTANCE_PATH": tempfile.mkdtemp()}
    )
    ws = WSApp(Flask(__name__), settings=settings)
    try:
        with pytest.raises(RuntimeError, match="pass token="):
            mint_token(ws, "alice")
    finally:
        ws.close()


def test_a_given_token_is_sent_as_is(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with connect(ws, "/ws/feed", token=make_token("carol")) as carol:
        assert carol.receive()["hello"] == "carol"  # type: ignore[index]


def test_a_token_offered_as_a_subprotocol_is_selected(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    token = mint_token(ws, "dave")
    with connect(ws, "/ws/feed", subprotocols=[token]) as dave:
        assert dave.subprotocol == token
        assert dave.receive()["hello"] == "dave"  # type: ignore[index]


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({}, 401, "missing_token"),
        ({"token": "not-a-token"}, 401, "invalid_token"),
        ({"client_id": "alice", "headers": {"Origin": "https://evil.example"}}, 403, "origin_not_allowed"),
    ],
)
def test_a_refused_handshake_raises_with_status_and_json_body(
    app_ws: tuple[Flask, WSApp], kwargs: dict[str, Any], status: int, error: str
) -> None:
    _, ws = app_ws
    with pytest.raises(HandshakeRefused) as refused:
        connect(ws, "/ws/feed", **kwargs)
    assert (refused.value.status, refused.value.error) == (status, error)
    assert refused.value.body["error"] == error and refused.value.message
    assert error in str(refused.value)


def test_an_expired_minted_token_is_refused(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with pytest.raises(HandshakeRefused) as refused:
        connect(ws, "/ws/feed", token=mint_token(ws, "alice", ttl_s=-60))
    assert refused.value.error == "token_expired"


def test_a_path_that_is_not_a_websocket_route_is_refused(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with pytest.raises(HandshakeRefused) as refused:
        connect(ws, "/nowhere", client_id="alice")
    assert refused.value.status == 404


def test_a_push_from_a_view_called_through_flasks_test_client_arrives(app_ws: tuple[Flask, WSApp]) -> None:
    app, ws = app_ws
    alice = connect(ws, "/ws/feed", client_id="alice")
    bob = connect(ws, "/ws/chat", client_id="bob")
    assert alice.receive()["hello"] == "alice"  # type: ignore[index]
    assert bob.receive()["type"] == "welcome"  # type: ignore[index]
    # no wait between connect and the push: connect returned once the session was registered
    assert app.test_client().post("/push/alice").json == {"delivered": 1}
    got = alice.receive()
    assert isinstance(got, dict) and (got["type"], got["data"]) == ("direct", {"pushed": "alice"})
    bob.send({"type": "join", "id": 1, "room": "news"})
    bob.receive_until(lambda m: isinstance(m, dict) and m.get("type") == "ack")
    assert app.test_client().post("/announce/news").json == {"delivered": 1}
    room = bob.receive_until(lambda m: isinstance(m, dict) and m.get("type") == "room")
    assert room["data"] == "news"  # type: ignore[index]
    alice.close()
    bob.close()


def test_connect_returns_after_every_on_connect_hook_even_one_added_later(app_ws: tuple[Flask, WSApp]) -> None:
    app, ws = app_ws
    seen: list[str] = []
    connect(ws, "/ws/feed", client_id="first").close()

    @ws.on_connect  # added after our own hook was installed: still runs before connect returns
    def remember(conn: Connection) -> None:
        gevent.sleep(0.01)  # a hook that does I/O: other greenlets (the test's) run meanwhile
        seen.append(conn.client_id)

    for name in ("a", "b", "c"):
        client = connect(ws, "/ws/feed", client_id=name)
        assert seen[-1] == name
        client.close()
    assert seen == ["a", "b", "c"]


def test_a_hook_that_raises_ends_the_connection_without_a_hang(app_ws: tuple[Flask, WSApp]) -> None:
    app, ws = app_ws

    @ws.on_connect
    def refuse(conn: Connection) -> None:
        raise RuntimeError("no")

    client = connect(ws, "/ws/feed", client_id="alice")  # returns once the session wrote its close
    assert client.wait_closed() == 1011


def test_the_server_closing_sets_close_code_and_reason(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    alice = connect(ws, "/ws/feed", client_id="alice")
    alice.receive()
    assert ws.disconnect("alice", 4403, "access revoked") == 1
    with pytest.raises(ConnectionClosed) as closed:
        alice.receive()
    assert (closed.value.code, closed.value.reason) == (4403, "access revoked")
    assert (alice.close_code, alice.close_reason, alice.closed) == (4403, "access revoked", True)
    with pytest.raises(ConnectionClosed):
        alice.send("too late")
    assert alice.close() == 4403  # already closed: nothing more


def test_close_sends_the_code_and_the_server_answers_it(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    alice = connect(ws, "/ws/feed", client_id="alice")
    assert alice.close(4000, "bye") == 4000
    assert alice.closed


def test_hung_up_says_the_server_closed_the_tcp_connection_after_its_close_frame(
    app_ws: tuple[Flask, WSApp],
) -> None:
    _, ws = app_ws
    alice = connect(ws, "/ws/feed", client_id="alice")
    alice.receive()
    assert not alice.hung_up
    ws.disconnect("alice", 4403, "access revoked")
    assert alice.wait_closed() == 4403 and alice.hung_up  # RFC 6455 §7.1.1: the server closes first


def test_a_socket_upgraded_by_hand_can_be_wrapped() -> None:
    """`WebSocketTestClient(sock, buffered)`: the test plays the server on the other end,
    so what the client reads after the 101 and whether the server hung up are exact."""
    server_end, client_end = gevent.socket.socketpair()
    text = b"\x81\x05hello"  # an unmasked server text frame
    client = WebSocketTestClient(client_end, text[:3])  # part of it read with the 101's head
    server_end.sendall(text[3:] + b"\x88\x02\x0f\xa0")  # then a close frame, 4000; the TCP stays open
    assert client.receive() == "hello"
    with pytest.raises(ConnectionClosed):
        client.receive(timeout=0.2)
    assert (client.close_code, client.hung_up) == (4000, False)
    assert server_end.recv(64)[:2] == b"\x88\x82"  # the close was answered, masked
    server_end.close()

    server_end, client_end = gevent.socket.socketpair()
    client = WebSocketTestClient(client_end)
    server_end.sendall(b"\x88\x02\x03\xe8")
    server_end.close()  # the close frame, then the TCP close
    assert client.wait_closed() == 1000 and client.hung_up
    server_end, client_end = gevent.socket.socketpair()
    client = WebSocketTestClient(client_end)
    server_end.close()  # no close frame at all
    assert client.wait_closed() == 1006 and client.hung_up


def test_receive_times_out_when_nothing_comes(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with connect(ws, "/ws/feed", client_id="alice") as alice:
        alice.receive()
        with pytest.raises(TimeoutError):
            alice.receive(timeout=0.2)
        with pytest.raises(TimeoutError):
            alice.receive_until(lambda m: False, timeout=0.2)


def test_client_frames_are_masked_and_a_raw_frame_can_be_sent(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with connect(ws, "/ws/echo", client_id="alice") as echo:
        echo.send_frame(0x9, b"are you there")  # a ping: answered by a pong, which receive skips
        echo.send("after the ping")
        assert echo.receive() == "after the ping"
        echo.send_frame(0x3, b"")  # a reserved opcode: the server closes 1002
        assert echo.wait_closed() == 1002


def test_receive_until_drops_the_messages_before_the_match(app_ws: tuple[Flask, WSApp]) -> None:
    _, ws = app_ws
    with connect(ws, "/ws/echo", client_id="alice") as echo:
        for i in range(5):
            echo.send({"n": i})
        assert echo.receive_until(lambda m: isinstance(m, dict) and m["n"] == 3) == {"n": 3}
        assert echo.receive() == {"n": 4}


# ---- Redis: two apps, two nodes ---------------------------------------------------------


def test_two_apps_on_one_redis_see_each_others_messages(redis_server: RedisProcess) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    app_a, ws_a = make_app(WSAPP_REDIS_URL=url)
    app_b, ws_b = make_app(WSAPP_REDIS_URL=url)
    try:
        alice = connect(ws_a, "/ws/feed", client_id="alice")
        bob = connect(ws_b, "/ws/feed", client_id="bob")
        alice.receive()
        bob.receive()
        deadline = time.monotonic() + 15
        while ws_b.clients().get("alice") != 1 or ws_a.clients().get("bob") != 1:
            assert time.monotonic() < deadline, "each node did not see the other's client"
            gevent.sleep(0.05)  # the apps' greenlets run meanwhile
        got_a = _pushed_until_delivered(app_b, alice, "alice")
        got_b = _pushed_until_delivered(app_a, bob, "bob")
        assert got_a["data"] == {"pushed": "alice"} and got_b["data"] == {"pushed": "bob"}
        alice.close()
        bob.close()
    finally:
        ws_a.close()
        ws_b.close()


def _pushed_until_delivered(app: Flask, client: WebSocketTestClient, to: str) -> dict[str, Any]:
    """POST the push on the other node until it arrives (the node's subscription to the
    client's channel may take a moment after the registry shows the client)."""
    deadline = time.monotonic() + 15
    while True:
        assert app.test_client().post(f"/push/{to}").status_code == 200
        try:
            got = client.receive(timeout=0.5)
        except TimeoutError:
            assert time.monotonic() < deadline, f"no push reached {to} through Redis"
            continue
        assert isinstance(got, dict) and got["type"] == "direct"
        return got


# ---- the pytest plugin ------------------------------------------------------------------


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {"wsapp": "wsapp.pytest_plugin"}


def doc_blocks() -> dict[str, str]:
    """docs/testing-your-app.md's python blocks whose first line names a file."""
    text = (ROOT / "docs" / "testing-your-app.md").read_text()
    blocks = {}
    for body in re.findall(r"```python\n(.*?)```", text, re.S):
        first = body.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            blocks[first[2:]] = body
    return blocks


def test_the_documented_example_passes_as_a_users_test_file(tmp_path: Path) -> None:
    """docs/testing-your-app.md's app and tests, run by pytest in a directory of their
    own with the plugin, as a user would; no server process."""
    blocks = doc_blocks()
    assert set(blocks) == {"myapp.py", "test_myapp.py"}
    for name, body in blocks.items():
        (tmp_path / name).write_text(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSAPP_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "wsapp.pytest_plugin", "-q", "-p", "no:cacheprovider", "test_myapp.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b5 passed\b", done.stdout), done.stdout


def test_the_fixtures_close_what_they_opened(tmp_path: Path) -> None:
    (tmp_path / "test_fixtures.py").write_text(
        "import pytest\n"
        "from flask import Flask\n"
        "from wsapp import WSApp\n"
        "from wsapp.testing import connect\n"
        "OPEN = []\n"
        "@pytest.fixture\n"
        "def app():\n"
        "    app = Flask(__name__)\n"
        f"    app.config['WSAPP_JWT_SECRET'] = {SECRET!r}\n"
        "    ws = WSApp(app)\n"
        "    ws.route('/ws/echo')(lambda conn: [conn.send(m) for m in conn])\n"
        "    yield app\n"
        "    assert all(c.closed for c in OPEN), 'ws_client left a client open'\n"
        "    ws.close()\n"
        "def test_open(ws_client, ws_token, ws_app):\n"
        "    OPEN.append(ws_client('/ws/echo', client_id='alice'))\n"
        "    OPEN.append(ws_client('/ws/echo', token=ws_token('bob')))\n"
        "    OPEN[1].send('hi')\n"
        "    assert OPEN[1].receive() == 'hi'\n"
        "    assert ws_app.clients() == {}\n"  # echo is not addressable
    )
    (tmp_path / "conftest.py").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSAPP_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "wsapp.pytest_plugin", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout + done.stderr
