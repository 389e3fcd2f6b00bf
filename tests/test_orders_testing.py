"""examples/orders.py tested the way its users would test it: `wsapp.testing`'s
fixtures in the test's own process, no server (tests/test_extending.py runs the same
app under a real gunicorn)."""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from flask import Flask

from helpers import SECRET
from wsapp import WSApp, pytest_plugin
from wsapp.testing import ConnectionClosed, HandshakeRefused, WebSocketTestClient

# the plugin's fixtures (with wsapp installed the pytest11 entry point loads them everywhere)
ws_app, ws_client, ws_token = pytest_plugin.ws_app, pytest_plugin.ws_client, pytest_plugin.ws_token
Client = Callable[..., WebSocketTestClient]
STAFF = {"shops": ["shop:paris"]}


@pytest.fixture(scope="module")
def orders() -> Iterator[Any]:
    """examples.orders imported fresh with a known secret (its WSApp is made at import)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WSAPP_REDIS_URL", "WSAPP_DEMO", "WSAPP_JWT_PUBLIC_KEY"):
            mp.delenv(name, raising=False)
        mp.setenv("WSAPP_JWT_SECRET", SECRET)
        mp.setenv("WSAPP_INSTANCE_PATH", tempfile.mkdtemp())
        mp.setenv("WSAPP_RATE_LIMIT", "0")
        sys.modules.pop("examples.orders", None)
        module = importlib.import_module("examples.orders")
    yield module
    module.ws.close()
    sys.modules.pop("examples.orders", None)


@pytest.fixture
def app(orders: Any) -> Iterator[Flask]:
    yield orders.app
    wait_for(lambda: not orders.watching, "every connection of the test to have left")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        gevent.sleep(0.01)


def typed(client: WebSocketTestClient, kind: str, **match: Any) -> dict[str, Any]:
    got = client.receive_until(
        lambda m: isinstance(m, dict) and m.get("type") == kind and all(m.get(k) == v for k, v in match.items())
    )
    assert isinstance(got, dict)
    return got


def test_notify_greets_answers_ping_and_echoes(ws_client: Client) -> None:
    with ws_client("/ws/notify", client_id="alice") as alice:
        assert alice.receive() == {"hello": "alice"}
        alice.send("ping")
        assert alice.receive() == "pong"
        alice.send({"order": 1})
        assert alice.receive() == {"order": 1}
        alice.send(b"\x01\x02")
        assert alice.receive() == b"\x01\x02"


def test_shipped_reaches_every_connection_of_the_customer_only(app: Flask, ws_client: Client) -> None:
    phone, laptop = ws_client("/ws/notify", client_id="alice"), ws_client("/ws/notify", client_id="alice")
    bob = ws_client("/ws/notify", client_id="bob")
    for client in (phone, laptop, bob):
        client.receive()
    assert app.test_client().post("/orders/17/shipped/alice").json == {"delivered": 2}
    for client in (phone, laptop):
        got = typed(client, "direct")
        assert (got["from"], got["to"], got["data"]) == ("server", "alice", {"order": "17", "state": "shipped"})
    bob.send("ping")  # bob got nothing before his own pong
    assert bob.receive() == "pong"
    assert app.test_client().post("/orders/18/shipped/nobody").json == {"delivered": 0}


def test_announce_reaches_notify_and_chat(app: Flask, ws_client: Client) -> None:
    watcher = ws_client("/ws/notify", client_id="alice")
    staff = ws_client("/ws/chat", client_id="sam", claims=STAFF)
    watcher.receive()
    typed(staff, "welcome")
    assert app.test_client().post("/announce").json == {"delivered": 2}
    for client in (watcher, staff):
        assert typed(client, "broadcast")["data"] == {"text": "we close at six"}


def test_revoke_closes_the_customers_connections_4403(app: Flask, ws_client: Client) -> None:
    alice = ws_client("/ws/notify", client_id="alice")
    alice.receive()
    assert app.test_client().post("/customers/alice/revoke").json == {"closed": 1}
    with pytest.raises(ConnectionClosed):
        alice.receive()
    assert (alice.close_code, alice.close_reason) == (4403, "access revoked")


def test_watching_counts_connections_in_and_out(app: Flask, ws_client: Client, orders: Any) -> None:
    first, second = ws_client("/ws/notify", client_id="alice"), ws_client("/ws/notify", client_id="alice")
    staff = ws_client("/ws/chat", client_id="sam", claims=STAFF)
    typed(staff, "welcome")
    staff.send({"type": "join", "id": 1, "room": "shop:paris"})
    typed(staff, "ack", id=1)
    view = app.test_client().get("/watching").json
    assert view == {"here": {"alice": 2, "sam": 1}, "everywhere": {"alice": 2, "sam": 1}, "shop:paris": ["sam"]}
    first.close()
    wait_for(lambda: orders.watching.get("alice") == 1, "the on_disconnect hook")
    second.close()
    staff.close()
    wait_for(lambda: orders.watching == {}, "every hook")
    assert app.test_client().get("/watching").json == {"here": {}, "everywhere": {}, "shop:paris": []}


def test_staff_join_only_their_shops_and_admins_any(ws_client: Client) -> None:
    staff = ws_client("/ws/chat", client_id="sam", claims=STAFF)
    root = ws_client("/ws/chat", client_id="root", claims={"roles": ["admin"]})
    outsider = ws_client("/ws/chat", client_id="olga")
    for client in (staff, root, outsider):
        typed(client, "welcome")
    staff.send({"type": "join", "id": 1, "room": "shop:paris"})
    assert typed(staff, "joined")["room"] == "shop:paris"
    staff.send({"type": "join", "id": 2, "room": "shop:lyon"})
    assert typed(staff, "error", id=2)["code"] == "forbidden"
    outsider.send({"type": "join", "id": 1, "room": "shop:paris"})
    assert typed(outsider, "error", id=1)["code"] == "forbidden"
    root.send({"type": "join", "id": 1, "room": "shop:lyon"})
    assert typed(root, "joined")["room"] == "shop:lyon"


def test_typing_reaches_the_room_and_needs_a_room_one_is_in(ws_client: Client) -> None:
    sam = ws_client("/ws/chat", client_id="sam", claims=STAFF)
    pat = ws_client("/ws/chat", client_id="pat", claims=STAFF)
    for client in (sam, pat):
        typed(client, "welcome")
        client.send({"type": "join", "id": 1, "room": "shop:paris"})
        typed(client, "ack", id=1)
    sam.send({"type": "typing", "id": 2, "room": "shop:paris"})
    seen = typed(pat, "room")
    assert (seen["room"], seen["from"], seen["data"]) == ("shop:paris", "sam", {"typing": "sam"})
    assert typed(sam, "ack", id=2)["delivered"] == 2
    sam.send({"type": "typing", "id": 3})
    assert typed(sam, "error", id=3)["code"] == "missing_field"
    sam.send({"type": "typing", "id": 4, "room": "shop:lyon"})
    assert typed(sam, "error", id=4)["code"] == "not_in_room"


def test_a_bad_or_expired_token_is_refused_with_its_reason(ws_client: Client, ws_token: Callable[..., str]) -> None:
    with pytest.raises(HandshakeRefused) as bad:
        ws_client("/ws/notify", token="bogus")
    assert (bad.value.status, bad.value.error) == (401, "invalid_token")
    with pytest.raises(HandshakeRefused) as expired:
        ws_client("/ws/notify", token=ws_token("alice", ttl_s=-60))
    assert (expired.value.status, expired.value.error) == (401, "token_expired")


def test_the_ws_app_fixture_is_the_apps_extension(ws_app: WSApp, orders: Any) -> None:
    assert ws_app is orders.ws
