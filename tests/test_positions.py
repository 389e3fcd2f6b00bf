"""The position of a stream and what a resume from it does (issue 25): each answer that
docs/protocol.md gives, pinned, in-process and through Redis.

- a stream that does not exist stands at {"offset": 0, "epoch": ""} (a new room's
  `joined`, `broadcast` before its first message); a client's direct stream exists from
  its first connection (so messages can be stored for it) and stands at {0, "<epoch>"};
- resuming from {0, ""} replays the stream from its start: recovered when nothing was
  trimmed, else `recovered: false`;
- `replayed` counts every message after the position up to the history read, those
  published while the connection was held before its `resume` frame included;
- history is trimmed exactly at `WSAPP_HISTORY_SIZE`, in Redis as in memory;
- `/api/send` to a client whose only connection is held answers 202 `stored`;
- `WSAPP_JWT_LEEWAY` does not delay the 4401 at `exp`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
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

EMPTY = {"offset": 0, "epoch": ""}
SIZE = 3  # WSAPP_HISTORY_SIZE of the servers here


class Chat:
    def __init__(self, server: Server, client_id: str, resume: bool = False, token: str | None = None) -> None:
        path = "/ws/chat?resume=1" if resume else "/ws/chat"
        self.ws = ws_connect(server, path, token or make_token(client_id))
        self.welcome = recv_json(self.ws)
        assert self.welcome["type"] == "welcome"

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def until(self, pred: Any) -> dict[str, Any]:
        return recv_until(self.ws, pred)


@pytest.fixture(scope="module", params=["memory", "redis"])
def srv(request: pytest.FixtureRequest) -> Iterator[Server]:
    env = {"WSAPP_RATE_LIMIT": "0", "WSAPP_HISTORY_SIZE": str(SIZE), "WSAPP_RESUME_TIMEOUT": "120"}
    if request.param == "redis":
        redis_server: RedisProcess = request.getfixturevalue("redis_server")
        redis_server.client().flushall()
        env |= {"WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1"}
    server = Server(env=env).start()
    yield server
    server.stop()


def post_to_room(alice: Chat, room: str, n: int) -> None:
    alice.send(type="join", room=room, id=f"j-{room}")
    alice.until(lambda m: m.get("id") == f"j-{room}")
    for i in range(n):
        alice.send(type="room", room=room, data=i, id=f"{room}-{i}")
        alice.until(lambda m, i=i: m.get("id") == f"{room}-{i}")


def resume(server: Server, client_id: str, **streams: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A `?resume=1` connection that resumes `streams`: (the message frames before `resumed`, `resumed`)."""
    conn = Chat(server, client_id, resume=True)
    conn.send(type="resume", id="r", **streams)
    frames = []
    while (f := recv_json(conn.ws))["type"] != "resumed":
        frames.append(f)
    conn.ws.close()
    return frames, f


# ---- positions of streams with no message --------------------------------------------------


def test_a_stream_that_does_not_exist_stands_at_0_and_no_epoch_a_direct_stream_exists_from_the_first_connection(
    srv: Server,
) -> None:
    """Runs first in its module: nothing has been broadcast on `srv` yet."""
    ann = Chat(srv, "ann")
    streams = ann.welcome["streams"]
    assert streams["broadcast"] == EMPTY  # no broadcast yet: no stream
    direct = streams["direct"]  # created by this connection, so messages can be stored for ann
    assert direct["offset"] == 0 and isinstance(direct["epoch"], str) and direct["epoch"] != ""
    assert Chat(srv, "ann").welcome["streams"]["direct"] == direct  # the same stream, still empty
    ann.send(type="join", room="never-posted", id=1)
    joined = ann.until(lambda m: m.get("type") == "joined")
    assert (joined["offset"], joined["epoch"]) == (0, "")  # a room's stream begins with its first message
    # from {0, epoch} a resume is exact within that epoch: both directs, recovered
    for data in ("a", "b"):
        assert http(srv.url, "POST", "/api/send", {"to": "ann", "data": data}, token=make_token("x")).status == 200
    frames, resumed = resume(srv, "ann", direct=direct)
    assert [f["data"] for f in frames] == ["a", "b"]
    assert resumed["direct"] == {"recovered": True, "replayed": 2, "offset": 2, "epoch": direct["epoch"]}
    ann.send(type="broadcast", data="first", id=2)
    first = ann.until(lambda m: m.get("type") == "broadcast")
    assert (first["offset"], first["epoch"] != "") == (1, True)
    assert Chat(srv, "ann").welcome["streams"]["broadcast"] == {"offset": 1, "epoch": first["epoch"]}


# ---- resuming from {0, ""}; trimming at WSAPP_HISTORY_SIZE -----------------------------------


