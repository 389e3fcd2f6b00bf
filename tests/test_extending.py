"""docs/extending.md's example app, examples/orders.py, under a real gunicorn with its own
config (examples/gunicorn_orders.py): its route, its frame type, its room rule, pushes
from its views, the drain from the one documented config line; with and without Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from helpers import (
    ROOT,
    SECRET,
    RedisProcess,
    Server,
    http,
    make_token,
    read_close,
    recv_json,
    recv_until,
)
from helpers import ws_connect as connect

ROOMS = {"shops": ["shop:paris"]}


def orders(**env: str) -> Server:
    return Server(
        env={"WSAPP_RATE_LIMIT": "0", "WSAPP_SHUTDOWN_TIMEOUT": "3", **env},
        app="examples.orders:app",
        config="examples/gunicorn_orders.py",
        args=("--bind", "127.0.0.1:0"),
        health="/watching",
    ).start()


@pytest.fixture
def start_orders() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(**env: str) -> Server:
        srv = orders(**env)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url


def notify(srv: Server, client_id: str) -> websocket.WebSocket:
    ws = connect(srv, "/ws/notify", make_token(client_id))
    assert recv_json(ws) == {"hello": client_id}
    return ws


def chat(srv: Server, client_id: str, **claims: Any) -> websocket.WebSocket:
    ws = connect(srv, "/ws/chat", make_token(client_id, **claims))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def send(ws: websocket.WebSocket, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def test_the_route_answers_and_the_view_pushes(start_orders: Callable[..., Server]) -> None:
    srv = start_orders()
    a1, a2, bob = notify(srv, "alice"), notify(srv, "alice"), notify(srv, "bob")
    a1.send("ping")
    assert a1.recv() == "pong"
    a1.send_binary(b"\x00\x01")
    assert a1.recv() == b"\x00\x01"

    assert http(srv.url, "POST", "/orders/42/shipped/alice").body == {"delivered": 2}
    for ws in (a1, a2):
        got = recv_json(ws)
        assert {k: got[k] for k in ("type", "from", "to", "data")} == {
            "type": "direct",
            "from": "server",
            "to": "alice",
            "data": {"order": "42", "state": "shipped"},
        }
    assert http(srv.url, "POST", "/orders/43/shipped/nobody").body == {"delivered": 0}
    assert http(srv.url, "POST", "/announce").body == {"delivered": 3}
    assert recv_json(bob)["data"] == {"text": "we close at six"}

    watching = http(srv.url, "GET", "/watching").body
    assert watching["here"] == {"alice": 2, "bob": 1}  # the on_connect hook
    assert watching["everywhere"] == {"alice": 2, "bob": 1}

    assert http(srv.url, "POST", "/customers/alice/revoke").body == {"closed": 2}
    for ws in (a1, a2):
        assert read_close(ws) == (4403, "access revoked")
    deadline = time.monotonic() + 10
    while http(srv.url, "GET", "/watching").body["here"] != {"bob": 1}:  # the on_disconnect hook
        assert time.monotonic() < deadline, "alice still watching"
        time.sleep(0.05)
    assert "Traceback" not in srv.log()


def test_the_frame_type_and_the_room_rule(start_orders: Callable[..., Server]) -> None:
    srv = start_orders()
    staff, other, boss = chat(srv, "sam", **ROOMS), chat(srv, "oli"), chat(srv, "boss", admin=True)
    send(staff, type="join", room="shop:paris", id="j")
    assert recv_json(staff) == {"type": "joined", "room": "shop:paris", "members": ["sam"], "offset": 0, "epoch": ""}
    assert recv_json(staff)["type"] == "ack"
    send(other, type="join", room="shop:paris", id="j")
    assert recv_json(other) == {
        "type": "error",
        "code": "forbidden",
        "message": "you may not join 'shop:paris'",
        "id": "j",
    }
    send(boss, type="join", room="shop:paris")
    assert recv_json(boss)["type"] == "joined"
    assert recv_until(staff, lambda m: m["type"] == "presence")["client_id"] == "boss"

    send(staff, type="typing", room="shop:paris", id="t")
    for ws in (staff, boss):
        got = recv_until(ws, lambda m: m["type"] == "room")
        assert (got["room"], got["from"], got["data"]) == ("shop:paris", "sam", {"typing": "sam"})
    assert recv_until(staff, lambda m: m["type"] == "ack") == {"type": "ack", "id": "t", "delivered": 2}
    send(other, type="typing", room="shop:paris", id="t2")
    assert recv_json(other)["code"] == "not_in_room"
    send(other, type="typing", id="t3")
    assert recv_json(other) == {"type": "error", "code": "missing_field", "message": "'room' is required", "id": "t3"}
    send(other, type="broadcast", data="still here", id="b")
    assert recv_until(other, lambda m: m["type"] == "ack")["delivered"] == 3
    assert http(srv.url, "GET", "/watching").body["shop:paris"] == ["boss", "sam"]


def test_the_one_config_line_drains_on_sigterm(start_orders: Callable[..., Server]) -> None:
    srv = start_orders()
    ws = notify(srv, "alice")
    srv.signal(signal.SIGTERM)
    assert read_close(ws) == (1001, "server shutting down")
    assert srv.proc is not None and srv.proc.wait(15) == 0
    assert "Traceback" not in srv.log()


def test_a_plain_gevent_worker_serves_it_without_a_config() -> None:
    """`gunicorn -k gevent examples.orders:app`, nothing else: WebSockets work (only the
    graceful drain needs the config line)."""
    srv = Server(
        env={"WSAPP_RATE_LIMIT": "0"},
        app="examples.orders:app",
        config="",
        args=("-k", "gevent", "--bind", "127.0.0.1:0"),
        health="/watching",
    ).start()
    try:
        ws = notify(srv, "alice")
        ws.send("ping")
        assert ws.recv() == "pong"
        assert http(srv.url, "POST", "/orders/1/shipped/alice").body == {"delivered": 1}
        assert recv_json(ws)["data"] == {"order": "1", "state": "shipped"}
    finally:
        srv.stop()


def test_a_cli_command_pushes_to_the_nodes(redis_url: str, start_orders: Callable[..., Server]) -> None:
    env = {"WSAPP_REDIS_URL": redis_url, "WSAPP_REDIS_HEARTBEAT": "0.5", "WSAPP_REDIS_PRESENCE_TTL": "2"}
    node = start_orders(**env)
    watcher = notify(node, "alice")
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
    cli_env.update(env, WSAPP_JWT_SECRET=SECRET)
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "examples.orders", "announce", "from the cli"],
        cwd=ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "1"), out.stderr
    got = recv_json(watcher)
    assert (got["type"], got["from"], got["data"]) == ("broadcast", "server", {"text": "from the cli"})
    # without Redis a CLI process has no connections of its own: nothing reached
    cli_env.pop("WSAPP_REDIS_URL")
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "examples.orders", "announce", "x"],
        cwd=ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "0"), out.stderr


def test_pushes_reach_every_node_with_redis(redis_url: str, start_orders: Callable[..., Server]) -> None:
    env = {"WSAPP_REDIS_URL": redis_url, "WSAPP_REDIS_HEARTBEAT": "0.5", "WSAPP_REDIS_PRESENCE_TTL": "2"}
    a, b = start_orders(**env), start_orders(**env)
    on_b = notify(b, "alice")
    watcher = chat(b, "sam", **ROOMS)
    deadline = time.monotonic() + 10
    while http(a.url, "GET", "/watching").body["everywhere"] != {"alice": 1, "sam": 1}:
        assert time.monotonic() < deadline, "node a never saw node b's clients"
        time.sleep(0.05)

    assert http(a.url, "POST", "/orders/7/shipped/alice").body == {"delivered": 1}  # a view on node a
    got = recv_json(on_b)
    assert (got["type"], got["from"], got["data"]) == ("direct", "server", {"order": "7", "state": "shipped"})
    assert http(a.url, "POST", "/announce").body == {"delivered": 2}
    assert recv_json(on_b)["data"] == {"text": "we close at six"}
    assert recv_until(watcher, lambda m: m["type"] == "broadcast")["data"] == {"text": "we close at six"}

    send(watcher, type="join", room="shop:paris")
    assert recv_json(watcher)["type"] == "joined"
    on_a = chat(a, "boss", admin=True)
    send(on_a, type="join", room="shop:paris", id="j")
    assert recv_json(on_a)["members"] == ["boss", "sam"]  # cluster-wide
    send(on_a, type="typing", room="shop:paris", id="t")
    assert recv_until(on_a, lambda m: m["type"] == "ack" and m["id"] == "t")["delivered"] == 2
    assert recv_until(watcher, lambda m: m["type"] == "room")["data"] == {"typing": "boss"}

    assert http(a.url, "POST", "/customers/alice/revoke").body == {"closed": 1}  # on node b
    assert read_close(on_b) == (4403, "access revoked")
    for srv in (a, b):
        assert "Traceback" not in srv.log()
