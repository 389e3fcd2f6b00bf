"""Server-side subscriptions (issue 20, item 4): `ws.join` / `ws.leave` and
`POST /api/rooms/<room>/join|leave` act on every connection of a client id on every node,
with the frames a chat `join` gets; `WSAPP_AUTOJOIN_CLAIM` joins a token's rooms at
connect under the room rule. Real gunicorn: one node, two nodes on one Redis, two nodes
on a three-primary Redis Cluster.

The app served here (`create_app`) is the shipped one plus a room rule (rooms starting
`vip` are refused to clients) and two routes that call the Python API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import RedisProcess, Server, http, make_token, recv_json, recv_until, ws_connect

ADMIN = make_token("ops", admin=True)
MAX_ROOMS = 3
ENV = {"WSAPP_RATE_LIMIT": "0", "WSAPP_API_RATE_LIMIT": "0", "WSAPP_MAX_ROOMS": str(MAX_ROOMS),
       "WSAPP_AUTOJOIN_CLAIM": "autojoin"}  # fmt: skip
APP = "test_server_join:create_app()"
ARGS = ("--pythonpath", "tests")


def create_app() -> Any:
    """The shipped app's parts, a room rule, and `ws.join`/`ws.leave`/`ws.member_info` over HTTP."""
    from flask import Flask, jsonify, request

    from wsapp import WSApp, site

    app = Flask("server_join_app")
    site.configure_logging(app)
    ws = WSApp(app)
    site.init_service(app, ws)
    app.register_blueprint(site.blueprint(ws))

    @ws.route("/ws/echo")
    def echo(conn: Any) -> None:
        for message in conn:
            conn.send(message)

    @ws.authorize_join
    def rule(identity: Any, room: str) -> bool:
        return not room.startswith("vip")

    @app.post("/t/subscription")
    def subscription() -> Any:
        body = request.get_json()
        try:
            if body["op"] == "join":
                return jsonify(n=ws.join(body["client_id"], body["room"]))
            return jsonify(n=ws.leave(body["client_id"], body["room"]))
        except ValueError as err:
            return jsonify(error="bad_request", message=str(err)), 400

    @app.get("/t/info")
    def info() -> Any:
        return jsonify(ws.member_info(request.args["room"]))

    return app


def start(env: dict[str, str]) -> Server:
    return Server(env=env, app=APP, args=ARGS).start()


@pytest.fixture(scope="module", params=["memory", "redis"])
def nodes(request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    """One server in-process; two nodes on one Redis."""
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


def chat(server: Server, cid: str, query: str = "", **claims: Any) -> Any:
    ws = ws_connect(server, "/ws/chat" + query, make_token(cid, **claims))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def join(ws: Any, room: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "join", "room": room, "id": "j-" + room}))
    answer = recv_until(ws, lambda m: m["type"] in ("joined", "error"))
    if answer["type"] == "joined":
        recv_until(ws, lambda m: m.get("id") == "j-" + room)
    return answer


def api(server: Server, op: str, room: str, client_id: Any, token: str = ADMIN) -> Any:
    return http(server.url, "POST", f"/api/rooms/{room}/{op}", {"client_id": client_id}, token)


def py(server: Server, op: str, room: Any, client_id: Any) -> Any:
    return http(server.url, "POST", "/t/subscription", {"op": op, "room": room, "client_id": client_id})


def until_marker(ws: Any, room: str, marker: str) -> list[dict[str, Any]]:
    """Every frame before the room message whose data is `marker` (published after the frames looked for)."""
    out = []
    while not ((m := recv_json(ws))["type"] == "room" and m["data"] == marker):
        out.append(m)
    return out


def mark(server: Server, room: str, marker: str) -> None:
    got = http(server.url, "POST", "/api/broadcast", {"room": room, "data": marker}, ADMIN)
    assert got.status == 200


