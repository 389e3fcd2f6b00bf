"""The Redis backplane: several gunicorn processes ("hosts") and workers act as one service.

The whole module runs twice: on one real redis-server, and on a real Redis Cluster of
three primaries (started here: `redis-server --cluster-enabled yes`, then `redis-cli
--cluster create`). Each test flushes it and starts its own gunicorn instances with a
short heartbeat and presence TTL.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from helpers import (
    REDIS_SERVER,
    RedisClusterProcess,
    RedisProcess,
    Server,
    chat_client,
    delivery,
    http,
    make_token,
    raw_handshake,
    read_close,
    recv_json,
    recv_until,
    unavailable,
    ws_connect,
)
from wsapp.emitter import Emitter
from wsapp.redis.keys import target_tag
from wsapp.registry import Target

HEARTBEAT_S, TTL_S = 0.5, 2.0
AnyRedis = RedisProcess | RedisClusterProcess
NODES = "wsapp:{nodes}"  # node -> deadline (wsapp.redis.keys)


def tag_key(kind: str, key: str, suffix: str) -> str:
    """A client id's (`kind` "client") or a room's key: its tag is a hash of the name (wsapp.redis.keys)."""
    return "wsapp:" + target_tag(Target(kind, key)) + ":" + suffix


def node_key(node: bytes, suffix: str) -> str:
    """A node's own presence index: `c` (client id -> connections), `r` (room -> connections)."""
    return "wsapp:{n:" + node.decode() + "}:" + suffix


