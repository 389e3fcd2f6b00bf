"""/ws/chat: every frame type, errors that keep the connection open, rooms and presence."""

from __future__ import annotations

import json

from helpers import Server, chat_client, make_token, read_close, recv_json, recv_until, ws_connect


def send(ws, **frame) -> None:  # type: ignore[no-untyped-def]
    ws.send(json.dumps(frame))


def test_welcome_names_client_and_connection(server: Server) -> None:
    ws = ws_connect(server, "/ws/chat", make_token("wel"))
    welcome = recv_json(ws)
    assert welcome["type"] == "welcome" and welcome["client_id"] == "wel" and welcome["conn_id"]
    ws.close()


def test_broadcast_reaches_everyone_with_from_from_the_token(server: Server) -> None:
    a, b = chat_client(server, "b-alice"), chat_client(server, "b-bob")
    send(a, type="broadcast", data={"text": "hi"}, id="m1", **{"from": "forged"})
    for ws in (a, b):
        msg = recv_until(ws, lambda m: m["type"] == "broadcast")
        assert msg["from"] == "b-alice" and msg["data"] == {"text": "hi"} and isinstance(msg["ts"], float)
    ack = recv_until(a, lambda m: m["type"] == "ack")
    assert ack["id"] == "m1" and ack["delivered"] >= 2
    a.close(), b.close()


def test_direct_reaches_only_its_target(server: Server) -> None:
    a, b, c = chat_client(server, "d-a"), chat_client(server, "d-b"), chat_client(server, "d-c")
    send(a, type="direct", to="d-b", data="psst", id=1)
    msg = recv_json(b)
    assert msg == {"type": "direct", "from": "d-a", "to": "d-b", "data": "psst", "ts": msg["ts"],
                   "offset": 1, "epoch": msg["epoch"]}  # fmt: skip
    assert recv_json(a) == {"type": "ack", "id": 1, "delivered": 1}
    send(c, type="broadcast", data="marker")
    assert recv_json(b)["data"] == "marker"  # b got nothing else in between
    for ws in (a, b, c):
        ws.close()


def test_one_client_two_connections_both_get_a_direct(server: Server) -> None:
    a = chat_client(server, "two-sender")
    b1, b2 = chat_client(server, "two"), chat_client(server, "two")
    send(a, type="direct", to="two", data="both", id="x")
    assert recv_json(b1)["data"] == "both" and recv_json(b2)["data"] == "both"
    assert recv_json(a)["delivered"] == 2
    for ws in (a, b1, b2):
        ws.close()


def test_direct_to_someone_not_connected(server: Server) -> None:
    a = chat_client(server, "lonely")
    send(a, type="direct", to="nobody-here", data=1, id="n")
    err = recv_json(a)
    assert err["type"] == "error" and err["code"] == "not_connected" and err["id"] == "n"
    a.close()


def test_ack_only_for_frames_with_an_id(server: Server) -> None:
    a = chat_client(server, "noid")
    send(a, type="join", room="quiet")
    assert recv_json(a)["type"] == "joined"
    send(a, type="room", room="quiet", data="x")
    assert recv_json(a)["type"] == "room"
    send(a, type="leave", room="quiet", id="L")
    assert recv_json(a) == {"type": "ack", "id": "L", "delivered": 0}
    a.close()


def test_rooms_joined_members_presence_and_room_messages(server: Server) -> None:
    a, b, out = chat_client(server, "r-a"), chat_client(server, "r-b"), chat_client(server, "r-out")
    send(a, type="join", room="lobby", id="j1")
    assert recv_json(a) == {"type": "joined", "room": "lobby", "members": ["r-a"], "offset": 0, "epoch": ""}
    assert recv_json(a) == {"type": "ack", "id": "j1", "delivered": 0}
    send(b, type="join", room="lobby")
    assert recv_json(b) == {"type": "joined", "room": "lobby", "members": ["r-a", "r-b"], "offset": 0, "epoch": ""}
    assert recv_json(a) == {"type": "presence", "room": "lobby", "event": "join", "client_id": "r-b"}
    send(b, type="room", room="lobby", data="hello room", id="rm")
    for ws in (a, b):
        msg = recv_until(ws, lambda m: m["type"] == "room")
        assert (msg["room"], msg["from"], msg["data"]) == ("lobby", "r-b", "hello room")
    assert recv_until(b, lambda m: m["type"] == "ack")["delivered"] == 2
    send(out, type="room", room="lobby", data="not a member", id="o")
    assert recv_json(out)["code"] == "not_in_room"
    send(b, type="leave", room="lobby")
    assert recv_json(a) == {"type": "presence", "room": "lobby", "event": "leave", "client_id": "r-b"}
    b.close()
    send(a, type="broadcast", data="only-after")
    assert recv_until(out, lambda m: m["type"] == "broadcast")["data"] == "only-after"  # out saw no presence
    a.close(), out.close()