def test_a_join_reaches_every_connection_of_the_client_on_every_node_and_others_hear_presence_once(
    nodes: list[Server],
) -> None:
    a, b = nodes[0], nodes[-1]
    bob = chat(a, "bob")
    join(bob, "r1")
    alices = [chat(b, "alice"), chat(b, "alice"), chat(a, "alice")]
    echo = ws_connect(a, "/ws/echo", make_token("alice"))  # not a chat connection: no rooms there
    got = api(a, "join", "r1", "alice")
    assert got.status == 200 and got.body == {"joined": 3}
    for ws in alices:
        joined = recv_until(ws, lambda m: m["type"] == "joined")
        assert joined["room"] == "r1" and joined["members"] == ["alice", "bob"] and "offset" in joined
        assert "info" not in joined  # WSAPP_PRESENCE_CLAIMS is empty here
    mark(a, "r1", "after-join")
    seen = until_marker(bob, "r1", "after-join")
    assert [m for m in seen if m["type"] == "presence"] == [
        {"type": "presence", "room": "r1", "event": "join", "client_id": "alice"}
    ]
    for ws in alices:  # in the room now: they get its messages, and may send to it
        assert recv_until(ws, lambda m: m["type"] == "room")["data"] == "after-join"
    alices[0].send(json.dumps({"type": "room", "room": "r1", "data": "hi", "id": "s"}))
    assert recv_until(alices[0], lambda m: m.get("id") == "s")["type"] == "ack"
    members = http(b.url, "GET", "/api/rooms/r1", token=ADMIN).body["members"]
    assert members == ["alice", "bob"]
    again = api(b, "join", "r1", "alice")  # already in: reached, with the repeated-join answer
    assert again.body == {"joined": 3}
    for ws in alices:
        assert recv_until(ws, lambda m: m["type"] == "joined") == {"type": "joined", "room": "r1"}
    for ws in (*alices, bob, echo):
        ws.close()


def test_leave_takes_every_connection_out_with_a_left_frame_and_presence_leave_once(nodes: list[Server]) -> None:
    a, b = nodes[0], nodes[-1]
    carol = chat(a, "carol")
    join(carol, "r2")
    daves = [chat(a, "dave"), chat(b, "dave")]
    for ws in daves:
        join(ws, "r2")
    recv_until(carol, lambda m: m["type"] == "presence" and m["client_id"] == "dave")
    got = api(b, "leave", "r2", "dave")
    assert got.status == 200 and got.body == {"left": 2}
    for ws in daves:
        left = recv_until(ws, lambda m: m["type"] == "left")
        assert left["room"] == "r2" and left["code"] == "forbidden"
        ws.send(json.dumps({"type": "room", "room": "r2", "data": "x", "id": "s"}))
        assert recv_until(ws, lambda m: m.get("id") == "s")["code"] == "not_in_room"
    mark(a, "r2", "after-leave")
    seen = until_marker(carol, "r2", "after-leave")
    assert [m for m in seen if m["type"] == "presence"] == [
        {"type": "presence", "room": "r2", "event": "leave", "client_id": "dave"}
    ]
    assert http(a.url, "GET", "/api/rooms/r2", token=ADMIN).body["members"] == ["carol"]
    assert api(a, "leave", "r2", "dave").body == {"left": 0}  # in it nowhere now
    assert api(a, "leave", "r2", "nobody").body == {"left": 0}
    assert api(a, "join", "r2", "nobody").body == {"joined": 0}
    for ws in (*daves, carol):
        ws.close()


def test_the_python_api_skips_the_room_rule_and_leave_undoes_it(nodes: list[Server]) -> None:
    a, b = nodes[0], nodes[-1]
    erin = chat(b, "erin")
    assert join(erin, "vip-1")["code"] == "forbidden"  # the room rule refuses the client itself
    got = py(a, "join", "vip-1", "erin")
    assert got.status == 200 and got.body == {"n": 1}
    joined = recv_until(erin, lambda m: m["type"] == "joined")
    assert joined["room"] == "vip-1" and joined["members"] == ["erin"]
    assert py(a, "leave", "vip-1", "erin").body == {"n": 1}
    assert recv_until(erin, lambda m: m["type"] == "left")["room"] == "vip-1"
    erin.close()


@pytest.mark.parametrize(
    ("room", "client_id"), [("r" * 129, "x"), ("", "x"), ("r", ""), ("r", 5), (["r"], "x"), ("r", "c" * 257)]
)
def test_the_python_api_refuses_bad_names_with_value_error(nodes: list[Server], room: Any, client_id: Any) -> None:
    for op in ("join", "leave"):
        got = py(nodes[0], op, room, client_id)
        assert got.status == 400 and got.body["error"] == "bad_request"


def test_a_full_connection_gets_the_error_a_join_gets_and_is_not_counted(nodes: list[Server]) -> None:
    a, b = nodes[0], nodes[-1]
    full, free = chat(b, "frank"), chat(a, "frank")
    for i in range(MAX_ROOMS):
        assert join(full, f"f{i}")["type"] == "joined"
    got = api(a, "join", "f-extra", "frank")
    # locally counted exactly; another node's connections are counted as what it holds (as disconnect)
    assert got.status == 200 and got.body == {"joined": 1 if len(nodes) == 1 else 2}
    error = recv_until(full, lambda m: m["type"] in ("error", "joined"))
    assert error == {"type": "error", "code": "too_many_rooms", "message": f"this connection is in {MAX_ROOMS} rooms, "
                     "the most allowed (WSAPP_MAX_ROOMS): leave one first"}  # fmt: skip
    assert join(full, "f-own")["message"] == error["message"]  # the very frame its own join gets
    assert recv_until(free, lambda m: m["type"] == "joined")["room"] == "f-extra"
    assert http(a.url, "GET", "/api/rooms/f-extra", token=ADMIN).body["count"] == 1
    full.send(json.dumps({"type": "room", "room": "f-extra", "data": 1, "id": "s"}))
    assert recv_until(full, lambda m: m.get("id") == "s")["code"] == "not_in_room"
    for ws in (full, free):
        ws.close()


