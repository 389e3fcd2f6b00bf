"""A Redis outage leaves no silent gap: what a node delivered on its own while Redis was
away, and what it could not hear, is either replayed by a resume or said with
`recovered: false` (issue 21; the fault benchmark found both as `recovered: true` losses).

Redis is paused with SIGSTOP (its data stays, as in a network cut or a Sentinel failover
to an up-to-date replica), so a resume after it would otherwise compare with a history
that never had the messages delivered during the outage.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import RedisProcess, Server, http, make_token, read_close, recv_json, recv_until, wait_for, ws_connect

ADMIN = make_token("admin", admin=True)
ROOM = "ops"


@pytest.fixture
def nodes(redis_server: RedisProcess, start_server: Callable[..., Server]) -> Iterator[tuple[Server, Server]]:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    env = {
        "WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0",
        "WSAPP_REDIS_HEARTBEAT": "0.5", "WSAPP_REDIS_PRESENCE_TTL": "5",
    }  # fmt: skip
    yield start_server(**env), start_server(**env)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGCONT)  # whatever the test did


def member(srv: Server, client_id: str, resume: bool = False) -> Any:
    ws = ws_connect(srv, "/ws/chat?resume=1" if resume else "/ws/chat", make_token(client_id))
    welcome = recv_json(ws)
    assert welcome["type"] == "welcome"
    return ws, welcome


def join(ws: Any) -> dict[str, Any]:
    ws.send(json.dumps({"type": "join", "room": ROOM, "id": "j"}))
    return recv_until(ws, lambda m: m.get("type") == "joined")


def ready(srv: Server) -> int:
    return http(srv.url, "GET", "/readyz").status


def pause(redis_server: RedisProcess, a: Server, b: Server) -> None:
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    wait_for(lambda: ready(a) == 503 and ready(b) == 503, "both nodes to lose Redis", 20)


def resume(redis_server: RedisProcess, a: Server, b: Server) -> None:
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGCONT)
    wait_for(lambda: ready(a) == 200 and ready(b) == 200, "both nodes back on Redis", 20)


def test_a_message_delivered_during_an_outage_ends_its_streams_epoch(
    redis_server: RedisProcess, nodes: tuple[Server, Server]
) -> None:
    a, b = nodes
    alice, _ = member(a, "alice")
    bob, _ = member(b, "bob")
    join(alice)
    join(bob)
    resp = http(a.url, "POST", "/api/broadcast", {"room": ROOM, "data": "before"}, token=ADMIN)
    assert resp.status == 200
    seen = recv_until(bob, lambda m: m.get("type") == "room" and m["data"] == "before")
    recv_until(alice, lambda m: m.get("type") == "room" and m["data"] == "before")

    pause(redis_server, a, b)
    resp = http(a.url, "POST", "/api/broadcast", {"room": ROOM, "data": "during"}, token=ADMIN)
    assert resp.status == 200 and resp.body["offset"] == 0  # node A's own members only: no position, not kept
    during = recv_until(alice, lambda m: m.get("type") == "room" and m["data"] == "during")
    assert "offset" not in during
    resume(redis_server, a, b)

    # every chat connection served through the outage is told to resume
    assert read_close(bob)[0] == 1012
    assert read_close(alice)[0] == 1012
    bob2, _ = member(b, "bob", resume=True)
    position = {"offset": seen["offset"], "epoch": seen["epoch"]}
    bob2.send(json.dumps({"type": "resume", "id": "r", "rooms": {ROOM: position}}))
    resumed = recv_until(bob2, lambda m: m.get("type") == "resumed")
    # bob never got "during", and Redis's history never had it: not `recovered: true`
    assert resumed["rooms"][ROOM]["recovered"] is False
    assert resumed["rooms"][ROOM]["epoch"] != seen["epoch"]


def test_a_position_read_during_an_outage_never_resumes_as_recovered(
    redis_server: RedisProcess, nodes: tuple[Server, Server]
) -> None:
    a, b = nodes
    bob, _ = member(b, "bob")
    join(bob)
    pause(redis_server, a, b)
    carol, welcome = member(a, "carol")  # connecting during the outage works ...
    joined = join(carol)
    # ... but no position can be read: not the empty stream's {0, ""}
    assert welcome["streams"]["broadcast"]["epoch"] not in ("",)
    assert joined["epoch"] not in ("",)
    resume(redis_server, a, b)
    assert read_close(carol)[0] == 1012
    # bob's node B publishes while node A could not hear it (A was deaf until now)
    resp = http(b.url, "POST", "/api/broadcast", {"room": ROOM, "data": "after"}, token=ADMIN)
    assert resp.status == 200 and resp.body["offset"] >= 1
    carol2, _ = member(a, "carol", resume=True)
    room = {"offset": joined["offset"], "epoch": joined["epoch"]}
    carol2.send(
        json.dumps({"type": "resume", "id": "r", "broadcast": welcome["streams"]["broadcast"], "rooms": {ROOM: room}})
    )
    resumed = recv_until(carol2, lambda m: m.get("type") == "resumed")
    # carol cannot know what she missed while her node was away: never a silent `true`
    assert resumed["rooms"][ROOM]["recovered"] is False
    assert resumed["broadcast"]["recovered"] is False
