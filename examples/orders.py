"""A small app of its own on wsapp's public API (walked through in docs/extending.md).

    gunicorn -k gevent -c examples/gunicorn_orders.py examples.orders:app

A shop's order desk: customers watch their orders on /ws/notify, staff chat on the
built-in /ws/chat in per-shop rooms (a `typing` frame type added), and a view pushes
"shipped" to the customer's connections, on every node when WSAPP_REDIS_URL is set.
"""

from __future__ import annotations

from typing import Any

import click
from flask import Flask

from wsapp import Connection, FrameError, Identity, WSApp

app = Flask(__name__)
app.config.from_prefixed_env()  # FLASK_WSAPP_JWT_SECRET=... etc.; the WSAPP_* environment fills the rest
app.config.setdefault("WSAPP_MAX_ROOMS", 20)
ws = WSApp(app)

# who is watching, per worker (an app's own state, guarded by nothing: one greenlet at a time touches it)
watching: dict[str, int] = {}


@ws.route("/ws/notify", addressable=True)  # addressable: ws.send() and ws.broadcast() reach it
def notify(conn: Connection) -> None:
    conn.send({"hello": conn.client_id})
    for message in conn:  # "ping" -> "pong"; anything else is echoed
        conn.send("pong" if message == "ping" else message)


@ws.on_connect
def count_in(conn: Connection) -> None:
    watching[conn.client_id] = watching.get(conn.client_id, 0) + 1


@ws.on_disconnect
def count_out(conn: Connection) -> None:
    left = watching.get(conn.client_id, 1) - 1
    if left:
        watching[conn.client_id] = left
    else:
        watching.pop(conn.client_id, None)


@ws.on("typing")
def typing(conn: Connection, frame: dict[str, Any]) -> int:
    room = frame.get("room")
    if not isinstance(room, str) or not room:
        raise FrameError("missing_field", "'room' is required")
    if room not in conn.rooms:
        raise FrameError("not_in_room", f"join {room!r} before typing in it")
    return ws.broadcast({"typing": conn.client_id}, room=room, sender=conn.client_id)


@ws.authorize_join
def may_join(identity: Identity, room: str) -> bool:
    """Staff join `shop:<name>` rooms their token lists; admins join any room."""
    return identity.is_admin or room in identity.claims.get("shops", [])


@app.post("/orders/<oid>/shipped/<customer>")
def shipped(oid: str, customer: str) -> dict[str, Any]:
    delivered = ws.send(customer, {"order": oid, "state": "shipped"})
    return {"delivered": delivered}


@app.post("/announce")
def announce() -> dict[str, Any]:
    return {"delivered": ws.broadcast({"text": "we close at six"})}


@app.post("/customers/<customer>/revoke")
def revoke(customer: str) -> dict[str, Any]:
    return {"closed": ws.disconnect(customer, 4403, "access revoked")}


@app.get("/watching")
def who_is_watching() -> dict[str, Any]:
    return {"here": watching, "everywhere": ws.clients(), "shop:paris": ws.members("shop:paris")}


@app.cli.command("announce")
@click.argument("text")
def announce_command(text: str) -> None:
    """`flask --app examples.orders announce TEXT`: a push from a CLI command (every node with Redis)."""
    try:
        click.echo(ws.broadcast({"text": text}))
    finally:
        ws.close()  # with Redis this process was a node while it ran
