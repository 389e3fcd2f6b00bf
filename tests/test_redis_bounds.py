"""What one client can make Redis do: keep a bounded amount of history, not choose a slot,
not take delivery down by filling Redis (issue 18, parts 3 and 5).

Real redis-server processes (one with a small `maxmemory` and `noeviction`), a real Redis
Cluster for the slot layout, and real gunicorn nodes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import websocket
from redis.crc import key_slot

from helpers import (
    REDIS_SERVER,
    RedisClusterProcess,
    RedisProcess,
    Server,
    free_port,
    http,
    make_token,
    recv_json,
    recv_until,
    unavailable,
    ws_connect,
)
from wsapp.redis.bus import Bus
from wsapp.redis.connect import connect
from wsapp.redis.keys import NODES_KEY, name_tag, stream_tag, target_tag
from wsapp.registry import Target

LONG_BEAT = {"WSAPP_REDIS_HEARTBEAT": "30", "WSAPP_REDIS_PRESENCE_TTL": "90"}  # no heartbeat during a test
BIG = "x" * 1000


class SmallRedis(RedisProcess):
    """A redis-server with extra settings (`maxmemory`, `maxmemory-policy`)."""


@pytest.fixture
def plain_redis() -> Iterator[RedisProcess]:
    if not os.path.exists(REDIS_SERVER):
        unavailable("redis-server is not installed")
    srv = RedisProcess()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def full_redis() -> Iterator[SmallRedis]:
    """Redis as it ships (`noeviction`), with 8 MB of memory."""
    if not os.path.exists(REDIS_SERVER):
        unavailable("redis-server is not installed")
    srv = SmallRedis("--maxmemory", str(8 * 1024 * 1024), "--maxmemory-policy", "noeviction")
    srv.start()
    yield srv
    srv.stop()


def chat(server: Server, client_id: str, path: str = "/ws/chat") -> websocket.WebSocket:
    ws = ws_connect(server, path, make_token(client_id))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def call(ws: websocket.WebSocket, **frame: Any) -> dict[str, Any]:
    """Send a frame with an id; its answer (`ack`, `joined`, `resumed`, ...) or error."""
    frame["id"] = ident = f"i{time.monotonic_ns()}"
    ws.send(json.dumps(frame))
    return recv_until(ws, lambda m: m.get("id") == ident)


def join(ws: websocket.WebSocket, room: str) -> None:
    assert call(ws, type="join", room=room)["type"] == "ack"  # after its `joined`


def post(ws: websocket.WebSocket, room: str, data: Any) -> int:
    ack = call(ws, type="room", room=room, data=data)
    assert ack["type"] == "ack", ack
    return int(ack["delivered"])


def resume(server: Server, client_id: str, room: str, pos: dict[str, Any]) -> dict[str, Any]:
    ws = chat(server, client_id, "/ws/chat?resume=1")
    try:
        ws.send(json.dumps({"type": "resume", "id": "r", "rooms": {room: pos}}))
        answer = recv_until(ws, lambda m: m.get("type") in ("resumed", "error"))
        assert answer["type"] == "resumed", answer
        return dict(answer["rooms"][room])
    finally:
        ws.close()


def room_key(room: str, suffix: str) -> str:
    return "wsapp:" + target_tag(Target("room", room)) + ":" + suffix


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def metric(server: Server, name: str) -> float:
    body = http(server.url, "GET", "/metrics").body
    text = body.decode() if isinstance(body, bytes) else str(body)
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def node_env(url: str, **more: str) -> dict[str, str]:
    return {"WSAPP_REDIS_URL": url, "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0", "WSAPP_SHUTDOWN_TIMEOUT": "1",
            **LONG_BEAT, **more}  # fmt: skip


# ---- part 5: the slot is derived from a hash of the name ------------------------------------


def test_room_names_do_not_choose_their_slot() -> None:
    """`evil}<i>` used to be the hash tag verbatim (`{r:evil}`): 1,000 rooms on one slot."""
    slots = {key_slot(room_key(f"evil}}{i}", "n").encode()) for i in range(1000)}
    assert len(slots) > 900  # 1,000 draws from 16,384 slots: about 970 distinct
    for name in ("evil}1", "{nodes}", "nodes", "all", "n:x"):
        tag = target_tag(Target("room", name))
        assert name not in tag and tag.count("{") == 1 and tag.endswith("}")
        assert key_slot(room_key(name, "n").encode()) == key_slot(room_key(name, "bus:0").encode())  # one slot
    # a client id and a room of the same name are apart; streams share their target's tag
    assert target_tag(Target("client", "x")) != target_tag(Target("room", "x"))
    assert stream_tag("room:x") == target_tag(Target("room", "x")) == name_tag("r", "x")
    assert stream_tag("direct:x") == target_tag(Target("close", "x"))
    assert stream_tag("broadcast") == target_tag(Target("all")) == "{all}"
    assert NODES_KEY == "wsapp:{nodes}"


def test_rooms_named_to_pick_a_slot_still_work_on_a_cluster(start_server: Callable[..., Server]) -> None:
    if not os.path.exists(REDIS_SERVER):
        unavailable("redis-server is not installed")
    cluster = RedisClusterProcess()
    cluster.start()
    try:
        a, b = (start_server(**node_env(cluster.url)) for _ in range(2))
        alice, bob = chat(a, "alice"), chat(b, "bob")
        for i in range(3):
            room = f"evil}}{i}{{nodes}}"
            join(alice, room)
            join(bob, room)
            assert post(alice, room, i) == 2
            got = recv_until(bob, lambda m, room=room: m.get("type") == "room" and m["room"] == room)
            assert got["data"] == i and got["offset"] == 1
        alice.close()
        bob.close()
    finally:
        cluster.stop()


# ---- part 3: a full Redis does not take delivery down ---------------------------------------


def fill(r: redis.Redis) -> int:
    """SET junk until Redis refuses (over maxmemory), in smaller and smaller values (a
    refused value's own query buffer is freed with it); how many keys it took."""
    n = 0
    for size in (100_000, 10_000, 100):
        while True:
            try:
                r.set(f"junk:{n}", "j" * size)
            except redis.exceptions.OutOfMemoryError:
                break
            n += 1
    return n


def test_noeviction_is_warned_about_once_at_start_up(
    full_redis: SmallRedis, start_server: Callable[..., Server]
) -> None:
    warned = start_server(**node_env(full_redis.url))
    wait_for(lambda: "redis backplane up" in warned.log(), "the backplane is up")
    assert warned.log().count("maxmemory-policy noeviction") == 1, warned.log()
    full_redis.client().config_set("maxmemory-policy", "volatile-lru")
    quiet = start_server(**node_env(full_redis.url))
    wait_for(lambda: "redis backplane up" in quiet.log(), "the backplane is up")
    assert "maxmemory-policy" not in quiet.log(), quiet.log()


def test_a_history_write_refused_by_a_full_redis_still_delivers(
    full_redis: SmallRedis, start_server: Callable[..., Server]
) -> None:
    """The message reaches every node, no node goes 503, and a resume across it says
    `recovered: false`; a metric and a log line say what happened."""
    a, b = start_server(**node_env(full_redis.url)), start_server(**node_env(full_redis.url))
    alice, bob, carol = chat(a, "alice"), chat(b, "bob"), chat(b, "carol")
    for ws in (alice, bob, carol):
        join(ws, "r")
    assert post(alice, "r", "first") == 3
    first = recv_until(carol, lambda m: m.get("type") == "room")
    carol.close()  # away from here on, with the position of "first"
    r = full_redis.client()
    wait_for(lambda: not r.hexists(room_key("r", "m"), "carol"), "carol's presence is gone")

    assert fill(r) > 0
    assert post(alice, "r", "second") == 2  # alice here, bob on the other node
    got = recv_until(bob, lambda m: m.get("type") == "room" and m["data"] == "second")
    assert "offset" not in got  # delivered without a position
    for node in (a, b):
        assert http(node.url, "GET", "/readyz").status == 200
    assert metric(a, "wsapp_history_write_failures_total") >= 1
    assert "Redis refused to keep a message" in a.log()
    assert "redis backplane down" not in a.log() + b.log()

    r.delete(*[k for k in r.scan_iter("junk:*")])  # room again
    result = resume(b, "carol", "r", {"offset": first["offset"], "epoch": first["epoch"]})
    assert result["recovered"] is False, result
    wait_for(lambda: not r.hexists(room_key("r", "m"), "carol"), "carol's resumed connection is gone")
    assert post(alice, "r", "third") == 2  # kept again, in a new epoch
    third = recv_until(bob, lambda m: m.get("type") == "room" and m["data"] == "third")
    assert third["epoch"] != first["epoch"]
    alice.close()
    bob.close()


# ---- part 3: what one client id can make Redis keep ------------------------------------------


def kept_bytes(r: redis.Redis, pattern: str = "wsapp:{r*}:h") -> int:
    return sum(len(e[1][b"d"]) for k in r.scan_iter(pattern) for e in r.xrange(k))


def test_a_client_past_its_history_budget_is_delivered_but_not_kept(
    plain_redis: RedisProcess, start_server: Callable[..., Server]
) -> None:
    """4,000 bytes per client per window: three ~1.3 KB messages are kept, whichever node
    they are sent on; the rest are delivered with positions but not kept, and a resume
    across them says `recovered: false`, while one after them recovers."""
    env = node_env(plain_redis.url, WSAPP_HISTORY_BYTES_PER_CLIENT="4000")
    a, b = start_server(**env), start_server(**env)
    alice_a, alice_b, bob, dave = chat(a, "alice"), chat(b, "alice"), chat(b, "bob"), chat(b, "dave")
    for ws in (alice_a, alice_b, bob, dave):
        join(ws, "r")
    for i in range(6):
        assert post(alice_a if i % 2 == 0 else alice_b, "r", BIG) == 4
    got = [recv_until(bob, lambda m: m.get("type") == "room") for _ in range(6)]
    assert [m["offset"] for m in got] == [1, 2, 3, 4, 5, 6]
    r = plain_redis.client()
    assert [int(e[0].split(b"-")[0]) for e in r.xrange(room_key("r", "h"))] == [1, 2, 3]
    assert int(r.get("wsapp:" + name_tag("c", "alice") + ":hb") or 0) <= 4000
    assert post(dave, "r", "mine") == 4  # another client id has a budget of its own: kept
    assert [int(e[0].split(b"-")[0]) for e in r.xrange(room_key("r", "h"))] == [1, 2, 3, 7]
    assert metric(a, "wsapp_history_over_budget_total") + metric(b, "wsapp_history_over_budget_total") == 3
    assert (
        a.log().count("past WSAPP_HISTORY_BYTES_PER_CLIENT") + b.log().count("past WSAPP_HISTORY_BYTES_PER_CLIENT") >= 1
    )

    epoch = got[0]["epoch"]
    across = resume(b, "carol", "r", {"offset": 2, "epoch": epoch})  # 3 is kept, 4-6 are not, 7 is
    assert across["recovered"] is False, across
    after = resume(b, "carol", "r", {"offset": 6, "epoch": epoch})  # saw everything not kept
    assert after["recovered"] is True and after["replayed"] == 1, after
    for ws in (alice_a, alice_b, bob, dave):
        ws.close()


def test_the_servers_own_publishes_are_kept_past_any_client_budget(
    plain_redis: RedisProcess, start_server: Callable[..., Server]
) -> None:
    """The budget is a client's: a backend publishing through the HTTP API (an admin token)
    or `ws.send` is the service itself, and every message it publishes is kept (the fault
    benchmark's publisher went past 1 MiB in a few minutes and its streams had gaps)."""
    srv = start_server(**node_env(plain_redis.url, WSAPP_HISTORY_BYTES_PER_CLIENT="4000"))
    bob = chat(srv, "bob")
    join(bob, "r")
    admin = make_token("backend", admin=True)
    for _ in range(6):
        assert http(srv.url, "POST", "/api/broadcast", {"room": "r", "data": BIG}, token=admin).status == 200
    r = plain_redis.client()
    assert [int(e[0].split(b"-")[0]) for e in r.xrange(room_key("r", "h"))] == [1, 2, 3, 4, 5, 6]
    assert metric(srv, "wsapp_history_over_budget_total") == 0
    bob.close()


def test_one_client_flooding_new_rooms_keeps_at_most_its_budget(
    plain_redis: RedisProcess, start_server: Callable[..., Server]
) -> None:
    """The issue's flood (join a new room, post, leave), bounded: what alice's messages
    hold in Redis stays within WSAPP_HISTORY_BYTES_PER_CLIENT; every message was delivered."""
    srv = start_server(**node_env(plain_redis.url, WSAPP_HISTORY_BYTES_PER_CLIENT="20000"))
    alice = chat(srv, "alice")
    for i in range(40):
        join(alice, f"flood-{i}")
        assert post(alice, f"flood-{i}", BIG) == 1
        assert call(alice, type="leave", room=f"flood-{i}")["type"] == "ack"
    r = plain_redis.client()
    kept = kept_bytes(r)
    assert 10_000 < kept <= 20_000, kept
    assert metric(srv, "wsapp_history_over_budget_total") >= 20
    alice.close()


def test_entries_older_than_the_ttl_are_deleted_by_later_writes(plain_redis: RedisProcess) -> None:
    """A stream that others keep writing to does not keep a client's old messages past
    the TTL: the budget's window is what a stream holds."""
    bus = Bus(connect(plain_redis.url), f"test-{free_port()}")
    r = plain_redis.client()
    target, stream = Target("room", "kept"), "room:kept"
    key = room_key("kept", "h")
    kept = bus.publish_at(target, stream, '{"type":"room","data":"old"', 1, True, 100, 10)
    assert (kept.status, kept.others) == (1, 0)

    def redis_ms() -> int:
        s, us = r.time()
        return int(s) * 1000 + int(us) // 1000

    written = int(r.xrange(key)[0][1][b"t"])
    wait_for(lambda: redis_ms() > written + 400, "the first message is older than the TTL")
    # the second write counts a TTL of 0.3 s: the first message is past it (the keys live on)
    kept = bus.publish_at(target, stream, '{"type":"room","data":"new"', 1, True, 100, 0.3)
    assert (kept.status, kept.others) == (1, 0)
    assert [e[0] for e in r.xrange(key)] == [b"2-0"]
    bus.client.close()