@pytest.mark.parametrize(
    ("path", "body", "token", "status"),
    [
        ("/api/rooms/r/join", {"client_id": "x"}, make_token("x"), 403),
        ("/api/rooms/r/join", {}, ADMIN, 400),
        ("/api/rooms/r/join", {"client_id": 7}, ADMIN, 400),
        ("/api/rooms/r/leave", {"client_id": ""}, ADMIN, 400),
        ("/api/rooms/r/join", {"client_id": "c" * 257}, ADMIN, 400),
        ("/api/rooms/" + "r" * 129 + "/join", {"client_id": "x"}, ADMIN, 400),
        ("/api/rooms/r/join", ["client_id"], ADMIN, 400),
        ("/api/rooms/r/leave", None, ADMIN, 400),
        ("/api/rooms/r/join", {"client_id": "x"}, None, 401),
    ],
)
def test_the_http_routes_answer_bad_requests_with_4xx_json(
    nodes: list[Server], path: str, body: Any, token: str | None, status: int
) -> None:
    got = http(nodes[0].url, "POST", path, body, token)
    assert got.status == status and isinstance(got.body, dict) and "error" in got.body


def test_a_room_whose_name_ends_in_join_is_still_read_by_get(nodes: list[Server]) -> None:
    got = http(nodes[0].url, "GET", "/api/rooms/a/join", token=ADMIN)
    assert got.status == 200 and got.body["room"] == "a/join"
    assert http(nodes[0].url, "POST", "/api/rooms/a/join/join", {"client_id": "x"}, ADMIN).body == {"joined": 0}


def test_a_resume_keeps_a_server_joined_room(nodes: list[Server]) -> None:
    """The `joined` frame is what a client tracks rooms from: its resume lists the room."""
    from wsapp.client import ResumeState

    a, b = nodes[0], nodes[-1]
    gina = chat(b, "gina")
    assert api(a, "join", "r3", "gina").body == {"joined": 1}
    joined = recv_until(gina, lambda m: m["type"] == "joined")
    state = ResumeState("/nonexistent-dir/state.json")
    state.save = lambda: None  # type: ignore[method-assign]
    state.seen(joined)
    assert state.rooms == {"r3"} and state.frame()["rooms"] == {"r3": {"offset": joined["offset"],
                                                                       "epoch": joined["epoch"]}}  # fmt: skip
    gina.close()
    mark(a, "r3", "while-away")
    back = chat(a, "gina", "?resume=1")
    back.send(json.dumps({**state.frame(), "id": "r"}))
    replayed = recv_until(back, lambda m: m["type"] == "room")
    assert replayed["data"] == "while-away"
    resumed = recv_until(back, lambda m: m["type"] == "resumed")
    assert resumed["rooms"]["r3"]["recovered"] is True and resumed["rooms"]["r3"]["replayed"] == 1
    mark(b, "r3", "live")
    assert recv_until(back, lambda m: m["type"] == "room")["data"] == "live"
    back.close()


def test_autojoin_joins_the_claims_rooms_after_welcome_under_the_room_rule(nodes: list[Server]) -> None:
    a = nodes[-1]
    watcher = chat(nodes[0], "watcher")
    join(watcher, "lobby")
    hank = ws_connect(a, "/ws/chat", make_token("hank", autojoin=["lobby", "vip-x", "side"]))
    frames = [recv_json(hank) for _ in range(4)]
    assert frames[0]["type"] == "welcome"
    assert frames[1]["type"] == "joined" and frames[1]["room"] == "lobby"
    assert frames[1]["members"] == ["hank", "watcher"] and "offset" in frames[1]
    assert frames[2] == {"type": "error", "code": "forbidden", "message": "you may not join 'vip-x'"}
    assert frames[3]["type"] == "joined" and frames[3]["room"] == "side"
    assert recv_until(watcher, lambda m: m["type"] == "presence")["client_id"] == "hank"
    hank.close()
    watcher.close()


