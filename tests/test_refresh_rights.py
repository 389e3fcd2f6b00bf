"""Issue 18, part 4: after a chat `refresh` the connection has the rights of the token now
in force (admin, the rooms claim), not of the handshake's token; each room the new token
may not join is left with a `left` frame (code `forbidden`), before the refresh's ack.
Real gunicorn (gevent worker) with `WSAPP_ROOMS_CLAIM=rooms`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from helpers import Server, chat_client, make_token, recv_json, recv_until


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    server = Server(env={"WSAPP_RATE_LIMIT": "0", "WSAPP_ROOMS_CLAIM": "rooms"}).start()
    yield server
    server.stop()


def send(ws: websocket.WebSocket, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def join(ws: websocket.WebSocket, room: str, msg_id: str) -> dict[str, Any]:
    """A `join`; the answer (`joined` then its ack, or an `error`)."""
    send(ws, type="join", room=room, id=msg_id)
    first = recv_json(ws)
    if first["type"] == "joined":
        assert recv_json(ws) == {"type": "ack", "id": msg_id, "delivered": 0}
    return first


def refresh(ws: websocket.WebSocket, token: str, msg_id: str) -> list[dict[str, Any]]:
    """A `refresh`; every frame up to and including its answer (the ack or an error)."""
    send(ws, type="refresh", token=token, id=msg_id)
    frames = []
    while True:
        msg = recv_json(ws)
        frames.append(msg)
        if msg.get("id") == msg_id:
            return frames


def left(room: str) -> dict[str, Any]:
    return {"type": "left", "room": room, "code": "forbidden", "message": f"the refreshed token may not be in {room!r}"}


def test_an_admin_refreshed_with_a_plain_token_loses_admin_and_its_rooms(srv: Server) -> None:
    admin = chat_client(srv, "rr-admin", admin=True, ttl=60)
    watcher = chat_client(srv, "rr-watch", rooms=["vault"])
    assert join(watcher, "vault", "w1")["type"] == "joined"
    assert join(admin, "vault", "a1")["type"] == "joined"  # admin: any room
    assert join(admin, "lobby", "a2")["type"] == "joined"
    assert recv_until(watcher, lambda m: m["type"] == "presence")["client_id"] == "rr-admin"

    frames = refresh(admin, make_token("rr-admin", ttl=3600, rooms=["lobby"]), "r1")
    # vault is left, with its frame, before the ack; lobby, which the new token allows, is kept
    assert frames == [left("vault"), {"type": "ack", "id": "r1", "delivered": 0}]
    gone = recv_until(watcher, lambda m: m["type"] == "presence")
    assert gone == {"type": "presence", "room": "vault", "event": "leave", "client_id": "rr-admin"}

    # no admin any more: a room outside the claim is refused, and vault is not joined
    assert join(admin, "ops", "a3")["code"] == "forbidden"
    assert join(admin, "vault", "a4")["code"] == "forbidden"
    send(admin, type="room", room="vault", data="x", id="a5")
    assert recv_json(admin)["code"] == "not_in_room"
    send(admin, type="room", room="lobby", data="still here", id="a6")
    assert recv_json(admin)["data"] == "still here"
    for ws in (admin, watcher):
        ws.close()


def test_a_room_claim_refreshed_away_leaves_that_room(srv: Server) -> None:
    ws = chat_client(srv, "rr-claim", rooms=["vault", "news-*"])
    assert join(ws, "vault", "j1")["type"] == "joined"
    assert join(ws, "news-eu", "j2")["type"] == "joined"
    frames = refresh(ws, make_token("rr-claim", rooms=["news-*"]), "r1")
    assert frames == [left("vault"), {"type": "ack", "id": "r1", "delivered": 0}]
    assert join(ws, "vault", "j3")["code"] == "forbidden"
    # a token without the claim at all: every room is left, each with its frame
    assert join(ws, "news-us", "j4")["type"] == "joined"
    frames = refresh(ws, make_token("rr-claim"), "r2")
    assert frames == [left("news-eu"), left("news-us"), {"type": "ack", "id": "r2", "delivered": 0}]
    assert join(ws, "news-eu", "j5")["code"] == "forbidden"
    ws.close()


def test_a_refresh_to_more_rights_grants_them(srv: Server) -> None:
    ws = chat_client(srv, "rr-up", rooms=["lobby"])
    assert join(ws, "vault", "j1")["code"] == "forbidden"
    assert refresh(ws, make_token("rr-up", admin=True), "r1") == [{"type": "ack", "id": "r1", "delivered": 0}]
    assert join(ws, "vault", "j2")["type"] == "joined"
    ws.close()


def test_a_refused_refresh_changes_no_rights(srv: Server) -> None:
    ws = chat_client(srv, "rr-keep", admin=True)
    assert join(ws, "vault", "j1")["type"] == "joined"
    for msg_id, token, code in (
        ("r1", make_token("rr-keep", ttl=-60), "token_expired"),
        ("r2", make_token("someone-else"), "wrong_client"),
        ("r3", make_token("rr-keep", secret="y" * 40), "invalid_token"),
    ):
        frames = refresh(ws, token, msg_id)
        assert [(f["type"], f["code"]) for f in frames] == [("error", code)]  # no `left`
    assert join(ws, "ops", "j2")["type"] == "joined"  # still admin
    send(ws, type="room", room="vault", data="kept", id="m1")
    assert recv_json(ws)["data"] == "kept"
    ws.close()
