"""Streams an app can build on (issue 20): a publish answers its position, history and a
room's state over HTTP (bounded), the load-then-subscribe race closed; in-process and on
Redis (two nodes where cluster-wide matters), under real gunicorn.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import RedisProcess, Server, http, make_token, recv_json, recv_until, ws_connect

SIZE = 5  # WSAPP_HISTORY_SIZE here
READ_LIMIT = 3  # WSAPP_HISTORY_READ_LIMIT
MEMBERS = 2  # WSAPP_MEMBERS_LIMIT
ADMIN = make_token("ops", admin=True)
ENV = {"WSAPP_RATE_LIMIT": "0", "WSAPP_API_RATE_LIMIT": "0", "WSAPP_HISTORY_SIZE": str(SIZE),
       "WSAPP_HISTORY_READ_LIMIT": str(READ_LIMIT), "WSAPP_MEMBERS_LIMIT": str(MEMBERS)}  # fmt: skip


@pytest.fixture(scope="module", params=["memory", "redis"])
def nodes(request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    """One server in-process; two nodes on one Redis."""
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


def chat(server: Server, cid: str, path: str = "/ws/chat") -> Any:
    ws = ws_connect(server, path, make_token(cid))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def join(ws: Any, room: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "join", "room": room, "id": "j-" + room}))
    joined = recv_until(ws, lambda m: m["type"] == "joined")
    recv_until(ws, lambda m: m.get("id") == "j-" + room)
    return joined


def post(server: Server, room: str, data: Any, **headers: str) -> Any:
    return http(server.url, "POST", "/api/broadcast", {"room": room, "data": data}, ADMIN, headers=headers)


def test_a_publish_answers_delivered_stream_offset_epoch_and_receivers_see_the_same(nodes: list[Server]) -> None:
    bob = chat(nodes[-1], "bob")
    join(bob, "pos")
    first = post(nodes[0], "pos", 1)
    second = post(nodes[0], "pos", 2)
    assert first.status == 200 and first.body["delivered"] == 1 and first.body["stream"] == "room:pos"
    assert second.body["offset"] == first.body["offset"] + 1 and second.body["epoch"] == first.body["epoch"]
    got = recv_until(bob, lambda m: m["type"] == "room" and m["data"] == 2)
    assert (got["offset"], got["epoch"]) == (second.body["offset"], second.body["epoch"])
    sent = http(nodes[0].url, "POST", "/api/send", {"to": "bob", "data": "d"}, make_token("alice"))
    direct = recv_until(bob, lambda m: m["type"] == "direct")
    assert sent.status == 200 and sent.body["stream"] == "direct:bob"
    assert (sent.body["offset"], sent.body["epoch"]) == (direct["offset"], direct["epoch"])
    bob.close()
    b = http(nodes[0].url, "POST", "/api/broadcast", {"data": "all"}, ADMIN)
    assert b.body["stream"] == "broadcast" and b.body["offset"] >= 1


def history(server: Server, token: str = ADMIN, **q: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in q.items())
    return http(server.url, "GET", "/api/history?" + query, token=token)


def test_history_after_a_position_in_order_bounded_by_the_read_limit(nodes: list[Server]) -> None:
    p = [post(nodes[0], "h1", i).body for i in range(4)]
    epoch = p[0]["epoch"]
    page = history(nodes[-1], room="h1", since=p[0]["offset"], epoch=epoch, limit=100)
    assert page.status == 200 and page.body["recovered"] is True
    # WSAPP_HISTORY_READ_LIMIT caps any limit asked for; the page says there is more
    assert [m["data"] for m in page.body["messages"]] == [1, 2, 3][:READ_LIMIT]
    assert page.body["more"] is False and page.body["offset"] == p[3]["offset"]
    page = history(nodes[-1], room="h1", since=0, epoch="", limit=100)
    assert [m["data"] for m in page.body["messages"]] == [0, 1, 2] and page.body["more"] is True
    page2 = history(nodes[-1], room="h1", since=page.body["offset"], epoch=page.body["epoch"], limit=1)
    assert [m["data"] for m in page2.body["messages"]] == [3] and page2.body["more"] is False
    assert [m["offset"] for m in page.body["messages"]] == [p[0]["offset"], p[1]["offset"], p[2]["offset"]]


def test_history_without_since_is_the_latest_messages_and_the_position_they_end_at(nodes: list[Server]) -> None:
    p = [post(nodes[0], "h3", i).body for i in range(SIZE + 1)]  # the first one trimmed
    page = history(nodes[-1], room="h3", limit=2)
    assert page.body["recovered"] is True and [m["data"] for m in page.body["messages"]] == [SIZE - 1, SIZE]
    assert (page.body["offset"], page.body["epoch"]) == (p[-1]["offset"], p[-1]["epoch"])
    page = history(nodes[-1], room="h3")  # capped at WSAPP_HISTORY_READ_LIMIT
    assert [m["data"] for m in page.body["messages"]] == list(range(SIZE + 1))[-READ_LIMIT:]
    empty = history(nodes[0], room="never").body
    assert empty == {**empty, "recovered": True, "messages": [], "offset": 0, "epoch": ""}


def test_history_says_recovered_false_for_another_epoch_or_a_gap_older_than_the_history(nodes: list[Server]) -> None:
    p = [post(nodes[0], "h2", i).body for i in range(SIZE + 2)]  # the first two are trimmed
    page = history(nodes[0], room="h2", since=p[0]["offset"], epoch=p[0]["epoch"])
    assert page.body["recovered"] is False and page.body["messages"] == []
    assert (page.body["offset"], page.body["epoch"]) == (p[-1]["offset"], p[-1]["epoch"])
    page = history(nodes[0], room="h2", since=p[3]["offset"], epoch="another")
    assert page.body["recovered"] is False and page.body["messages"] == []
    page = history(nodes[0], room="h2", since=p[1]["offset"], epoch=p[1]["epoch"])
    assert page.body["recovered"] is True and page.body["messages"][0]["data"] == 2


def test_history_rights_a_client_reads_its_own_directs_only_admin_reads_any(nodes: list[Server]) -> None:
    carol = chat(nodes[0], "carol")  # the direct stream exists from the first connection
    http(nodes[0].url, "POST", "/api/send", {"to": "carol", "data": "x"}, make_token("dave"))
    own = history(nodes[-1], token=make_token("carol"), to="carol")
    assert own.status == 200 and [m["data"] for m in own.body["messages"]] == ["x"]
    assert history(nodes[0], token=make_token("dave"), to="carol").status == 403
    assert history(nodes[0], token=make_token("carol"), room="h1").status == 403
    assert history(nodes[0], token=make_token("carol"), broadcast=1).status == 403
    assert history(nodes[0], broadcast=1).status == 200
    assert history(nodes[0], token=ADMIN, to="carol").status == 200
    carol.close()


@pytest.mark.parametrize(
    "query",
    ["", "room=a&to=b", "room=a&since=-1", "room=a&since=x", "room=a&limit=1e3", "broadcast=yes",
     "room=" + "r" * 129, "room=a&epoch=" + "e" * 65, "room=a&since=99999999999999999999"],
)  # fmt: skip
def test_history_bad_queries_are_400(nodes: list[Server], query: str) -> None:
    got = http(nodes[0].url, "GET", "/api/history?" + query, token=ADMIN)
    assert got.status == 400 and got.body["error"] == "bad_request"


def test_room_state_lists_members_capped_count_exact_cluster_wide_with_its_position(nodes: list[Server]) -> None:
    conns = [chat(nodes[i % len(nodes)], f"m{i}") for i in range(3)]
    for ws in conns:
        join(ws, "state")
    last = post(nodes[0], "state", "hi").body
    got = http(nodes[-1].url, "GET", "/api/rooms/state", token=ADMIN)
    assert got.status == 200 and got.body["count"] == 3 and len(got.body["members"]) == MEMBERS
    assert got.body["truncated"] is True and set(got.body["members"]) < {"m0", "m1", "m2"}
    assert (got.body["offset"], got.body["epoch"]) == (last["offset"], last["epoch"])
    assert http(nodes[0].url, "GET", "/api/rooms/state", token=make_token("m0")).status == 403
    empty = http(nodes[0].url, "GET", "/api/rooms/nobody-here", token=ADMIN).body
    assert empty == {**empty, "members": [], "count": 0, "offset": 0, "epoch": ""}
    assert http(nodes[0].url, "GET", "/api/rooms/" + "r" * 129, token=ADMIN).status == 400
    for ws in conns:
        ws.close()


def test_load_then_subscribe_from_the_rooms_position_misses_nothing_and_gets_nothing_twice(
    nodes: list[Server],
) -> None:
    """A publisher posts all along; the page reads the room's state (its data and position)
    on one node, then subscribes with `resume` from that position on another: every
    message after the position arrives once, in order."""
    stop = threading.Event()
    published: list[int] = []

    def publisher() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            body = post(nodes[0], "race", i).body
            published.append(body["offset"])
            i += 1

    post(nodes[0], "race", "before")
    t = threading.Thread(target=publisher)
    t.start()
    try:
        while len(published) < 3:
            pass_ = recv_or_wait(published)
            assert pass_
        state = history(nodes[0], room="race", limit=READ_LIMIT).body  # the page's data and position
        assert state["messages"][-1]["offset"] == state["offset"]
        page = ws_connect(nodes[-1], "/ws/chat?resume=1", make_token("page"))
        assert recv_json(page)["type"] == "welcome"
        pos = {"offset": state["offset"], "epoch": state["epoch"]}
        page.send(json.dumps({"type": "resume", "id": "r", "rooms": {"race": pos}}))
        seen: list[int] = []
        resumed = None
        while resumed is None:
            m = recv_json(page)
            if m["type"] == "room":
                seen.append(m["offset"])
            elif m["type"] == "resumed":
                resumed = m
        assert resumed["rooms"]["race"]["recovered"] is True
        target = len(published) + 5
        while len(published) < target:
            m = recv_json(page)
            if m["type"] == "room":
                seen.append(m["offset"])
    finally:
        stop.set()
        t.join(30)
    last = published[-1]
    while not seen or seen[-1] < last:
        m = recv_json(page)
        if m["type"] == "room":
            seen.append(m["offset"])
    assert seen == list(range(state["offset"] + 1, last + 1))
    page.close()


def recv_or_wait(published: list[int], timeout: float = 10) -> bool:
    import time

    deadline = time.monotonic() + timeout
    n = len(published)
    while len(published) == n and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(published) > n or time.monotonic() < deadline