ADMIN = make_token("admin", admin=True)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def redis_server(request: pytest.FixtureRequest) -> Iterator[AnyRedis]:
    """One redis-server, or a three-primary Redis Cluster, for the module; in CI they must exist."""
    if not os.path.exists(REDIS_SERVER):
        unavailable("redis-server is not installed")
    srv = RedisProcess() if request.param == "redis" else RedisClusterProcess()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def node(redis_server: AnyRedis, start_server: Callable[..., Server]) -> Callable[..., Server]:
    """Start a gunicorn instance on the shared Redis: `node()`, `node(WSAPP_WORKERS="2")`."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a previous test stopped it
    redis_server.client().flushall()

    def start(**env: str) -> Server:
        base = {
            "WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0",
            "WSAPP_SHUTDOWN_TIMEOUT": "1", "WSAPP_REDIS_HEARTBEAT": str(HEARTBEAT_S),
            "WSAPP_REDIS_PRESENCE_TTL": str(TTL_S),
        }  # fmt: skip
        return start_server(**{**base, **env})

    return start


@pytest.fixture
def two_hosts(node: Callable[..., Server]) -> tuple[Server, Server]:
    """Two gunicorn instances on different ports, one worker each: two "hosts"."""
    return node(), node()


def send(ws: websocket.WebSocket, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def ack(ws: websocket.WebSocket, msg_id: Any) -> dict[str, Any]:
    return recv_until(ws, lambda m: m["type"] in ("ack", "error") and m.get("id") == msg_id)


def clients(srv: Server) -> dict[str, int]:
    body = http(srv.url, "GET", "/api/clients", token=ADMIN).body
    return {c["client_id"]: c["connections"] for c in body["clients"]}


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it holds (`timeout` is a limit, never asserted as a speed)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def test_broadcast_reaches_every_node_and_counts_cluster_wide(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    on_a, on_b = chat_client(a, "bc-a"), chat_client(b, "bc-b")
    resp = http(a.url, "POST", "/api/broadcast", {"data": "hi"}, token=ADMIN)
    assert (resp.status, delivery(resp.body)) == (200, {"delivered": 2})
    for ws in (on_a, on_b):
        msg = recv_json(ws)
        assert msg | {"ts": 0} == {"type": "broadcast", "from": "admin", "data": "hi", "ts": 0, "offset": 1,
                                   "epoch": msg["epoch"]}  # fmt: skip
    send(on_b, type="broadcast", data=2, id="b1")
    assert ack(on_b, "b1") == {"type": "ack", "id": "b1", "delivered": 2}
    assert recv_json(on_a)["data"] == 2


def test_direct_reaches_both_connections_of_a_client_on_two_nodes(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    dora_a, dora_b, sam = chat_client(a, "dora"), chat_client(b, "dora"), chat_client(a, "sam")
    send(sam, type="direct", to="dora", data="psst", id=1)
    assert ack(sam, 1) == {"type": "ack", "id": 1, "delivered": 2}
    for ws in (dora_a, dora_b):
        msg = recv_json(ws)
        assert (msg["type"], msg["from"], msg["to"], msg["data"]) == ("direct", "sam", "dora", "psst")
    resp = http(b.url, "POST", "/api/send", {"to": "dora", "data": 2}, token=make_token("sam"))
    assert (resp.status, delivery(resp.body)) == (200, {"delivered": 2})
    assert recv_json(dora_a)["data"] == recv_json(dora_b)["data"] == 2


def test_http_send_on_one_node_reaches_a_client_on_the_other(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    bea, carl = chat_client(b, "bea"), chat_client(a, "carl")
    resp = http(a.url, "POST", "/api/send", {"to": "bea", "data": {"n": 1}}, token=make_token("carl"))
    assert (resp.status, delivery(resp.body)) == (200, {"delivered": 1})
    assert recv_json(bea)["data"] == {"n": 1}
    resp = http(a.url, "POST", "/api/send", {"to": "nobody", "data": 1}, token=make_token("carl"))
    assert resp.status == 404 and resp.body["error"] == "not_connected" and resp.body["delivered"] == 0
    send(carl, type="direct", to="nobody", data=1, id="n")
    assert ack(carl, "n")["code"] == "not_connected"


def test_rooms_and_presence_span_nodes(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    rita, rob, olga = chat_client(a, "rita"), chat_client(b, "rob"), chat_client(b, "olga")
    send(rita, type="join", room="ops")
    assert recv_until(rita, lambda m: m["type"] == "joined")["members"] == ["rita"]
    send(rob, type="join", room="ops")
    assert recv_until(rob, lambda m: m["type"] == "joined")["members"] == ["rita", "rob"]
    assert recv_json(rita) == {"type": "presence", "room": "ops", "event": "join", "client_id": "rob"}

    send(rob, type="room", room="ops", data="deploy", id="r")
    assert ack(rob, "r")["delivered"] == 2
    msg = recv_json(rita)
    assert (msg["type"], msg["room"], msg["from"], msg["data"]) == ("room", "ops", "rob", "deploy")
    resp = http(b.url, "POST", "/api/broadcast", {"room": "ops", "data": 3}, token=ADMIN)
    assert (resp.status, delivery(resp.body)) == (200, {"delivered": 2})
    assert recv_json(rita)["data"] == 3
    # rob's own copies come from the bus (history on): "deploy" may come before or after his ack
    assert recv_until(rob, lambda m: m["type"] == "room" and m["data"] == 3)["from"] == "admin"

    rob.close()  # his last connection in the room, on node B: rita on node A hears it
    assert recv_json(rita) == {"type": "presence", "room": "ops", "event": "leave", "client_id": "rob"}
    send(olga, type="join", room="ops")
    assert recv_until(olga, lambda m: m["type"] == "joined")["members"] == ["olga", "rita"]
    olga.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):  # no message of a room she was not in
        olga.recv()


def test_room_counts_follow_every_connection_of_a_client(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    mo1, mo2 = chat_client(b, "mo"), chat_client(b, "mo")
    for ws in (mo1, mo2):  # the second join is not news to the room: the heartbeat counts it
        send(ws, type="join", room="r", id="j")
        ack(ws, "j")

    def delivered() -> int:
        return int(http(a.url, "POST", "/api/broadcast", {"room": "r", "data": 0}, token=ADMIN).body["delivered"])

    eventually(lambda: delivered() == 2, 15, "both of mo's connections counted")
    send(mo2, type="leave", room="r", id="l")
    ack(mo2, "l")
    eventually(lambda: delivered() == 1, 15, "mo's remaining connection counted")
    mo1.close()
    eventually(lambda: delivered() == 0, 15, "nobody left in the room")


def backplane_received(srv: Server) -> float:
    """How many messages the node's worker has read from Redis pub/sub (its metric)."""
    text = http(srv.url, "GET", "/metrics").body
    return float(
        next(line.split()[-1] for line in text.splitlines() if line.startswith("wsapp_backplane_received_total"))
    )