def test_autojoin_skips_entries_that_are_not_room_names_with_one_error(nodes: list[Server]) -> None:
    ws = ws_connect(nodes[0], "/ws/chat", make_token("hal", autojoin=[5, "ok", "r" * 129]))
    assert recv_json(ws)["type"] == "welcome"
    assert recv_json(ws)["room"] == "ok"
    error = recv_json(ws)
    assert error["type"] == "error" and error["code"] == "missing_field" and "'autojoin'" in error["message"]
    assert join(ws, "after")["type"] == "joined"  # no further error: one for all the bad entries
    ws.close()


@pytest.mark.parametrize("claim", [{"a": 1}, 7, True])
def test_autojoin_with_a_claim_that_is_not_a_list_says_so_and_the_connection_goes_on(
    nodes: list[Server], claim: Any
) -> None:
    ivy = ws_connect(nodes[0], "/ws/chat", make_token("ivy", autojoin=claim))
    assert recv_json(ivy)["type"] == "welcome"
    error = recv_json(ivy)
    assert error["type"] == "error" and error["code"] == "missing_field" and "'autojoin'" in error["message"]
    assert join(ivy, "after")["type"] == "joined"
    ivy.close()


def test_autojoin_a_string_is_one_room_and_the_rooms_limit_holds(nodes: list[Server]) -> None:
    one = ws_connect(nodes[0], "/ws/chat", make_token("jo", autojoin="solo"))
    assert recv_json(one)["type"] == "welcome"
    assert recv_json(one)["room"] == "solo"
    one.close()
    many = [f"m{i}" for i in range(MAX_ROOMS + 2)]
    ws = ws_connect(nodes[0], "/ws/chat", make_token("kim", autojoin=many))
    assert recv_json(ws)["type"] == "welcome"
    assert recv_json(ws)["code"] == "too_many_rooms"  # the claim is longer than the limit: said first
    rooms = [recv_json(ws)["room"] for _ in range(MAX_ROOMS)]
    assert rooms == many[:MAX_ROOMS]
    assert join(ws, "one-more")["code"] == "too_many_rooms"
    ws.close()
    # only the first WSAPP_MAX_ROOMS entries are read, joined or refused: a fourth is not tried
    refused = ws_connect(nodes[0], "/ws/chat", make_token("kit", autojoin=["vip-a", "vip-b", "vip-c", "d"]))
    frames = [recv_json(refused) for _ in range(5)]
    assert [f.get("code") for f in frames[1:]] == ["too_many_rooms", "forbidden", "forbidden", "forbidden"]
    assert join(refused, "probe")["room"] == "probe"  # the next frame answers the probe: "d" was not joined
    assert sorted(http(nodes[0].url, "GET", "/api/rooms/d", token=ADMIN).body["members"]) == []
    refused.close()


def test_autojoin_is_off_for_a_resuming_connection_whose_resume_joins_its_rooms(nodes: list[Server]) -> None:
    ws = ws_connect(nodes[0], "/ws/chat?resume=1", make_token("lee", autojoin=["ra"]))
    assert recv_json(ws)["type"] == "welcome"
    ws.send(json.dumps({"type": "resume", "id": "r", "rooms": {"rb": {"offset": 0, "epoch": ""}}}))
    resumed = recv_until(ws, lambda m: m["type"] in ("resumed", "joined"))
    assert resumed["type"] == "resumed" and list(resumed["rooms"]) == ["rb"]
    ws.close()


def test_on_a_three_primary_cluster_a_join_and_leave_reach_both_nodes() -> None:
    from helpers import RedisClusterProcess

    cluster = RedisClusterProcess()
    cluster.start()
    env = {**ENV, "WSAPP_REDIS_URL": cluster.url, "WSAPP_WORKERS": "1"}
    a = b = None
    try:
        a, b = start(env), start(env)
        watcher = chat(a, "watcher")
        join(watcher, "c1")
        mos = [chat(a, "mo"), chat(b, "mo")]
        assert py(a, "join", "c1", "mo").body == {"n": 2}
        for ws in mos:
            assert recv_until(ws, lambda m: m["type"] == "joined")["members"] == ["mo", "watcher"]
        mark(b, "c1", "in")
        assert [m["event"] for m in until_marker(watcher, "c1", "in") if m["type"] == "presence"] == ["join"]
        assert api(b, "leave", "c1", "mo").body == {"left": 2}
        for ws in mos:
            assert recv_until(ws, lambda m: m["type"] == "left")["room"] == "c1"
        mark(a, "c1", "out")
        assert [m["event"] for m in until_marker(watcher, "c1", "out") if m["type"] == "presence"] == ["leave"]
        for ws in (*mos, watcher):
            ws.close()
    finally:
        for s in (a, b):
            if s is not None:
                s.stop()
        cluster.stop()
