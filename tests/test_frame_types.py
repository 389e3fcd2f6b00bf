"""Custom frame types (issue 24, item 4): `ws.broadcast(..., type="typing")` and
`ws.send(..., type=...)` put frames of the app's own type on the wire, to a room, to
everyone or to one client id, under a real gunicorn; the server's own types are refused.

gunicorn serves `make_app()` of this very file (`--pythonpath tests`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import Server, make_token, recv_json, recv_until, ws_connect


def make_app() -> Any:
    """An app whose chat has a `typing` frame (to a room), `wave` (to everyone) and `poke` (to one client id)."""
    from flask import Flask

    from wsapp import Connection, FrameError, WSApp, site

    app = Flask(__name__)
    ws = WSApp(app)
    app.register_blueprint(site.blueprint(ws))

    @ws.on("typing")
    def typing(conn: Connection, frame: dict[str, Any]) -> int:
        room = frame.get("room")
        if not isinstance(room, str) or room not in conn.rooms:
            raise FrameError("not_in_room", "join the room first")
        return ws.broadcast({"typing": conn.client_id}, room=room, sender=conn.client_id, type="typing")

    @ws.on("wave")
    def wave(conn: Connection, frame: dict[str, Any]) -> int:
        return ws.broadcast("hello", sender=conn.client_id, type="wave")

    @ws.on("poke")
    def poke(conn: Connection, frame: dict[str, Any]) -> int:
        try:
            return ws.send(str(frame.get("to")), "poke", sender=conn.client_id, type=frame.get("as", "poke"))
        except ValueError as err:
            raise FrameError("bad_type", str(err)) from None

    return app


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    server = Server(app="test_frame_types:make_app()", args=("--pythonpath", "tests"),
                    env={"WSAPP_RATE_LIMIT": "0"}).start()  # fmt: skip
    yield server
    server.stop()


def chat(server: Server, cid: str) -> Any:
    ws = ws_connect(server, "/ws/chat", make_token(cid))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def test_a_handler_sends_frames_of_its_own_type_to_a_room_everyone_and_one_client(srv: Server) -> None:
    alice, bob, carol = chat(srv, "alice"), chat(srv, "bob"), chat(srv, "carol")
    for ws in (alice, bob):
        ws.send(json.dumps({"type": "join", "room": "r1", "id": "j"}))
        recv_until(ws, lambda m: m.get("id") == "j")
    alice.send(json.dumps({"type": "typing", "room": "r1", "id": 1}))
    got = recv_until(bob, lambda m: m["type"] != "presence")
    assert got["type"] == "typing" and got["room"] == "r1" and got["from"] == "alice"
    assert got["data"] == {"typing": "alice"} and isinstance(got["ts"], float)
    assert "offset" not in got  # live only: not kept, no position
    assert recv_until(alice, lambda m: m.get("id") == 1) == {"type": "ack", "id": 1, "delivered": 2}

    bob.send(json.dumps({"type": "wave"}))
    for ws in (alice, bob, carol):
        frame = recv_until(ws, lambda m: m["type"] == "wave")
        assert frame["from"] == "bob" and frame["data"] == "hello"

    carol.send(json.dumps({"type": "poke", "to": "alice", "id": 2}))
    frame = recv_until(alice, lambda m: m["type"] == "poke")
    assert frame == {**frame, "from": "carol", "to": "alice", "data": "poke"}
    assert recv_until(carol, lambda m: m.get("id") == 2)["delivered"] == 1
    for ws in (alice, bob, carol):
        ws.close()


@pytest.mark.parametrize("bad", ["ack", "error", "welcome", "presence", "", "x" * 65])
def test_a_type_the_server_sends_itself_or_a_bad_name_is_refused(srv: Server, bad: str) -> None:
    carol, alice = chat(srv, "carol"), chat(srv, "alice")
    carol.send(json.dumps({"type": "poke", "to": "alice", "as": bad, "id": 3}))
    err = recv_until(carol, lambda m: m.get("id") == 3)
    assert err["type"] == "error" and err["code"] == "bad_type"
    carol.close()
    alice.close()


def test_check_type_unit() -> None:
    from wsapp.hub import SERVER_TYPES, check_type

    assert check_type("typing") == "typing"
    for t in SERVER_TYPES:
        with pytest.raises(ValueError):
            check_type(t)
    with pytest.raises(ValueError):
        check_type(3)