def test_a_node_hears_only_the_targets_it_holds_connections_for(
    node: Callable[..., Server], redis_server: AnyRedis
) -> None:
    """Routing by interest: a node with no receiver never reads a message (it used to read
    and decode every cross-node message), and stops hearing a room once nobody there is in it."""
    a, b, idle = node(), node(), node()
    sender, member, bystander = chat_client(a, "i-send"), chat_client(b, "i-member"), chat_client(idle, "i-by")
    for ws, room in ((sender, "hot"), (member, "hot"), (bystander, "own")):
        send(ws, type="join", room=room, id="j")
        ack(ws, "j")
    recv_until(sender, lambda m: m["type"] == "presence")  # the member's join reached node A
    idle_before = backplane_received(idle)
    for i in range(20):
        send(sender, type="room", room="hot", data=i, id=i)
        assert ack(sender, i)["delivered"] == 2
        send(sender, type="direct", to="i-member", data=i)
    got = [recv_until(member, lambda m: m["type"] in ("room", "direct")) for _ in range(40)]
    assert sorted((m["type"], m["data"]) for m in got) == sorted((t, i) for i in range(20) for t in ("room", "direct"))
    assert backplane_received(idle) == idle_before  # not one of the 40

    def subscribed_nodes(room: str) -> int:  # nodes subscribed to the room's channel, as Redis counts them
        channel = tag_key("room", room, "bus:0")
        if isinstance(redis_server, RedisClusterProcess):
            r = redis_server.client()
            return int(dict(r.pubsub_shardnumsub(channel, target_nodes=r.get_node_from_key(channel)))[channel.encode()])
        return int(dict(redis_server.client().pubsub_shardnumsub(channel))[channel.encode()])

    assert subscribed_nodes("hot") == 2 and subscribed_nodes("own") == 1
    send(member, type="leave", room="hot", id="l")
    ack(member, "l")
    eventually(lambda: subscribed_nodes("hot") == 1, 15, "node B left the room's channel with its last member")
    send(sender, type="room", room="hot", data="after", id="x")
    assert ack(sender, "x")["delivered"] == 1