def test_presence_leave_only_when_last_connection_in_room_goes(server: Server) -> None:
    a = chat_client(server, "p-a")
    b1, b2 = chat_client(server, "p-b"), chat_client(server, "p-b")
    send(a, type="join", room="pr")
    recv_json(a)
    send(b1, type="join", room="pr")
    recv_json(b1)
    assert recv_json(a)["event"] == "join"
    send(b2, type="join", room="pr")
    assert recv_json(b2)["members"] == ["p-a", "p-b"]
    b1.close()
    send(a, type="broadcast", data="probe")
    assert recv_json(a)["type"] == "broadcast"  # no leave while b2 is still in the room
    b2.close()
    assert recv_until(a, lambda m: m["type"] == "presence") == {
        "type": "presence",
        "room": "pr",
        "event": "leave",
        "client_id": "p-b",
    }
    a.close()


def test_bad_frames_get_errors_and_the_connection_stays_open(server: Server) -> None:
    a = chat_client(server, "bad")
    cases = [
        ("{not json", "bad_json"),
        ('"just a string"', "bad_json"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"type":"direct","data":1,"id":"q"}', "missing_field"),
        ('{"type":"join"}', "missing_field"),
    ]
    for raw, code in cases:
        a.send(raw)
        err = recv_json(a)
        assert err["type"] == "error" and err["code"] == code and err["message"]
        assert err.get("id") == ("q" if '"id"' in raw else None)
    send(a, type="broadcast", data="still here", id="ok")
    assert recv_until(a, lambda m: m["type"] == "ack")["id"] == "ok"
    a.close()


def test_binary_frame_on_chat_closes_1003_and_others_are_fine(server: Server) -> None:
    a, b = chat_client(server, "bin-a"), chat_client(server, "bin-b")
    a.send_binary(b"\x00\x01")
    assert read_close(a)[0] == 1003
    send(b, type="broadcast", data="fine", id=1)
    assert recv_until(b, lambda m: m["type"] == "ack")["delivered"] >= 1
    b.close()


def test_invalid_utf8_closes_1007_and_others_are_fine(server: Server) -> None:
    import websocket

    a, b = chat_client(server, "u8-a"), chat_client(server, "u8-b")
    a.send_frame(websocket.ABNF.create_frame(b"\xff\xfe", websocket.ABNF.OPCODE_TEXT))
    assert read_close(a)[0] == 1007
    send(b, type="broadcast", data="fine")
    assert recv_json(b)["data"] == "fine"
    b.close()


BAD_INPUT = [
    ("[" * 100_000, "bad_json"),  # deeply nested: the decoder's recursion
    ('{"type":"broadcast","data":' + "[" * 100 + "]" * 100 + "}", "bad_json"),  # deeper than 64
    ('{"type":"broadcast","data":1e400}', "bad_json"),  # infinity: not JSON the server could send
    ('{"type":"broadcast","data":-1e400,"id":"inf"}', "bad_json"),
    ('{"type":"broadcast","data":NaN}', "bad_json"),
    ('{"type":"broadcast","data":"\\ud800"}', "bad_json"),  # lone surrogates, anywhere
    ('{"type":"join","room":"\\ud800"}', "bad_json"),
    ('{"type":"direct","to":"\\udfff","data":1}', "bad_json"),
    ('{"type":"broadcast","data":{"\\udc00":[1]}}', "bad_json"),
    ('{"type":["broadcast"],"data":1,"id":"t"}', "unknown_type"),  # type of the wrong kind
    ('{"type":{"a":1},"data":1}', "unknown_type"),
    ('{"type":5,"data":1}', "unknown_type"),
    ('{"type":null,"data":1}', "unknown_type"),
    ("[1,2]", "bad_json"),  # not an object
    ('"a string"', "bad_json"),
    ("42", "bad_json"),
    ("null", "bad_json"),
]


