"""Exactly-once publishing (issue 20): `Idempotency-Key` on /api/send and /api/broadcast,
`key=` on ws.send / ws.broadcast / the Emitter. A repeat within the history TTL delivers
nothing and answers the first result (same offset), on any node with Redis; keys are
scoped to their sender and bounded in length and number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import RedisProcess, Server, http, make_token, recv_json, recv_until, ws_connect

ADMIN = make_token("ops", admin=True)
ENV = {"WSAPP_RATE_LIMIT": "0", "WSAPP_API_RATE_LIMIT": "0", "WSAPP_IDEMPOTENCY_KEYS_PER_CLIENT": "6"}


@pytest.fixture(scope="module", params=["memory", "redis"])
def nodes(request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    if request.param == "memory":
        servers = [Server(env=ENV).start()]
    else:
        redis_server: RedisProcess = request.getfixturevalue("redis_server")
        redis_server.client().flushall()
        env = {**ENV, "WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1"}
        servers = [Server(env=env).start(), Server(env=env).start()]
    yield servers
    for s in servers:
        s.stop()


def chat(server: Server, cid: str) -> Any:
    ws = ws_connect(server, "/ws/chat", make_token(cid))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def drain_room(ws: Any, marker: str) -> list[Any]:
    """The `data` of every room message up to (and without) the one whose data is `marker`."""
    out = []
    while (m := recv_until(ws, lambda m: m["type"] in ("room", "direct")))["data"] != marker:
        out.append(m["data"])
    return out


def test_a_retried_publish_with_the_same_key_is_delivered_once_on_any_node(nodes: list[Server]) -> None:
    bob = chat(nodes[-1], "bob")
    bob.send(json.dumps({"type": "join", "room": "once", "id": "j"}))
    recv_until(bob, lambda m: m.get("id") == "j")
    body = {"room": "once", "data": "pay"}
    first = http(nodes[0].url, "POST", "/api/broadcast", body, ADMIN, headers={"Idempotency-Key": "k-1"})
    again = http(nodes[-1].url, "POST", "/api/broadcast", body, ADMIN, headers={"Idempotency-Key": "k-1"})
    assert first.status == again.status == 200
    assert again.body["offset"] == first.body["offset"] and again.body["epoch"] == first.body["epoch"]
    assert again.body["delivered"] == first.body["delivered"] == 1
    assert again.body.get("duplicate") is True and "duplicate" not in first.body
    other = http(nodes[0].url, "POST", "/api/broadcast", {**body, "data": "next"}, ADMIN,
                 headers={"Idempotency-Key": "k-2"})  # fmt: skip
    assert other.body["offset"] == first.body["offset"] + 1
    http(nodes[0].url, "POST", "/api/broadcast", {**body, "data": "end"}, ADMIN)
    assert drain_room(bob, "end") == ["pay", "next"]

    sent = [http(n.url, "POST", "/api/send", {"to": "bob", "data": "d"}, make_token("alice"),
                 headers={"Idempotency-Key": "s-1"}) for n in (nodes[0], nodes[-1])]  # fmt: skip
    assert sent[0].body["offset"] == sent[1].body["offset"] and sent[1].body["duplicate"] is True
    http(nodes[0].url, "POST", "/api/send", {"to": "bob", "data": "end"}, make_token("alice"))
    assert drain_room(bob, "end") == ["d"]
    bob.close()


def test_a_key_is_its_senders_another_sender_with_the_same_key_is_published(nodes: list[Server]) -> None:
    bob = chat(nodes[0], "bob")
    for sender in ("mallory", "alice"):
        got = http(nodes[0].url, "POST", "/api/send", {"to": "bob", "data": sender}, make_token(sender),
                   headers={"Idempotency-Key": "invoice-7"})  # fmt: skip
        assert got.status == 200 and "duplicate" not in got.body
    http(nodes[0].url, "POST", "/api/send", {"to": "bob", "data": "end"}, make_token("alice"))
    assert drain_room(bob, "end") == ["mallory", "alice"]
    bob.close()


@pytest.mark.parametrize("key", ["k" * 129, "has space", "é"])
def test_a_key_too_long_or_not_visible_ascii_is_400(nodes: list[Server], key: str) -> None:
    got = http(nodes[0].url, "POST", "/api/broadcast", {"data": 1}, ADMIN,
               headers={"Idempotency-Key": key.encode().decode("latin-1")})  # fmt: skip
    assert got.status == 400 and got.body["error"] == "bad_request"


def test_keys_per_client_id_are_bounded_then_429_with_retry_after(nodes: list[Server]) -> None:
    token = make_token("busy")
    answers = [http(nodes[0].url, "POST", "/api/broadcast", {"data": i}, make_token("busy", admin=True),
                    headers={"Idempotency-Key": f"q-{i}"}).status for i in range(7)]  # fmt: skip
    assert answers == [200] * 6 + [429]
    got = http(nodes[0].url, "POST", "/api/send", {"to": "x", "data": 1}, token, headers={"Idempotency-Key": "q"})
    assert got.status == 429 and int(got.headers["Retry-After"]) >= 1
    assert http(nodes[0].url, "POST", "/api/broadcast", {"data": 1}, make_token("busy", admin=True)).status == 200


@pytest.mark.parametrize("nodes", ["redis"], indirect=True)  # Redis keys: no in-process variant
def test_redis_keeps_one_ttld_key_per_target_and_key(redis_server: RedisProcess, nodes: list[Server]) -> None:
    client = redis_server.client()
    before = set(client.scan_iter("wsapp:*:ik:*"))
    http(nodes[0].url, "POST", "/api/broadcast", {"room": "t1", "data": 1}, ADMIN, headers={"Idempotency-Key": "z"})
    http(nodes[0].url, "POST", "/api/broadcast", {"room": "t2", "data": 1}, ADMIN, headers={"Idempotency-Key": "z"})
    new = set(client.scan_iter("wsapp:*:ik:*")) - before
    assert len(new) == 2
    for key in new:
        assert 0 < client.pttl(key) <= 300_000


def test_the_emitter_takes_a_key_and_answers_the_first_result(redis_server: RedisProcess) -> None:
    from wsapp.emitter import Emitter

    with Emitter(redis_server.url) as emitter:
        first = emitter.broadcast({"x": 1}, room="em", key="e-1")
        again = emitter.broadcast({"x": 1}, room="em", key="e-1")
        assert first.offset >= 1 and again.offset == first.offset and again.duplicate and not first.duplicate
        assert int(first) == 0 and first == 0 and first.stream == "room:em"
        with pytest.raises(ValueError):
            emitter.send("bob", 1, key="x" * 129)


# ---- pure: the in-process store and the result type -------------------------------------


def make_hub(max_keys: int = 3, clock: Any = None) -> Any:
    from wsapp.backplane import InProcessBackplane
    from wsapp.history import MemoryHistory
    from wsapp.hub import Hub
    from wsapp.registry import Registry

    registry = Registry(100, 10)
    hist = MemoryHistory(100, 60, 1000, 10**7, clock=clock or (lambda: 0.0), max_keys=max_keys)
    return Hub(registry, InProcessBackplane(registry, hist))


def test_in_process_keys_are_bounded_in_number_the_oldest_forgotten() -> None:
    hub = make_hub(max_keys=3)
    first = hub.broadcast("s", 1, key="a")
    for k in ("b", "c", "d"):  # a fourth key pushes "a" out
        hub.broadcast("s", 1, key=k)
    assert hub.backplane.history.keys == 3
    assert hub.broadcast("s", 1, key="d").duplicate
    assert not hub.broadcast("s", 1, key="a").duplicate  # forgotten: published again
    assert first.offset == 1


def test_in_process_keys_last_the_history_ttl() -> None:
    now = [0.0]
    hub = make_hub(clock=lambda: now[0])
    first = hub.send_to_room("s", "r", 1, key="a")
    now[0] = 59.0
    assert hub.send_to_room("s", "r", 1, key="a").offset == first.offset
    now[0] = 120.0
    assert not hub.send_to_room("s", "r", 1, key="a").duplicate


def test_published_is_an_int_for_existing_callers() -> None:
    from wsapp.history import Published

    p = Published(3, "room:r", 7, "e")
    assert p == 3 and int(p) == 3 and p + 1 == 4 and p.delivered == 3 and json.dumps(p) == "3"
    assert p.wire() == {"delivered": 3, "stream": "room:r", "offset": 7, "epoch": "e"}
    assert isinstance(p, int) and not p.stored and Published(0, "direct:x", 1, "e", kept=True).stored


def test_keys_need_history_and_custom_types_take_none() -> None:
    from wsapp.backplane import InProcessBackplane
    from wsapp.hub import Hub
    from wsapp.registry import Registry

    registry = Registry(100, 10)
    hub = Hub(registry, InProcessBackplane(registry, None))
    with pytest.raises(ValueError):
        hub.broadcast("s", 1, key="a")
    with pytest.raises(ValueError):
        make_hub().broadcast("s", 1, key="a", frame_type="typing")


def test_on_a_three_primary_cluster_a_retried_publish_on_two_nodes_is_delivered_once() -> None:
    """The key lives in the stream's hash slot: the publish script sees it atomically there."""
    from helpers import RedisClusterProcess

    cluster = RedisClusterProcess()
    cluster.start()
    env = {**ENV, "WSAPP_REDIS_URL": cluster.url, "WSAPP_WORKERS": "1"}
    a = b = None
    try:
        a, b = Server(env=env).start(), Server(env=env).start()
        bob = chat(b, "bob")
        body = {"to": "bob", "data": "once"}
        sent = [http(n.url, "POST", "/api/send", body, make_token("alice"), headers={"Idempotency-Key": "c-1"})
                for n in (a, b)]  # fmt: skip
        assert sent[0].status == sent[1].status == 200 and sent[1].body["duplicate"] is True
        assert sent[0].body["offset"] == sent[1].body["offset"]
        http(a.url, "POST", "/api/send", {"to": "bob", "data": "end"}, make_token("alice"))
        assert drain_room(bob, "end") == ["once"]
        bob.close()
    finally:
        for s in (a, b):
            if s is not None:
                s.stop()
        cluster.stop()