def test_api_clients_lists_every_node(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    conns = [chat_client(a, "x1"), chat_client(b, "x1"), chat_client(b, "x2")]
    for srv in (a, b):
        body = http(srv.url, "GET", "/api/clients", token=ADMIN).body
        assert body["clients"] == [{"client_id": "x1", "connections": 2}, {"client_id": "x2", "connections": 1}]
        assert body["total"] == 2
    conns.pop().close()
    eventually(lambda: clients(a) == {"x1": 2}, 15, "x2 gone from node A's listing")


def test_one_senders_messages_arrive_in_order_across_nodes(two_hosts: tuple[Server, Server]) -> None:
    a, b = two_hosts
    rx, tx = chat_client(b, "rx"), chat_client(a, "tx")
    count = 200  # under the receiver's send queue (256), so nothing is dropped while we read
    for i in range(count):
        send(tx, type="direct", to="rx", data=i)
    assert [recv_json(rx)["data"] for _ in range(count)] == list(range(count))


def test_two_workers_on_one_port_act_as_one(node: Callable[..., Server], redis_server: AnyRedis) -> None:
    srv = node(WSAPP_WORKERS="2")
    r = redis_server.client()
    eventually(lambda: r.zcard(NODES) == 2, 10, "both workers registered")
    conns: dict[str, websocket.WebSocket] = {}

    def holders() -> list[bytes]:  # the nodes (workers) that hold a connection
        return [n for n in r.zrange(NODES, 0, -1) if r.hlen(node_key(n, "c"))]

    # Which worker accepts is the kernel's choice, and one worker may win every race. So the
    # worker holding the first connection is stopped while the second connects: only the
    # other worker can accept it. (The node id is "<host>-<pid>-<suffix>".)
    conns["w0"] = chat_client(srv, "w0")
    eventually(lambda: len(holders()) == 1, 15, "the first worker holds w0")
    first = int(holders()[0].rsplit(b"-", 2)[1])
    os.kill(first, signal.SIGSTOP)
    try:
        conns["w1"] = chat_client(srv, "w1")
    finally:
        os.kill(first, signal.SIGCONT)
    conns.update({cid: chat_client(srv, cid) for cid in ("w2", "w3")})
    eventually(lambda: len(holders()) == 2, 15, "both workers hold a connection")
    assert clients(srv) == dict.fromkeys(conns, 1)
    for cid, ws in conns.items():
        resp = http(srv.url, "POST", "/api/send", {"to": cid, "data": cid}, token=make_token("ops"))
        assert (resp.status, delivery(resp.body)) == (200, {"delivered": 1})
        assert recv_json(ws)["data"] == cid
    resp = http(srv.url, "POST", "/api/broadcast", {"data": "all"}, token=ADMIN)
    assert delivery(resp.body) == {"delivered": len(conns)}
    assert all(recv_json(ws)["data"] == "all" for ws in conns.values())
    # /metrics merges the workers (prometheus multiprocess mode), whichever one answers
    for _ in range(4):
        text = http(srv.url, "GET", "/metrics").body
        assert f'wsapp_connections_open{{route="chat"}} {float(len(conns))}' in text


def test_external_emitter_sends_and_broadcasts_without_gunicorn(
    two_hosts: tuple[Server, Server], redis_server: AnyRedis
) -> None:
    a, b = two_hosts
    em_a, em_b, other = chat_client(a, "em"), chat_client(b, "em"), chat_client(b, "other")
    send(other, type="join", room="news", id="j")
    ack(other, "j")
    with Emitter(redis_server.url) as emitter:
        assert emitter.send("em", {"k": 1}) == 2
        for ws in (em_a, em_b):
            msg = recv_json(ws)
            assert (msg["type"], msg["from"], msg["to"], msg["data"]) == ("direct", "server", "em", {"k": 1})
        assert emitter.broadcast("everyone", sender="cron") == 3
        for ws in (em_a, em_b, other):
            msg = recv_json(ws)
            assert (msg["type"], msg["from"], msg["data"]) == ("broadcast", "cron", "everyone")
        assert emitter.broadcast("headline", room="news") == 1
        msg = recv_json(other)
        assert (msg["type"], msg["room"], msg["data"]) == ("room", "news", "headline")
        assert emitter.send("ghost", 1) == 0
        assert emitter.clients() == {"em": 2, "other": 1}
        echo_em = ws_connect(b, "/ws/echo", make_token("em"))  # not addressable: closed all the same
        assert emitter.disconnect("em", 4403, "revoked") == 2
        for ws in (em_a, em_b, echo_em):
            assert read_close(ws) == (4403, "revoked")
        assert emitter.disconnect("ghost") == 0


def test_a_node_killed_with_sigkill_leaves_no_ghost(two_hosts: tuple[Server, Server], redis_server: AnyRedis) -> None:
    a, b = two_hosts
    watcher, ghost = chat_client(a, "watcher"), chat_client(b, "ghost")
    for ws in (watcher, ghost):
        send(ws, type="join", room="lobby", id="j")
        ack(ws, "j")
    assert recv_until(watcher, lambda m: m["type"] == "presence")["client_id"] == "ghost"
    assert clients(a) == {"watcher": 1, "ghost": 1}

    assert b.proc is not None
    os.killpg(b.proc.pid, signal.SIGKILL)  # the whole instance: master and worker
    b.proc.wait(5)

    def ghost_gone() -> bool:
        # gone from presence: nobody counted, the message kept for its resume (seen within the TTL)
        return http(a.url, "POST", "/api/send", {"to": "ghost", "data": 1}, token=ADMIN).status == 202

    # reads ignore a node once its TTL has passed: how soon is not asserted here (no timed assertion;
    # test_a_dead_node_stops_counting_at_its_deadline_before_anyone_reaps_it pins the rule)
    eventually(ghost_gone, TTL_S + 3, "the dead node's client is counted nowhere")
    assert clients(a) == {"watcher": 1}
    left = recv_until(watcher, lambda m: m["type"] == "presence", timeout=TTL_S + HEARTBEAT_S + 3)
    assert left == {"type": "presence", "room": "lobby", "event": "leave", "client_id": "ghost"}
    # reaped now (gone from the live set too): the maintained totals no longer hold its connections
    eventually(lambda: redis_server.client().zcard(NODES) == 1, 15, "the dead node reaped")
    assert http(a.url, "POST", "/api/send", {"to": "ghost", "data": 2}, token=ADMIN).status == 202
    assert delivery(http(a.url, "POST", "/api/broadcast", {"data": 3}, token=ADMIN).body) == {"delivered": 1}
    assert delivery(http(a.url, "POST", "/api/broadcast", {"room": "lobby", "data": 4}, token=ADMIN).body) == {
        "delivered": 1
    }


def test_a_worker_killed_with_sigkill_leaves_no_ghost(node: Callable[..., Server], redis_server: AnyRedis) -> None:
    srv, observer = node(WSAPP_WORKERS="2"), node()
    r = redis_server.client()
    eventually(lambda: r.zcard(NODES) == 3, 10, "three workers registered")
    ghost = chat_client(srv, "wghost")  # held open: a dropped reference would close it

    def holders() -> list[bytes]:  # presence reaches Redis shortly after the welcome
        return [n for n in r.zrange(NODES, 0, -1) if r.hget(node_key(n, "c"), "wghost")]

    eventually(lambda: len(holders()) == 1, 10, "the client's presence written by its worker")
    holder = holders()[0]
    assert ghost.sock is not None
    worker_pid = int(holder.decode().rsplit("-", 2)[1])  # node ids are host-pid-random
    os.kill(worker_pid, signal.SIGKILL)

    def ghost_gone() -> bool:
        return http(observer.url, "POST", "/api/send", {"to": "wghost", "data": 1}, token=ADMIN).status == 202

    # how soon is not asserted (test_a_dead_node_stops_counting_at_its_deadline_before_anyone_reaps_it pins it)
    eventually(ghost_gone, TTL_S + 3, "the dead worker's client is counted nowhere")
    assert "wghost" not in clients(observer)
    eventually(lambda: http(srv.url, "GET", "/readyz").status == 200, 10, "gunicorn replaced the worker")


def test_redis_outage_keeps_local_delivery_and_recovers(node: Callable[..., Server], redis_server: AnyRedis) -> None:
    """History off: no positions, so nothing to resume and no connection is dropped. (With
    history on, chat connections are closed with 1012 when Redis is back, so they resume:
    tests/test_outage_gaps.py.)"""
    a, b = node(WSAPP_HISTORY_SIZE="0"), node(WSAPP_HISTORY_SIZE="0")
    a1, a2, b1, sink = chat_client(a, "o-a1"), chat_client(a, "o-a2"), chat_client(b, "o-b1"), chat_client(a, "sink")
    statuses: list[int] = []
    received = [0]
    stop = threading.Event()

    def traffic() -> None:  # HTTP sends on node A to a client on node A, all through the outage
        while not stop.is_set():
            resp = http(a.url, "POST", "/api/send", {"to": "sink", "data": "t"}, token=ADMIN)
            statuses.append(resp.status)
            time.sleep(0.01)

    def drain() -> None:  # until every answered send has arrived (or 15 s after the traffic stopped)
        sink.settimeout(1)
        deadline = float("inf")
        while not stop.is_set() or received[0] < len(statuses):
            if stop.is_set():
                deadline = min(deadline, time.monotonic() + 15)
                if time.monotonic() > deadline:
                    return
            try:
                received[0] += recv_json(sink, 1)["data"] == "t"
            except websocket.WebSocketTimeoutException:
                continue

    threads = [threading.Thread(target=traffic), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    try:
        redis_server.stop()
        for srv in (a, b):
            eventually(lambda srv=srv: http(srv.url, "GET", "/readyz").status == 503, 15, "/readyz 503")
        send(a1, type="direct", to="o-a2", data="local", id="l")
        assert ack(a1, "l") == {"type": "ack", "id": "l", "delivered": 1}
        assert recv_json(a2)["data"] == "local"
        late = chat_client(a, "o-late")  # connecting during the outage works too
        time.sleep(1)  # let the traffic run through a real outage
        # what is lost: node B's clients are unknown to node A until Redis is back
        assert http(a.url, "POST", "/api/send", {"to": "o-b1", "data": 0}, token=ADMIN).status == 404
        assert set(clients(a)) == {"o-a1", "o-a2", "sink", "o-late"}

        redis_server.start()  # the same port, no data: nodes must register their presence again
        for srv in (a, b):
            eventually(lambda srv=srv: http(srv.url, "GET", "/readyz").status == 200, 15, "/readyz 200 again")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert statuses and set(statuses) == {200}
    assert received[0] == len(statuses)  # every local message during the outage arrived
    everyone = {"o-a1": 1, "o-a2": 1, "o-b1": 1, "sink": 1, "o-late": 1}
    eventually(lambda: clients(b) == everyone, 15, "node A's presence written again")
    resp = http(a.url, "POST", "/api/send", {"to": "o-b1", "data": "back"}, token=ADMIN)
    assert (resp.status, delivery(resp.body)) == (200, {"delivered": 1})
    assert recv_json(b1)["data"] == "back"
    for ws in (a1, a2, b1, late):  # no connection was dropped
        send(ws, type="direct", to="o-b1", data="ping", id="p")
        assert ack(ws, "p")["delivered"] == 1
    assert a.proc is not None and b.proc is not None and a.proc.poll() is None and b.proc.poll() is None


def test_per_client_limit_counts_connections_on_other_nodes(node: Callable[..., Server]) -> None:
    a, b = node(WSAPP_MAX_CONNECTIONS_PER_CLIENT="2"), node(WSAPP_MAX_CONNECTIONS_PER_CLIENT="2")
    on_a, on_b = chat_client(a, "capped"), chat_client(b, "capped")
    eventually(lambda: clients(a).get("capped") == 2, 15, "both connections registered")
    status, _, body, sock = raw_handshake(a.port, "/ws/chat", {"Authorization": f"Bearer {make_token('capped')}"})
    sock.close()
    assert status == 429 and json.loads(body)["error"] == "too_many_connections"
    on_b.close()
    eventually(lambda: clients(a).get("capped") == 1, 15, "the connection on B is gone")
    third = chat_client(a, "capped")  # room again
    on_a.close(), third.close()


def test_a_room_name_the_server_cannot_encode_leaves_no_phantom_on_the_other_node(
    two_hosts: tuple[Server, Server],
) -> None:
    a, b = two_hosts
    for i in range(12):  # more than the per-client limit: a leaked slot would 429 the last ones
        ws = chat_client(a, "phantom")
        ws.send('{"type":"join","room":"\\ud800","id":"j"}')
        err = recv_json(ws)
        assert (err["type"], err["code"]) == ("error", "bad_json")
        send(ws, type="join", room="real", id=i)  # still open, and a real room works
        assert recv_until(ws, lambda m: m["type"] == "joined")["room"] == "real"
        ws.close()

    def phantom_gone() -> bool:
        resp = http(b.url, "POST", "/api/send", {"to": "phantom", "data": 1}, token=ADMIN)
        return resp.status == 202 and resp.body["delivered"] == 0 and "phantom" not in clients(b)

    eventually(phantom_gone, 15, "node B no longer counts the closed connections")
    assert delivery(http(b.url, "POST", "/api/broadcast", {"room": "real", "data": 1}, token=ADMIN).body) == {
        "delivered": 0
    }
    assert "Traceback" not in a.log() and "code=1011" not in a.log()


class CountingRooms(set[str]):
    """A peer's room set that counts how often it is walked."""

    walks = 0

    def __iter__(self) -> Any:
        self.walks += 1
        return super().__iter__()


@pytest.fixture
def backplane(redis_server: AnyRedis) -> Iterator[Any]:
    """A RedisBackplane in this process on the real redis-server (no gunicorn): its presence
    writes, step by step."""
    from wsapp.redis.backplane import RedisBackplane
    from wsapp.registry import Registry
    from wsapp.settings import Settings

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    settings = Settings.from_env({"WSAPP_JWT_SECRET": "x" * 40, "WSAPP_REDIS_URL": redis_server.url})
    bp = RedisBackplane(Registry(100, 100), settings)
    bp.start()
    assert bp.healthy
    yield bp
    bp.stop()


def _peer(client_id: str, conn_id: str) -> Any:
    from wsapp.registry import Peer

    class Ws:
        def __init__(self) -> None:
            self.conn_id = conn_id

        def send_frame(self, frame: bytes) -> bool:
            return True

    peer = Peer(Ws(), client_id, False, 0.0, "", "chat")  # type: ignore[arg-type]
    peer.rooms = CountingRooms()
    return peer


def test_a_dead_node_stops_counting_at_its_deadline_before_anyone_reaps_it(redis_server: AnyRedis) -> None:
    """The maintained totals still hold a dead node's connections until a live heartbeat
    reaps it; every publish subtracts the nodes past their deadline meanwhile."""
    from wsapp.redis.bus import Bus
    from wsapp.redis.connect import connect

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    dying, alive = Bus(connect(redis_server.url), "dying"), Bus(connect(redis_server.url), "alive")
    dying.register(60)
    alive.register(60)
    dying.write_presence({("c", "zed"): 2, ("t", "*"): 2})
    alive.read_nodes()
    assert alive.publish(Target("client", "zed"), b"x") == 2  # alive until its deadline
    # its deadline passes (moved into the past rather than waited for: no race with the clock)
    redis_server.client().zadd(NODES, {"dying": 1})
    alive.read_nodes()
    assert alive.liveness.dead() == ["dying"]
    assert redis_server.client().hget(tag_key("client", "zed", "n"), "*") == b"2"  # not reaped: still in the total
    assert alive.publish(Target("client", "zed"), b"x") == 0
    assert alive.publish(Target("all"), b"x") == 0
    assert alive.client_count("zed") == 0 and alive.clients() == {}
    assert alive.reap("dying") == []
    assert redis_server.client().hget(tag_key("client", "zed", "n"), "*") is None  # reaped: out of the total
    for bus in (dying, alive):
        bus.client.close()


def test_join_and_leave_cost_the_same_however_many_rooms_the_client_holds(
    backplane: Any, redis_server: AnyRedis
) -> None:
    """Each join/leave writes one room's presence: it never walks the client's other rooms
    (it did: 0.75 ms per join at 0 rooms, 3.5 ms at 12,000)."""
    from wsapp.hub import Hub
    from wsapp.registry import Join

    hub = Hub(backplane.registry, backplane)
    held, other = _peer("many", "c1"), _peer("many", "c2")
    for peer in (held, other):
        hub.connect(peer)
    for i in range(500):
        assert hub.join(held, f"r{i}", 10_000) is Join.NEW_CLIENT
    assert hub.join(other, "r0", 10_000) is Join.NEW_CONNECTION
    held.rooms.walks = other.rooms.walks = 0
    assert hub.join(held, "one-more", 10_000) is Join.NEW_CLIENT
    hub.leave(held, "r1")
    hub.leave(other, "r0")
    assert hub.join(held, "r2", 10_000) is Join.ALREADY
    assert held.rooms.walks == 0 and other.rooms.walks == 0

    r = redis_server.client()
    me = backplane.node_id
    assert r.hget(tag_key("room", "one-more", "m"), "many") == f"{me}=1".encode()
    assert not r.exists(tag_key("room", "r1", "n")) and not r.exists(tag_key("room", "r1", "m"))
    assert r.hget(tag_key("room", "r0", "m"), "many") == f"{me}=1".encode()  # other left it, held is still there
    assert r.hget(node_key(me.encode(), "c"), "many") == b"2" and r.hget(tag_key("room", "r0", "n"), me) == b"1"
    assert r.hget(node_key(me.encode(), "r"), "r0") == b"1"


def test_presence_written_step_by_step_equals_presence_written_whole(backplane: Any, redis_server: AnyRedis) -> None:
    """The O(1) writes and a full rewrite from the registry leave Redis in the same state."""
    from wsapp.hub import Hub
    from wsapp.redis.backplane import _Mirror
    from wsapp.redis.keys import Writes

    hub = Hub(backplane.registry, backplane)
    peers = [_peer(cid, f"{cid}-{n}") for cid in ("p", "q") for n in range(2)]
    for peer in peers:
        hub.connect(peer)
    ops = [(0, "join", "a"), (1, "join", "a"), (2, "join", "a"), (0, "join", "b"), (3, "join", "b"),
           (1, "leave", "a"), (0, "join", "c"), (2, "leave", "a"), (3, "join", "c"), (0, "leave", "b"),
           (1, "join", "c")]  # fmt: skip
    r = redis_server.client()
    me = backplane.node_id

    def redis_state() -> dict[str, dict[bytes, bytes]]:
        return {k.decode(): r.hgetall(k) for k in r.scan_iter("wsapp:{[rn]*") if r.type(k) == b"hash"}

    def whole() -> _Mirror:
        mirror, writes = _Mirror(), Writes()
        for cid in ("p", "q"):
            mirror.set(cid, *backplane._local_state(cid), writes)
        return mirror

    # p's second connection goes while its first stays in "c": only the disconnect writes that count
    for index, op, room in [*ops, (1, "disconnect", ""), (3, "disconnect", ""), (0, "disconnect", "")]:
        if op == "join":
            hub.join(peers[index], room, 10)
        elif op == "leave":
            hub.leave(peers[index], room)
        else:
            hub.disconnect(peers[index])
        expected = whole()
        assert vars(backplane._mirror) == vars(expected), (op, index, room)
        state = redis_state()
        index = state.get(node_key(me.encode(), "r"), {})
        for room_name, total in expected.room_totals.items():
            assert index[room_name.encode()] == str(total).encode()
            assert state[tag_key("room", room_name, "n")][me.encode()] == str(total).encode()
        assert {k for k in state if k.startswith("wsapp:{r") and k.endswith(":n")} == {
            tag_key("room", name, "n") for name in expected.room_totals
        }
        for cid, rooms in expected.rooms.items():  # each member's entry names this node and its count
            for room_name, n in rooms.items():
                assert state[tag_key("room", room_name, "m")][cid.encode()] == f"{me}={n}".encode()
