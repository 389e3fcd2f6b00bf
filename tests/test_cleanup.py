"""Cleanup always finishes: whatever raises after a slot is reserved, the slot, the registry
entries, the rooms and presence are released, and it is logged once.

Two levels: the app in this process over real (gevent) socket pairs, where a route or a
cleanup step can be made to fail on purpose; and a real gunicorn, attacked as the issue
describes (a room name the server cannot encode, sent again and again by one client id).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from inprocess import InProcess, in_process, until

from helpers import Server, chat_client, http, make_token, recv_json, recv_until
from wsapp.backplane import InProcessBackplane
from wsapp.hub import Hub
from wsapp.registry import Peer, Registry
from wsapp.testing import HandshakeRefused, connect

ADMIN = make_token("ops", admin=True)

# ---- in this process: a real app, real sockets, failures put in on purpose ---------------


@pytest.fixture
def inproc() -> Iterator[InProcess]:
    with in_process() as running:
        yield running


def test_a_session_holds_its_slot_until_it_ends(inproc: InProcess) -> None:
    slots = inproc.service.metrics.connection_slots._value.get()
    client = inproc.connect()
    assert client.receive()["type"] == "welcome"
    assert inproc.service.registry.held == 1 and inproc.service.metrics.connection_slots._value.get() == slots + 1
    client.close()
    assert client.wait_closed() == 1000
    until(lambda: inproc.service.registry.held == 0, "the slot is back")
    assert inproc.service.metrics.connection_slots._value.get() == slots
    assert inproc.lines("no session greenlet") == []


def test_a_route_whose_handler_cannot_be_called_gives_its_slot_back(inproc: InProcess) -> None:
    sock = inproc.app.extensions["wsapp.sock"]

    @sock.route("/ws/flask-sock-style")
    def flask_sock_style(ws, *, extra):  # type: ignore[no-untyped-def]  # a handler that cannot be called
        ws.send("never")

    slots = inproc.service.metrics.connection_slots._value.get()
    client = inproc.connect("/ws/flask-sock-style")
    assert client.wait_closed() == 1011
    until(lambda: inproc.service.registry.held == 0, "the slot is back")
    assert inproc.service.metrics.connection_slots._value.get() == slots
    assert len(inproc.lines("error in flask_sock_style session")) == 1


def test_a_route_that_raises_gives_its_slot_back(inproc: InProcess) -> None:
    sock = inproc.app.extensions["wsapp.sock"]

    @sock.route("/ws/raises")
    def raises(conn):  # type: ignore[no-untyped-def]
        raise RuntimeError("after the 101")

    for _ in range(inproc.service.settings.max_connections_per_client + 1):  # a leak would 429 the last
        client = inproc.connect("/ws/raises")
        assert client.wait_closed() == 1011
        until(lambda: inproc.service.registry.held == 0, "the slot is back")
    assert len(inproc.lines("error in raises session")) == inproc.service.settings.max_connections_per_client + 1


def test_a_session_error_closes_1011_cleans_up_and_logs_once(inproc: InProcess, monkeypatch: Any) -> None:
    def broken(*_args: Any) -> int:
        raise RuntimeError("the hub failed")

    monkeypatch.setattr(inproc.service.hub, "broadcast", broken)
    client = inproc.connect()
    assert client.receive()["type"] == "welcome"
    client.send({"type": "join", "room": "r"})
    assert client.receive()["type"] == "joined"
    client.send({"type": "broadcast", "data": 1})
    assert client.wait_closed() == 1011
    client.close()
    until(lambda: inproc.service.registry.held == 0, "the slot is back")
    assert inproc.service.registry.peers() == [] and inproc.service.registry.room_members("r") == []
    assert len(inproc.lines("error in chat session")) == 1
    assert len(inproc.lines(r"^disconnect client=alice .*code=1011")) == 1
    assert inproc.lines("cleanup of conn=") == []


def test_a_failing_cleanup_step_skips_none_of_the_others(inproc: InProcess, monkeypatch: Any) -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("the backplane failed")

    monkeypatch.setattr(inproc.service.backplane, "disconnected", broken)
    watcher, leaver = inproc.connect(client_id="watcher"), inproc.connect(client_id="leaver")
    for client in (watcher, leaver):
        assert client.receive()["type"] == "welcome"
        client.send({"type": "join", "room": "r"})
        assert client.receive()["type"] == "joined"
    assert watcher.receive()["event"] == "join"
    leaver.close()
    assert leaver.wait_closed() == 1000
    assert leaver.hung_up  # the socket step ran: the server closed its end
    # the presence step ran after the failing backplane step
    assert watcher.receive() == {"type": "presence", "room": "r", "event": "leave", "client_id": "leaver"}
    until(lambda: inproc.service.registry.held == 1, "the leaver's slot is back")
    assert [p.client_id for p in inproc.service.registry.peers()] == ["watcher"]
    assert len(inproc.lines("cleanup of conn=.*registry failed")) == 1  # logged once
    assert len(inproc.lines(r"^disconnect client=leaver ")) == 1  # and the disconnect line still written


# ---- Hub: each room's presence is independent ----------------------------------------------


class FakeWs:
    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.sent: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return True


def test_one_rooms_failure_does_not_keep_the_others_from_hearing_the_leave() -> None:
    registry = Registry(10, 10)

    class FailsOnce(InProcessBackplane):
        def left(self, peer: Peer, room: str) -> bool:
            if room == "bad":
                raise RuntimeError("one room failed")
            return True

    hub = Hub(registry, FailsOnce(registry))
    leaver = Peer(FakeWs("l"), "leaver", False, 0, "", "chat")  # type: ignore[arg-type]
    others = {room: Peer(FakeWs(room), f"in-{room}", False, 0, "", "chat") for room in ("a", "bad", "z")}  # type: ignore[arg-type]
    for p in (leaver, *others.values()):
        hub.connect(p)
    for room, p in others.items():
        hub.join(p, room, 10), hub.join(leaver, room, 10)
    for p in others.values():
        p.ws.sent.clear()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="one room failed"):
        hub.disconnect(leaver)
    assert registry.peers() and leaver not in registry.peers()
    for room in ("a", "z"):
        (frame,) = others[room].ws.sent  # type: ignore[attr-defined]
        assert json.loads(frame[2:]) == {"type": "presence", "room": room, "event": "leave", "client_id": "leaver"}
    hub.disconnect(leaver)  # idempotent: nothing announced twice
    assert all(len(p.ws.sent) <= 1 for p in others.values())  # type: ignore[attr-defined]


# ---- a real gunicorn, attacked as in the issue ----------------------------------------------


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_room_name_the_server_cannot_encode_never_leaks_a_slot(start_server: Callable[..., Server]) -> None:
    srv = start_server(WSAPP_RATE_LIMIT="0", WSAPP_MAX_CONNECTIONS_PER_CLIENT="10")
    limit = 10
    for i in range(limit + 2):
        ws = chat_client(srv, "surrogate")
        ws.send('{"type":"join","room":"\\ud800","id":"j"}')
        err = recv_json(ws)
        assert err["type"] == "error" and err["code"] == "bad_json" and "surrogate" in err["message"]
        ws.send(json.dumps({"type": "broadcast", "data": i, "id": "still-open"}))
        assert recv_until(ws, lambda m: m["type"] == "ack")["id"] == "still-open"
        ws.close()

    def settled() -> bool:
        listed = http(srv.url, "GET", "/api/clients", token=ADMIN).body
        slots = _metric(http(srv.url, "GET", "/metrics").body, "wsapp_connection_slots")
        return bool(listed["connections"] == 0 and slots == 0)

    deadline = time.monotonic() + 10
    while not settled():  # /api/clients and the registry's count agree: nothing held
        assert time.monotonic() < deadline, "slots still held after every connection closed"
        time.sleep(0.05)
    again = [chat_client(srv, "surrogate") for _ in range(limit)]  # the same id, up to its limit: no 429
    listed = http(srv.url, "GET", "/api/clients", token=ADMIN).body
    assert listed["clients"] == [{"client_id": "surrogate", "connections": limit}]
    assert _metric(http(srv.url, "GET", "/metrics").body, "wsapp_connection_slots") == limit
    for ws in again:
        ws.close()
    log = srv.log()
    assert "Traceback" not in log and "code=1011" not in log


def test_a_client_id_the_server_cannot_encode_is_refused_and_holds_nothing(inproc: InProcess) -> None:
    """A token whose client id no frame could carry (a lone surrogate in `sub`) is refused
    401 before the 101, every time, and reserves nothing: the id never reaches a session."""
    token = make_token("\ud800")
    for _ in range(inproc.service.settings.max_connections_per_client + 1):
        with pytest.raises(HandshakeRefused) as refused:
            connect(inproc.ws, "/ws/chat", token=token)
        assert refused.value.status == 401 and refused.value.error == "invalid_token"
        assert inproc.service.registry.held == 0
        assert inproc.service.registry.peers() == []
