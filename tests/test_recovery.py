"""Nothing lost across a reconnect: positions, history, resume on any node, offline
direct messages and token refresh, against real gunicorn (and redis-server) processes.

Each scenario also runs, where it shows something, with history off
(`WSAPP_HISTORY_SIZE=0`), which is how the service behaved before: the same cut
loses the messages published meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import (
    Reader,
    RedisProcess,
    Server,
    delivery,
    http,
    make_token,
    read_close,
    recv_json,
    recv_until,
    ws_connect,
)

KINDS = ("room", "direct", "broadcast")
ROOM = "lobby"
ADMIN = make_token("admin", admin=True)


# ---- helpers ---------------------------------------------------------------------------


def stream_of(frame: dict[str, Any]) -> str | None:
    """The stream a message frame belongs to, as the resume frame names it."""
    kind = frame.get("type")
    if kind == "room":
        return "room:" + frame["room"]
    if kind in ("direct", "broadcast"):
        return str(kind)
    return None


class Listener:
    """One chat connection of `client_id`, read in a thread; keeps the message frames
    (and their positions) it received, whatever connection they came on."""

    def __init__(self, server: Server, client_id: str, resume: bool = False) -> None:
        path = "/ws/chat?resume=1" if resume else "/ws/chat"
        self.ws = ws_connect(server, path, make_token(client_id))
        self.welcome = recv_json(self.ws)
        assert self.welcome["type"] == "welcome"
        self.reader = Reader(self.ws)

    def next(self, pred: Any = lambda m: True, timeout: float = 10) -> dict[str, Any]:
        return self.reader.next(pred, timeout)

    def send(self, **frame: Any) -> None:
        self.reader.send(**frame)

    def cut(self) -> None:
        """Cut the TCP connection: no close frame, as when a phone changes network."""
        sock = self.ws.sock
        sock.shutdown(socket.SHUT_RDWR)
        self.reader._thread.join(10)
        sock.close()

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while not self.reader.frames.empty():
            out.append(self.reader.frames.get_nowait())
        return out


class Log:
    """Every message frame a client received, per stream, in arrival order."""

    def __init__(self) -> None:
        self.frames: dict[str, list[dict[str, Any]]] = {"broadcast": [], "direct": [], "room:" + ROOM: []}
        self.positions: dict[str, dict[str, Any]] = {}

    def add(self, frame: dict[str, Any]) -> None:
        stream = stream_of(frame)
        if stream is None or frame.get("from") != "alice":
            return
        self.frames[stream].append(frame)
        self.positions[stream] = {"offset": frame["offset"], "epoch": frame["epoch"]}

    def count(self) -> int:
        return sum(len(v) for v in self.frames.values())

    def resume_frame(self) -> dict[str, Any]:
        return {
            "type": "resume",
            "id": "r",
            "broadcast": self.positions["broadcast"],
            "direct": self.positions["direct"],
            "rooms": {ROOM: self.positions["room:" + ROOM]},
        }


class Publisher(threading.Thread):
    """alice sends `total` messages, room/direct/broadcast in turn, each acked before the
    next, spread over about `seconds`; `sent` counts the acked ones. With `pause_at`, it stops
    before that message until `go` is set (so a test knows it is not finished yet)."""

    def __init__(
        self, server: Server, total: int = 1000, seconds: float = 3.0, to: str = "bob", pause_at: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.total, self.seconds, self.to, self.pause_at = server, total, seconds, to, pause_at
        self.go = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None
        self.ws = ws_connect(server, "/ws/chat", make_token("alice"))
        recv_json(self.ws)
        self.ws.send(json.dumps({"type": "join", "room": ROOM, "id": "j"}))
        recv_until(self.ws, lambda m: m.get("id") == "j")

    def run(self) -> None:
        try:
            start = time.monotonic()
            for i in range(self.total):
                if i == self.pause_at and not self.go.wait(60):
                    raise TimeoutError("never told to go on")
                kind = KINDS[i % 3]
                frame: dict[str, Any] = {"type": kind, "id": i, "data": i}
                if kind == "room":
                    frame["room"] = ROOM
                if kind == "direct":
                    frame["to"] = self.to
                self.ws.send(json.dumps(frame))
                ack = recv_until(self.ws, lambda m, i=i: m.get("id") == i)
                assert ack["type"] == "ack", ack
                self.sent += 1
                ahead = start + self.seconds * (i + 1) / self.total - time.monotonic()
                if ahead > 0:  # pacing the load, not waiting for anything
                    time.sleep(ahead)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def expected(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"room:" + ROOM: [], "direct": [], "broadcast": []}
        for i in range(self.total):
            kind = KINDS[i % 3]
            out["room:" + ROOM if kind == "room" else kind].append(i)
        return out


def wait_for(cond: Callable[[], bool], timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def connected(server: Server, client_id: str) -> bool:
    res = http(server.url, "GET", "/api/clients", token=ADMIN)
    return any(c["client_id"] == client_id for c in res.body["clients"])


def cut_and_resume(publish_on: Server, first: Server, second: Server, kill_first: bool = False) -> None:
    """bob on `first` gets ~150 messages, loses his TCP connection (or `first` is killed
    with -9), comes back on `second` 2 s later with `?resume=1` and his last positions,
    while alice keeps publishing through `publish_on`; bob must end with every message
    exactly once, each stream in order."""
    log = Log()
    bob = Listener(first, "bob")
    bob.send(type="join", room=ROOM, id="j")
    joined = bob.next(lambda m: m.get("type") == "joined")
    bob.next(lambda m: m.get("id") == "j")
    assert joined["offset"] == 0 and joined["epoch"] == ""
    assert bob.welcome["streams"] == {
        "broadcast": {"offset": 0, "epoch": ""},
        "direct": {"offset": 0, "epoch": bob.welcome["streams"]["direct"]["epoch"]},
    }
    pub = Publisher(publish_on, pause_at=400)  # goes on once bob has asked to resume
    pub.start()
    while log.count() < 150:
        log.add(bob.next())
    if kill_first:
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    else:
        bob.cut()
    cut_at = time.monotonic()
    if not kill_first:  # the server saw the cut before bob comes back; then the 2 s gap
        wait_for(lambda: not connected(first, "bob"), what="the server to drop bob")
    for frame in bob.drain():
        log.add(frame)
    wait_for(lambda: time.monotonic() >= cut_at + 2.0, what="2 s after the cut")
    assert pub.sent < pub.total, "the publisher finished before the resume"

    bob2 = Listener(second, "bob", resume=True)
    bob2.send(**log.resume_frame())
    pub.go.set()  # new messages race the replay
    while True:
        frame = bob2.next()
        if frame["type"] == "resumed":
            resumed = frame
            break
        log.add(frame)
    for name in ("broadcast", "direct"):
        assert resumed[name]["recovered"] is True, resumed
    assert resumed["rooms"][ROOM]["recovered"] is True, resumed
    assert sum(resumed[n]["replayed"] for n in ("broadcast", "direct")) + resumed["rooms"][ROOM]["replayed"] > 0
    pub.join(30)
    assert pub.error is None, pub.error
    while log.count() < pub.total:
        log.add(bob2.next(timeout=15))
    for stream, data in pub.expected().items():
        got = [f["data"] for f in log.frames[stream]]
        assert got == data, f"{stream}: {len(got)} messages, first difference at {_diff(got, data)}"
        offsets = [f["offset"] for f in log.frames[stream]]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), stream
    assert len({f["epoch"] for fs in log.frames.values() for f in fs if stream_of(f) == "broadcast"}) == 1


def _diff(got: list[int], want: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))


# ---- one node, in-process history ----------------------------------------------------------


@pytest.fixture(scope="module")
def node1() -> Iterator[Server]:
    srv = Server(env={"WSAPP_RATE_LIMIT": "0", "WSAPP_HISTORY_SIZE": "2000"}).start()
    yield srv
    srv.stop()


def test_a_cut_connection_resumes_with_every_message_once_and_in_order(node1: Server) -> None:
    cut_and_resume(node1, node1, node1)


def test_without_history_the_same_cut_loses_messages(start_server: Callable[..., Server]) -> None:
    """What the service did before: no positions, and a resume cannot recover anything."""
    srv = start_server(WSAPP_RATE_LIMIT="0", WSAPP_HISTORY_SIZE="0")
    bob = Listener(srv, "bob")
    assert "streams" not in bob.welcome
    bob.send(type="join", room=ROOM, id="j")
    assert "offset" not in bob.next(lambda m: m.get("type") == "joined")
    pub = Publisher(srv, total=300, seconds=1.0)
    pub.start()
    got = [bob.next(lambda m: m.get("from") == "alice") for _ in range(30)]
    assert all("offset" not in f for f in got)
    bob.cut()
    pub.join(30)
    bob2 = Listener(srv, "bob", resume=True)
    bob2.send(type="resume", broadcast={"offset": 10, "epoch": "x"}, rooms={ROOM: {"offset": 10, "epoch": "x"}})
    resumed = bob2.next(lambda m: m.get("type") == "resumed")
    assert resumed["broadcast"] == {"recovered": False, "replayed": 0, "offset": 0, "epoch": ""}
    assert resumed["rooms"][ROOM]["recovered"] is False
    assert resumed["rooms"][ROOM]["members"] == ["alice", "bob"]  # membership re-applied all the same
    # the 270 messages of the gap are gone: the first one bob sees is the next one sent
    pub.ws.send(json.dumps({"type": "broadcast", "data": "marker"}))
    assert bob2.next(lambda m: m.get("from") == "alice")["data"] == "marker"


def test_a_gap_older_than_the_history_is_not_recovered_for_that_stream_only(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server(WSAPP_RATE_LIMIT="0", WSAPP_HISTORY_SIZE="5")
    bob = Listener(srv, "bob")
    for room in ("big", "small"):
        bob.send(type="join", room=room, id=room)
        bob.next(lambda m, room=room: m.get("id") == room)
    bob.cut()
    alice = ws_connect(srv, "/ws/chat", make_token("alice"))
    recv_json(alice)
    for room, n in (("big", 8), ("small", 3)):
        alice.send(json.dumps({"type": "join", "room": room}))
        recv_until(alice, lambda m: m.get("type") == "joined")
        for i in range(n):
            alice.send(json.dumps({"type": "room", "room": room, "data": i, "id": f"{room}{i}"}))
            recv_until(alice, lambda m, i=i, room=room: m.get("id") == f"{room}{i}")
    empty = {"offset": 0, "epoch": ""}
    bob2 = Listener(srv, "bob", resume=True)
    bob2.send(type="resume", id=1, rooms={"big": empty, "small": empty}, broadcast=empty)
    frames = []
    while (f := bob2.next())["type"] != "resumed":
        frames.append(f)
    assert f["rooms"]["big"]["recovered"] is False  # 8 published, 5 kept
    assert f["rooms"]["big"]["replayed"] == 0 and f["rooms"]["big"]["offset"] == 8
    assert f["rooms"]["small"]["recovered"] is True and f["rooms"]["small"]["replayed"] == 3
    assert f["broadcast"]["recovered"] is True
    assert [(m["room"], m["data"]) for m in frames] == [("small", 0), ("small", 1), ("small", 2)]
    # from the returned position on, the lost stream is live again
    alice.send(json.dumps({"type": "room", "room": "big", "data": "after", "id": "a"}))
    after = bob2.next(lambda m: m.get("type") == "room")
    assert after["data"] == "after" and after["offset"] == 9


def test_a_worker_restart_without_redis_is_a_new_epoch(start_server: Callable[..., Server]) -> None:
    srv = start_server(WSAPP_RATE_LIMIT="0")
    alice = Listener(srv, "alice")
    alice.send(type="broadcast", data=1, id=1)
    seen = alice.next(lambda m: m.get("type") == "broadcast")
    position = {"offset": seen["offset"], "epoch": seen["epoch"]}
    srv.stop()
    srv.port = 0  # the restarted gunicorn picks a port again
    srv.start()
    alice2 = Listener(srv, "alice")
    alice2.send(type="broadcast", data=2, id=2)
    again = alice2.next(lambda m: m.get("type") == "broadcast")
    assert again["offset"] == 1 and again["epoch"] != seen["epoch"]
    alice2.send(type="resume", broadcast=position)
    resumed = alice2.next(lambda m: m.get("type") == "resumed")
    assert resumed["broadcast"]["recovered"] is False
    assert resumed["broadcast"]["epoch"] == again["epoch"] and resumed["broadcast"]["offset"] == 1


# ---- offline direct messages ---------------------------------------------------------------


def test_direct_messages_to_a_client_that_is_away_are_stored_and_delivered_on_resume(node1: Server) -> None:
    carol = Listener(node1, "carol")
    position = carol.welcome["streams"]["direct"]
    carol.ws.close()
    wait_for(lambda: not connected(node1, "carol"), what="carol to leave")
    alice = Listener(node1, "alice")
    alice.send(type="direct", to="carol", data="ws", id=1)
    assert alice.next(lambda m: m.get("id") == 1) == {"type": "ack", "id": 1, "delivered": 0, "stored": True}
    res = http(node1.url, "POST", "/api/send", {"to": "carol", "data": "api"}, token=make_token("dave"))
    assert (res.status, delivery(res.body)) == (202, {"delivered": 0, "stored": True})
    # a client id never seen within the window: as before
    alice.send(type="direct", to="nobody", data="x", id=2)
    assert alice.next(lambda m: m.get("id") == 2)["code"] == "not_connected"
    res = http(node1.url, "POST", "/api/send", {"to": "nobody", "data": "x"}, token=make_token("dave"))
    assert (res.status, res.body["error"]) == (404, "not_connected")

    back = Listener(node1, "carol", resume=True)
    back.send(type="resume", id=3, direct=position)
    got = [back.next(lambda m: m.get("type") in ("direct", "resumed")) for _ in range(3)]
    assert [(f["type"], f.get("data")) for f in got] == [("direct", "ws"), ("direct", "api"), ("resumed", None)]
    assert got[2]["direct"] == {"recovered": True, "replayed": 2, "offset": position["offset"] + 2,
                                "epoch": position["epoch"]}  # fmt: skip


def test_store_offline_keeps_direct_messages_for_any_client_id(start_server: Callable[..., Server]) -> None:
    srv = start_server(WSAPP_STORE_OFFLINE="1")
    res = http(srv.url, "POST", "/api/send", {"to": "never-seen", "data": "hello"}, token=make_token("dave"))
    assert (res.status, delivery(res.body)) == (202, {"delivered": 0, "stored": True})
    late = Listener(srv, "never-seen", resume=True)
    late.send(type="resume", direct={"offset": 0, "epoch": ""})
    got = late.next(lambda m: m.get("type") == "direct")
    assert got["data"] == "hello" and got["offset"] == 1
    assert late.next(lambda m: m.get("type") == "resumed")["direct"]["recovered"] is True


# ---- refresh -----------------------------------------------------------------------------


def test_refresh_moves_the_expiry_and_refuses_another_client_id(node1: Server) -> None:
    ttl = 6  # the handshake allows WSAPP_JWT_LEEWAY, the 4401 deadline is the token's exp
    # three connections with a short token: the first swaps it, the others try and fail
    expires = time.time() + ttl  # before the token: its exp, int(now + ttl), is at least expires - 1
    short = make_token("erin", ttl=ttl)
    conns = [ws_connect(node1, "/ws/chat", short) for _ in range(3)]
    for ws in conns:
        recv_json(ws)
    ok, other, bad = conns
    ok.send(json.dumps({"type": "refresh", "id": 1, "token": make_token("erin", ttl=3600)}))
    assert recv_until(ok, lambda m: m.get("id") == 1) == {"type": "ack", "id": 1, "delivered": 0}
    other.send(json.dumps({"type": "refresh", "id": 2, "token": make_token("mallory", ttl=3600)}))
    assert recv_until(other, lambda m: m.get("id") == 2)["code"] == "wrong_client"
    bad.send(json.dumps({"type": "refresh", "id": 3, "token": make_token("erin", ttl=3600, secret="x" * 40)}))
    assert recv_until(bad, lambda m: m.get("id") == 3)["code"] == "invalid_token"
    bad.send(json.dumps({"type": "refresh", "id": 4, "token": make_token("erin", ttl=-60)}))
    assert recv_until(bad, lambda m: m.get("id") == 4)["code"] == "token_expired"
    # the refused ones keep their old deadline: closed 4401 at the old expiry
    assert read_close(other, timeout=ttl + 5)[0] == 4401
    assert read_close(bad, timeout=ttl + 5)[0] == 4401
    assert time.time() >= expires - 1
    # the refreshed one is still served after it
    ok.send(json.dumps({"type": "broadcast", "data": "still here", "id": 5}))
    assert recv_until(ok, lambda m: m.get("id") == 5)["type"] == "ack"
    ok.close()


# ---- Redis: resume on any node ---------------------------------------------------------------


@pytest.fixture
def redis_node(redis_server: RedisProcess, start_server: Callable[..., Server]) -> Callable[..., Server]:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()

    def start(**env: str) -> Server:
        base = {
            "WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0",
            "WSAPP_REDIS_HEARTBEAT": "0.5", "WSAPP_REDIS_PRESENCE_TTL": "2", "WSAPP_HISTORY_SIZE": "2000",
        }  # fmt: skip
        return start_server(**{**base, **env})

    return start


def test_resume_on_another_node_through_redis(redis_node: Callable[..., Server]) -> None:
    a, b = redis_node(), redis_node()
    cut_and_resume(publish_on=b, first=a, second=b)


def test_resume_after_the_node_was_killed_with_sigkill(redis_node: Callable[..., Server]) -> None:
    a, b = redis_node(), redis_node()
    cut_and_resume(publish_on=b, first=a, second=b, kill_first=True)


def test_a_redis_restart_without_persistence_is_a_new_epoch(
    redis_server: RedisProcess, redis_node: Callable[..., Server]
) -> None:
    srv = redis_node()
    alice = Listener(srv, "alice")
    alice.send(type="broadcast", data=1, id=1)
    seen = alice.next(lambda m: m.get("type") == "broadcast")
    alice.ws.close()
    redis_server.stop()
    redis_server.start()  # same port, no data
    wait_for(lambda: http(srv.url, "GET", "/readyz").status == 200, what="the node back on Redis")
    alice2 = Listener(srv, "alice", resume=True)
    alice2.send(type="resume", broadcast={"offset": seen["offset"], "epoch": seen["epoch"]})
    resumed = alice2.next(lambda m: m.get("type") == "resumed")
    assert resumed["broadcast"]["recovered"] is False
    alice2.send(type="broadcast", data=2, id=2)
    again = alice2.next(lambda m: m.get("type") == "broadcast")
    assert again["offset"] == 1 and again["epoch"] != seen["epoch"]


def test_offline_direct_messages_through_redis_and_the_emitter(
    redis_server: RedisProcess, redis_node: Callable[..., Server]
) -> None:
    from wsapp.emitter import Emitter

    a, b = redis_node(), redis_node()
    carol = Listener(a, "carol")
    position = carol.welcome["streams"]["direct"]
    carol.ws.close()
    wait_for(lambda: not connected(b, "carol"), what="carol to leave")
    res = http(b.url, "POST", "/api/send", {"to": "carol", "data": "api"}, token=make_token("dave"))
    assert (res.status, delivery(res.body)) == (202, {"delivered": 0, "stored": True})
    with Emitter(redis_server.url) as emitter:
        assert emitter.send_direct("carol", "emitter") == (0, True)
        assert emitter.send_direct("nobody", "x") == (0, False)
        assert emitter.send("nobody", "y") == 0
    back = Listener(b, "carol", resume=True)
    back.send(type="resume", direct=position)
    got = [back.next(lambda m: m.get("type") in ("direct", "resumed")) for _ in range(3)]
    assert [f.get("data") for f in got] == ["api", "emitter", None]
    assert got[2]["direct"]["recovered"] is True and got[2]["direct"]["replayed"] == 2


# ---- bounds (pure logic: the in-process store) and the public API -------------------------


def test_a_million_random_streams_stay_within_the_total_bounds() -> None:
    """A client posting to a million random room names (or, with WSAPP_STORE_OFFLINE=1,
    client ids) pushes old streams out; the store never holds more than its bounds."""
    import random

    from wsapp.history import ENTRY_COST, STREAM_COST, MemoryHistory

    history = MemoryHistory(size=100, ttl_s=300, max_streams=1000, max_bytes=200_000)
    prefix = '{"type":"room","room":"x","from":"mallory","data":"' + "z" * 40 + '","ts":1.0'
    most_streams = most_bytes = 0
    for i in range(1_000_000):
        history.append(f"room:{random.getrandbits(64):x}", prefix)
        if i % 1000 == 0:
            most_streams, most_bytes = max(most_streams, history.streams), max(most_bytes, history.nbytes)
    assert history.streams <= 1000 and most_streams <= 1000
    assert history.nbytes <= 200_000 and most_bytes <= 200_000
    # and the bytes are what they say: frames plus the fixed costs
    assert history.nbytes == sum(
        STREAM_COST + sum(len(f) + ENTRY_COST for _o, _t, f in s.entries) for s in history._streams.values()
    )
    # one big stream alone is held to the byte bound by losing its oldest messages
    big = MemoryHistory(size=100_000, ttl_s=300, max_streams=10, max_bytes=50_000)
    for _ in range(10_000):
        big.append("room:big", prefix)
    assert big.nbytes <= 50_000 and big.streams == 1


def test_history_keeps_size_and_age_per_stream_and_a_dropped_stream_comes_back_with_a_new_epoch() -> None:
    from wsapp.history import EMPTY, MemoryHistory, Position

    now = [0.0]
    h = MemoryHistory(size=3, ttl_s=10, max_streams=2, max_bytes=10**6, clock=lambda: now[0])
    for _ in range(5):
        h.append("room:a", '{"type":"room"')
    pos = h.position("room:a")
    assert pos.offset == 5
    assert h.since("room:a", Position(2, pos.epoch)).recovered is True  # 3, 4, 5 kept
    assert [o for o, _f in h.since("room:a", Position(2, pos.epoch)).frames] == [3, 4, 5]
    assert h.since("room:a", Position(1, pos.epoch)).recovered is False  # 2 was trimmed
    assert h.since("room:a", Position(5, "other")).recovered is False
    assert h.since("room:a", Position(6, pos.epoch)).recovered is False  # ahead of the stream
    assert h.since("room:nothing", EMPTY) == (True, [], EMPTY)
    now[0] = 11  # idle past the TTL: gone, and a new epoch when it comes back
    assert not h.exists("room:a")
    h.append("room:a", '{"type":"room"')
    assert h.position("room:a").epoch != pos.epoch and h.position("room:a").offset == 1
    h.append("room:b", '{"type":"room"')
    h.append("room:c", '{"type":"room"')  # the third stream pushes the least recently written out
    assert h.streams == 2 and not h.exists("room:a")


def test_direct_messages_to_random_client_ids_store_nothing_unless_asked() -> None:
    from wsapp.backplane import InProcessBackplane
    from wsapp.history import MemoryHistory
    from wsapp.hub import Hub
    from wsapp.registry import Registry

    registry = Registry(10, 10)
    history = MemoryHistory(size=10, ttl_s=60, max_streams=50, max_bytes=10**6)
    hub = Hub(registry, InProcessBackplane(registry, history))
    for i in range(20_000):
        assert hub.send_direct("mallory", f"id-{i}", "x") == (0, False)
    assert history.streams == 0
    hub.store_offline = True
    for i in range(20_000):
        assert hub.send_direct("mallory", f"id-{i}", "x") == (0, True)
    assert history.streams == 50


def test_ws_send_returns_0_for_a_stored_message_and_bad_resume_frames_get_errors() -> None:
    from inprocess import in_process, until

    with in_process() as inproc:
        away = inproc.connect(client_id="away")
        position = away.receive()["streams"]["direct"]
        away.close()
        until(lambda: "away" not in inproc.ws.clients(), "the server to drop 'away'")
        assert inproc.ws.send("away", "kept") == 0  # stored, not delivered
        assert inproc.ws.send("never-seen", "dropped") == 0
        back = inproc.connect("/ws/chat?resume=1", client_id="away")
        assert back.receive()["type"] == "welcome"
        for bad, code in (
            ({"type": "resume", "id": 1, "direct": {"offset": "1", "epoch": ""}}, "missing_field"),
            ({"type": "resume", "id": 2, "direct": {"offset": -1, "epoch": ""}}, "missing_field"),
            ({"type": "resume", "id": 3, "rooms": ["lobby"]}, "missing_field"),
            ({"type": "resume", "id": 4, "rooms": {"": {"offset": 0, "epoch": ""}}}, "missing_field"),
            ({"type": "refresh", "id": 5}, "missing_field"),
            ({"type": "refresh", "id": 6, "token": "not.a.jwt"}, "invalid_token"),
        ):
            back.send(bad)
            err = back.receive()
            assert (err["type"], err["code"], err["id"]) == ("error", code, bad["id"])
        # the first frame was not a valid resume: the held streams were let go, then a good resume
        back.send({"type": "resume", "id": 7, "direct": position})
        got = [back.receive() for _ in range(3)]
        assert [f["type"] for f in got] == ["direct", "resumed", "ack"] and got[0]["data"] == "kept"
        assert not inproc.lines("Traceback|error in chat session")


def test_resume_1_on_an_app_route_holds_nothing() -> None:
    """Only chat answers `resume`: an addressable route of the app's own opened with
    ?resume=1 gets its pushes live, as without it."""
    from inprocess import in_process, until

    with in_process() as inproc:

        @inproc.ws.route("/ws/feed", addressable=True)
        def feed(conn):  # type: ignore[no-untyped-def]
            while conn.receive() is not None:
                pass

        client = inproc.connect("/ws/feed?resume=1", client_id="reader")
        until(lambda: "reader" in inproc.ws.clients(), "the connection registered")
        assert inproc.ws.send("reader", "live") == 1
        msg = client.receive()
        assert (msg["type"], msg["data"]) == ("direct", "live")


class _Ws:
    """A connection that records what is queued on it (pure logic: no socket)."""

    conn_id = "fake"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return True


class _RacingBackplane:
    """A stream's history, and messages that arrive while each read is in flight (what a
    Redis round trip allows): `arrive[n]` offsets are delivered during the n-th read."""

    history_on = in_flight = True

    def __init__(self, peer: Any, kept: int, arrive: list[list[int]]) -> None:
        from wsapp.history import Position

        self.peer, self.kept, self.arrive = peer, kept, arrive
        self.head = Position(kept, "e")
        self.reads = 0

    def replay(self, stream: str, pos: Any) -> Any:
        from wsapp.history import Position, Replay
        from wsapp.registry import deliver

        arriving = self.arrive[self.reads] if self.reads < len(self.arrive) else []
        self.reads += 1
        upto = self.head.offset
        frames = [(o, str(o).encode()) for o in range(pos.offset + 1, upto + 1)]
        for o in arriving:  # published and delivered while the read was on its way
            self.head = Position(o, "e")
            deliver([self.peer], str(o).encode(), stream, o)
        return Replay(True, frames, Position(upto, "e"))


@pytest.mark.parametrize(
    ("limit", "arrive", "reads", "replayed"),
    [
        (100, [[11, 12, 13]], 1, 6),  # held during the read, sent after the replay
        (100, [[9, 10, 11]], 1, 6),  # 9 and 10 were in the read too: sent once
        (2, [[11, 12, 13, 14, 15]], 2, 11),  # the gate overflowed: the history is read again
        (100, [[]], 1, 6),  # nothing new
    ],
)
def test_catch_up_sends_every_offset_once_in_order_whatever_arrives_during_the_read(
    limit: int, arrive: list[list[int]], reads: int, replayed: int
) -> None:
    from wsapp.chat.resume import catch_up
    from wsapp.history import Position
    from wsapp.registry import Peer, deliver

    ws = _Ws()
    peer = Peer(ws, "bob", False, 0.0, "", "chat")  # type: ignore[arg-type]
    backplane = _RacingBackplane(peer, kept=10, arrive=arrive)
    result = catch_up(peer, backplane, "broadcast", Position(4, "e"), limit)  # type: ignore[arg-type]
    last = max([10, *arrive[0]])
    assert [int(f) for f in ws.sent] == list(range(5, last + 1))
    assert result == {"recovered": True, "replayed": replayed, "offset": last, "epoch": "e"}
    assert backplane.reads == reads
    # a copy still on its way from Redis is dropped; the next new one goes out and opens the gate
    deliver([peer], str(last).encode(), "broadcast", last)
    deliver([peer], str(last + 1).encode(), "broadcast", last + 1)
    assert [int(f) for f in ws.sent][-1] == last + 1 and len(ws.sent) == last + 1 - 4
    assert peer.gates is None