def test_bad_input_gets_an_error_frame_never_1011_nor_a_traceback(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0", WSAPP_MAX_MESSAGE_BYTES="262144")
    a, watcher = chat_client(srv, "attacker"), chat_client(srv, "watcher")
    send(watcher, type="join", room="lobby", id="w")
    recv_until(watcher, lambda m: m["type"] == "ack")
    lines_before = len(srv.log().splitlines())
    for raw, code in BAD_INPUT:
        a.send(raw)
        err = recv_json(a)
        assert (err["type"], err["code"]) == ("error", code), (raw[:60], err)
        assert err["message"] and len(err["message"]) < 300
        assert err.get("id") == ("t" if code == "unknown_type" and '"id":"t"' in raw else None)
    send(a, type="join", room="lobby", id="ok")  # the connection is still open and works
    assert recv_json(a)["members"] == ["attacker", "watcher"]
    assert recv_until(a, lambda m: m["type"] == "ack")["id"] == "ok"
    assert recv_json(watcher)["client_id"] == "attacker"  # nothing the bad frames did reached the room
    log = srv.log()
    assert len(log.splitlines()) - lines_before <= len(BAD_INPUT)  # at most one line per bad frame
    assert "Traceback" not in log and "1011" not in log
    a.close(), watcher.close()


def test_a_repeated_join_does_not_resend_the_member_list(server: Server) -> None:
    a, b = chat_client(server, "rj-a"), chat_client(server, "rj-b")
    send(b, type="join", room="rejoin")
    recv_json(b)
    send(a, type="join", room="rejoin", id=1)
    assert recv_json(a) == {"type": "joined", "room": "rejoin", "members": ["rj-a", "rj-b"], "offset": 0, "epoch": ""}
    assert recv_json(a) == {"type": "ack", "id": 1, "delivered": 0}
    assert recv_json(b)["event"] == "join"
    for i in range(3):
        send(a, type="join", room="rejoin", id=f"again-{i}")
        assert recv_json(a) == {"type": "joined", "room": "rejoin"}  # no members: nothing changed
        assert recv_json(a) == {"type": "ack", "id": f"again-{i}", "delivered": 0}
    send(a, type="broadcast", data="probe")
    assert recv_json(b)["data"] == "probe"  # b heard no second presence join
    send(a, type="leave", room="rejoin")
    assert recv_json(b) == {"type": "presence", "room": "rejoin", "event": "leave", "client_id": "rj-a"}
    a.close(), b.close()


def test_rooms_per_connection_are_capped(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0", WSAPP_MAX_ROOMS="3")
    a, b = chat_client(srv, "cap"), chat_client(srv, "cap")
    for i in range(3):
        send(a, type="join", room=f"r{i}")
        assert recv_json(a)["type"] == "joined"
    send(a, type="join", room="r3", id="over")
    err = recv_json(a)
    assert (err["type"], err["code"], err["id"]) == ("error", "too_many_rooms", "over")
    assert "3 rooms" in err["message"] and "WSAPP_MAX_ROOMS" in err["message"]
    send(a, type="join", room="r1", id="held")  # a room it is in is not a new room
    assert recv_json(a) == {"type": "joined", "room": "r1"}
    assert recv_json(a)["id"] == "held"
    send(b, type="join", room="r3", id="other")  # the cap is per connection
    assert recv_json(b) == {"type": "joined", "room": "r3", "members": ["cap"], "offset": 0, "epoch": ""}
    send(a, type="leave", room="r0")
    send(a, type="join", room="r3", id="after-leave")
    assert recv_json(a) == {"type": "joined", "room": "r3", "members": ["cap"], "offset": 0, "epoch": ""}
    send(a, type="room", room="r0", data="x", id="gone")
    assert recv_until(a, lambda m: m.get("id") == "gone")["code"] == "not_in_room"
    a.close(), b.close()