def test_resuming_from_the_empty_position_replays_the_stream_from_its_start(srv: Server) -> None:
    alice = Chat(srv, "alice")
    post_to_room(alice, "whole", SIZE)  # every message still kept
    post_to_room(alice, "trimmed", SIZE + 1)  # the first one trimmed
    frames, resumed = resume(srv, "bob", rooms={"whole": EMPTY, "trimmed": EMPTY, "new": EMPTY})
    assert [(f["room"], f["data"], f["offset"]) for f in frames] == [("whole", i, i + 1) for i in range(SIZE)]
    whole, trimmed, new = (resumed["rooms"][r] for r in ("whole", "trimmed", "new"))
    assert (whole["recovered"], whole["replayed"], whole["offset"]) == (True, SIZE, SIZE)
    assert (trimmed["recovered"], trimmed["replayed"], trimmed["offset"]) == (False, 0, SIZE + 1)
    assert (new["recovered"], new["replayed"], new["offset"], new["epoch"]) == (True, 0, 0, "")
    alice.ws.close()


def test_history_is_trimmed_exactly_at_the_history_size(srv: Server) -> None:
    alice = Chat(srv, "alice")
    post_to_room(alice, "exact", SIZE + 2)  # offsets 1..5; kept: 3, 4, 5
    _frames, state = resume(srv, "carol", rooms={"exact": EMPTY})  # not recovered, but the epoch
    epoch = state["rooms"]["exact"]["epoch"]
    # the oldest kept is offset 3: a client that saw 2 recovers 3 messages; one that saw 1 does not
    frames, resumed = resume(srv, "carol", rooms={"exact": {"offset": 2, "epoch": epoch}})
    assert [f["offset"] for f in frames] == [3, 4, 5]
    assert resumed["rooms"]["exact"]["recovered"] is True and resumed["rooms"]["exact"]["replayed"] == SIZE
    frames, resumed = resume(srv, "carol", rooms={"exact": {"offset": 1, "epoch": epoch}})
    assert frames == [] and resumed["rooms"]["exact"]["recovered"] is False
    alice.ws.close()


# ---- replayed, and /api/send to a held connection ----------------------------------------------


def test_replayed_counts_the_missed_messages_and_those_published_while_held(srv: Server) -> None:
    away = Chat(srv, "dora")
    position = away.welcome["streams"]["direct"]
    away.ws.close()
    admin = make_token("ops", admin=True)
    deadline = time.monotonic() + 15
    while any(c["client_id"] == "dora" for c in http(srv.url, "GET", "/api/clients", token=admin).body["clients"]):
        assert time.monotonic() < deadline, "dora's connection was not cleaned up"
        time.sleep(0.05)
    sender = make_token("eve")
    stored = (202, {"delivered": 0, "stored": True})
    for data in ("missed-1",):  # dora is away
        res = http(srv.url, "POST", "/api/send", {"to": "dora", "data": data}, token=sender)
        assert (res.status, delivery(res.body)) == stored
    back = Chat(srv, "dora", resume=True)  # dora's only connection, held until its resume
    for data in ("held-1", "held-2"):  # held: not delivered (it may never resume), stored
        res = http(srv.url, "POST", "/api/send", {"to": "dora", "data": data}, token=sender)
        assert (res.status, delivery(res.body)) == stored
    reader = Reader(back.ws)
    back.send(type="resume", id=1, direct=position)
    got = []
    while (f := reader.next())["type"] != "resumed":
        got.append(f["data"])
    assert got == ["missed-1", "held-1", "held-2"]  # once each, in order (3: within WSAPP_HISTORY_SIZE)
    assert f["direct"] == {"recovered": True, "replayed": 3, "offset": position["offset"] + 3,
                           "epoch": position["epoch"]}  # fmt: skip
    back.ws.close()


# ---- the 4401 at exp ----------------------------------------------------------------------


def test_the_leeway_admits_a_token_just_past_exp_but_the_4401_comes_at_exp(start_server: Any) -> None:
    server = start_server(WSAPP_JWT_LEEWAY="60")
    # exp passed 5 s ago: within the 60 s leeway, so the handshake takes it...
    late = Chat(server, "fred", token=make_token("fred", ttl=-5))
    # ...and the heartbeat closes it at once: its deadline is exp itself, not exp + leeway
    assert read_close(late.ws, timeout=30) == (4401, "token expired")


def test_the_heartbeat_closes_at_exp_whatever_the_leeway() -> None:
    from wsapp.heartbeat import sweep
    from wsapp.metrics import Metrics
    from wsapp.registry import Peer, Registry
    from wsapp.settings import Settings

    class _Ws:
        conn_id, open, ping_sent_at, last_ping_at, queue_depth = "w", True, None, 0.0, 0
        closed: tuple[int, str] | None = None

        def close(self, code: int, reason: str) -> None:
            self.closed = (code, reason)

    registry = Registry(10, 10)
    ws = _Ws()
    registry.add(Peer(ws, "g", False, 1000.0, "", "chat"))  # type: ignore[arg-type]
    settings = Settings(jwt_leeway_s=3600)
    sweep(registry, settings, Metrics(), now=0.0, wall=999.0)
    assert ws.closed is None
    sweep(registry, settings, Metrics(), now=0.0, wall=1000.0)
    assert ws.closed == (4401, "token expired")
