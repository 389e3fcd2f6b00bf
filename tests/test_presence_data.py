"""Presence with data (issue 20, item 5): `WSAPP_PRESENCE_CLAIMS` names token claims a
room member's entry carries, as `info` beside `members` in `joined`, on `presence` join
events, in `GET /api/rooms/<room>` and in `ws.member_info`; bounded per member
(`WSAPP_PRESENCE_INFO_BYTES`) and in number (`WSAPP_MEMBERS_LIMIT`); cluster-wide on
Redis (`<room tag>:i`), gone with its member, and with a node killed. Real gunicorn: one
node, two nodes on one Redis, two on a three-primary Redis Cluster; the entry rule itself
(`protocol.presence_info`) is pure.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import RedisProcess, Server, http, make_token, recv_json, recv_until, ws_connect
from wsapp import protocol

ADMIN = make_token("ops", admin=True)
CAP = 64  # WSAPP_PRESENCE_INFO_BYTES here
MEMBERS = 3  # WSAPP_MEMBERS_LIMIT
HEARTBEAT_S, TTL_S = 0.5, 2.0
ENV = {"WSAPP_RATE_LIMIT": "0", "WSAPP_API_RATE_LIMIT": "0", "WSAPP_PRESENCE_CLAIMS": "name,avatar",
       "WSAPP_PRESENCE_INFO_BYTES": str(CAP), "WSAPP_MEMBERS_LIMIT": str(MEMBERS),
       "WSAPP_REDIS_HEARTBEAT": str(HEARTBEAT_S), "WSAPP_REDIS_PRESENCE_TTL": str(TTL_S)}  # fmt: skip
APP = "test_server_join:create_app()"  # the shipped app's parts plus ws.member_info at /t/info
ARGS = ("--pythonpath", "tests")


def start(env: dict[str, str]) -> Server:
    return Server(env=env, app=APP, args=ARGS).start()


@pytest.fixture(scope="module", params=["memory", "redis"])
def nodes(request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    if request.param == "memory":
        servers = [start(ENV)]
    else:
        redis_server: RedisProcess = request.getfixturevalue("redis_server")
        redis_server.client().flushall()
        env = {**ENV, "WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1"}
        servers = [start(env), start(env)]
    yield servers
    for s in servers:
        s.stop()


def chat(server: Server, cid: str, **claims: Any) -> Any:
    ws = ws_connect(server, "/ws/chat", make_token(cid, **claims))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def join(ws: Any, room: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "join", "room": room, "id": "j-" + room}))
    joined = recv_until(ws, lambda m: m["type"] == "joined")
    recv_until(ws, lambda m: m.get("id") == "j-" + room)
    return joined


def room_state(server: Server, room: str) -> Any:
    return http(server.url, "GET", f"/api/rooms/{room}", token=ADMIN).body


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it holds (`timeout` is a limit, never asserted as a speed)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def test_joined_presence_and_the_api_carry_the_configured_claims_of_each_member(nodes: list[Server]) -> None:
    a, b = nodes[0], nodes[-1]
    bob = chat(a, "bob", name="Bob", avatar="b.png", email="bob@example.com")
    assert join(bob, "p1")["info"] == {"bob": {"name": "Bob", "avatar": "b.png"}}
    alice = chat(b, "alice", name="Alice", ssn="s")
    joined = join(alice, "p1")
    assert joined["members"] == ["alice", "bob"]  # still a list of client ids
    assert joined["info"] == {"alice": {"name": "Alice"}, "bob": {"name": "Bob", "avatar": "b.png"}}
    presence = recv_until(bob, lambda m: m["type"] == "presence")
    assert presence == {"type": "presence", "room": "p1", "event": "join", "client_id": "alice",
                        "info": {"name": "Alice"}}  # fmt: skip
    for server in (a, b):
        state = room_state(server, "p1")
        assert state["members"] == ["alice", "bob"]
        assert state["info"] == {"alice": {"name": "Alice"}, "bob": {"name": "Bob", "avatar": "b.png"}}
        assert http(server.url, "GET", "/t/info?room=p1").body == state["info"]
    plain = chat(a, "plain")  # a token with none of the claims: an empty entry
    assert join(plain, "p1")["info"]["plain"] == {}
    alice.close()
    leave = recv_until(bob, lambda m: m["type"] == "presence" and m["event"] == "leave")
    assert "info" not in leave
    eventually(lambda: "alice" not in room_state(a, "p1")["info"], 10, "alice's entry gone with her")
    for ws in (bob, plain):
        ws.close()


def test_an_entry_over_the_size_cap_is_left_out_whole(nodes: list[Server]) -> None:
    a, b = nodes[0], nodes[-1]
    watcher = chat(a, "watcher", name="W")
    join(watcher, "p2")
    big = chat(b, "big", name="x" * CAP)  # {"name":"xxx..."} is over CAP bytes
    fits = chat(b, "fits", name="x" * (CAP - len('{"name":""}')))  # exactly CAP bytes
    assert join(big, "p2")["info"]["big"] == {}
    assert recv_until(watcher, lambda m: m["type"] == "presence")["info"] == {}
    assert join(fits, "p2")["info"]["fits"] == {"name": "x" * (CAP - 11)}
    assert room_state(a, "p2")["info"]["big"] == {}
    for ws in (watcher, big, fits):
        ws.close()


def test_info_is_bounded_by_the_member_list_cap(nodes: list[Server]) -> None:
    conns = [chat(nodes[i % len(nodes)], f"m{i}", name=f"M{i}") for i in range(MEMBERS + 2)]
    for ws in conns:
        join(ws, "p3")
    conns.append(chat(nodes[0], "zz", name="Z"))
    last = join(conns[-1], "p3")
    assert len(last["members"]) == MEMBERS + 3  # the member list is as it was: whole
    assert list(last["info"]) == last["members"][:MEMBERS]
    state = room_state(nodes[-1], "p3")
    assert state["count"] == MEMBERS + 3 and list(state["info"]) == state["members"] == last["members"][:MEMBERS]
    for ws in conns:
        ws.close()


def test_a_server_join_carries_the_members_info_too(nodes: list[Server]) -> None:
    a, b = nodes[0], nodes[-1]
    watcher = chat(a, "w2", name="W2")
    join(watcher, "p4")
    sam = chat(b, "sam", name="Sam")
    assert http(a.url, "POST", "/api/rooms/p4/join", {"client_id": "sam"}, ADMIN).body == {"joined": 1}
    joined = recv_until(sam, lambda m: m["type"] == "joined")
    assert joined["info"] == {"sam": {"name": "Sam"}, "w2": {"name": "W2"}}
    assert recv_until(watcher, lambda m: m["type"] == "presence")["info"] == {"name": "Sam"}
    for ws in (watcher, sam):
        ws.close()


@pytest.mark.parametrize("nodes", ["redis"], indirect=True)  # Redis keys: no in-process variant
def test_redis_keeps_one_entry_per_member_in_the_rooms_slot_and_drops_it_when_the_member_leaves(
    redis_server: RedisProcess, nodes: list[Server]
) -> None:
    from wsapp.redis.keys import name_tag

    key = f"wsapp:{name_tag('r', 'p5')}:i"
    r = redis_server.client()
    a, b = nodes
    one, two = chat(a, "tess", name="T"), chat(b, "tess", name="T")
    join(one, "p5")
    join(two, "p5")
    assert {k.decode(): json.loads(v) for k, v in r.hgetall(key).items()} == {"tess": {"name": "T"}}
    one.close()  # still in the room on the other node: the entry stays
    eventually(lambda: room_state(a, "p5")["count"] == 1, 10, "one connection left")
    assert r.hexists(key, "tess")
    two.send(json.dumps({"type": "leave", "room": "p5", "id": "l"}))
    recv_until(two, lambda m: m.get("id") == "l")
    eventually(lambda: not r.exists(key), 10, "the entry gone with the member")
    two.close()


def test_a_node_killed_takes_its_members_entries_with_it(redis_server: RedisProcess) -> None:
    redis_server.client().flushall()
    env = {**ENV, "WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1"}
    a, b = start(env), start(env)
    try:
        watcher = chat(a, "watch", name="Watch")
        join(watcher, "p6")
        ghost = chat(b, "ghost", name="Ghost")
        assert join(ghost, "p6")["info"]["ghost"] == {"name": "Ghost"}
        assert recv_until(watcher, lambda m: m["type"] == "presence")["event"] == "join"
        assert room_state(a, "p6")["info"]["ghost"] == {"name": "Ghost"}
        assert b.proc is not None
        os.killpg(b.proc.pid, signal.SIGKILL)  # master and worker: no clean stop
        b.proc.wait(5)
        left = recv_until(watcher, lambda m: m["type"] == "presence", timeout=TTL_S + HEARTBEAT_S + 10)
        assert left == {"type": "presence", "room": "p6", "event": "leave", "client_id": "ghost"}
        from wsapp.redis.keys import name_tag

        key = f"wsapp:{name_tag('r', 'p6')}:i"
        eventually(lambda: not redis_server.client().hexists(key, "ghost"), 15, "the dead node's entries reaped")
        assert room_state(a, "p6")["info"] == {"watch": {"name": "Watch"}}
        assert redis_server.client().hexists(key, "watch")
        watcher.close()
    finally:
        for s in (a, b):
            s.stop()


def test_on_a_three_primary_cluster_info_is_cluster_wide() -> None:
    from helpers import RedisClusterProcess

    cluster = RedisClusterProcess()
    cluster.start()
    env = {**ENV, "WSAPP_REDIS_URL": cluster.url, "WSAPP_WORKERS": "1"}
    a = b = None
    try:
        a, b = start(env), start(env)
        conns = []
        for i, server in enumerate((a, b, a)):
            ws = chat(server, f"c{i}", name=f"C{i}")
            conns.append(ws)
            join(ws, f"room-{i}")  # rooms in other slots too
            join(ws, "shared")
        want = {f"c{i}": {"name": f"C{i}"} for i in range(3)}
        assert room_state(b, "shared")["info"] == want and http(a.url, "GET", "/t/info?room=shared").body == want
        conns[1].close()
        eventually(lambda: "c1" not in room_state(a, "shared")["info"], 10, "c1's entry gone")
        for ws in conns:
            ws.close()
    finally:
        for s in (a, b):
            if s is not None:
                s.stop()
        cluster.stop()


# ---- pure: the entry rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "names", "cap", "want"),
    [
        ({"name": "A"}, (), 256, None),  # no claim configured: no entry, frames carry no info
        ({"name": "A", "x": 1}, ("name",), 256, {"name": "A"}),
        ({"x": 1}, ("name",), 256, {}),
        ({"name": "A", "n": [1, {"b": None}]}, ("n", "name"), 256, {"n": [1, {"b": None}], "name": "A"}),
        ({"name": "a" * 5}, ("name",), len('{"name":"aaaaa"}'), {"name": "aaaaa"}),  # at the cap
        ({"name": "a" * 6}, ("name",), len('{"name":"aaaaa"}'), {}),  # one byte over: left out whole
        ({"name": "é"}, ("name",), len('{"name":"é"}'), {}),  # bytes, not characters
        ({"name": "é"}, ("name",), len('{"name":"é"}'.encode()), {"name": "é"}),
        ("not a mapping", ("name",), 256, {}),
        ({"name": float("nan")}, ("name",), 256, {}),  # not JSON the server can carry
    ],
)
def test_presence_info(claims: Any, names: tuple[str, ...], cap: int, want: Any) -> None:
    assert protocol.presence_info(claims, names, cap) == want


def test_the_frames_carry_info_only_when_given() -> None:
    assert "info" not in protocol.joined("r", ["a"], None, None)
    assert protocol.joined("r", ["a"], None, {"a": {}})["info"] == {"a": {}}
    assert "info" not in protocol.joined("r", None, None, {"a": {}})  # a repeated join: no list, no info
    assert "info" not in protocol.presence("r", "join", "a")
    assert protocol.presence("r", "join", "a", {"n": 1})["info"] == {"n": 1}
