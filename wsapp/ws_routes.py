"""The WebSocket routes (/ws/echo, /ws/chat) and the before-upgrade hook that guards them.

The hook runs in the WSGI request; after the 101 each connection is one greenlet of
its own running `_session` around its route (see `transport.Sock.route`): it reads and
handles one message at a time (see `connection.WebSocket` for who writes). The
session's `finally` is the one place a connection is cleaned up, whatever ended it;
each cleanup step runs even if another raised.

The slot the hook reserves (`registry.Slot`) is released exactly once, and always:
by the request's teardown if no session took it over, else when the session's
greenlet ends, however it ends (the teardown links the release to the greenlet, so
a route added with `@sock.route` that raises, even before its first line, gives its
slot back too). An evicted slow consumer leaves the registry and its rooms at once,
before its session ends (`Hub.evict`); the session's cleanup then finds it gone.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from typing import cast

from flask import Flask, g, request

from . import metrics, protocol
from .connection import RateLimited, WebSocket
from .errors import CloseCode, HandshakeRejected
from .handshake import Accepted, check_handshake
from .proxy import client_address
from .registry import Join, Peer, Slot
from .service import Service
from .transport import Sock

log = logging.getLogger("wsapp.connections")


def init_app(app: Flask, service: Service) -> None:
    sock = Sock(app)
    app.extensions["wsapp.sock"] = sock
    settings = service.settings
    hub = service.hub

    @app.before_request
    def before_upgrade() -> None:
        """Run every handshake check before the 101; reserve the connection's slot."""
        if request.endpoint not in sock.endpoints:
            return
        if service.registry.draining:
            raise HandshakeRejected("shutting_down")
        accepted = check_handshake(
            method=request.method,
            headers=cast(Mapping[str, str], request.headers),  # case-insensitive .get()
            query=request.args,
            cookies=request.cookies,
            settings=settings,
        )
        client_id = accepted.identity.client_id
        g.wsapp_slot = service.registry.reserve(client_id, elsewhere=service.backplane.connections_elsewhere(client_id))
        metrics.CONNECTION_SLOTS.inc()
        remote = client_address(
            request.remote_addr or "", request.headers.get("X-Forwarded-For"), settings.trusted_proxies
        )
        g.wsapp_accepted = dataclasses.replace(accepted, remote_addr=remote)

    @app.teardown_request
    def hand_over_reservation(_exc: BaseException | None) -> None:
        """Release the slot now if no session took it over, else when its greenlet ends."""
        slot = g.pop("wsapp_slot", None)
        if slot is None:
            return
        if not g.get("wsapp_upgraded"):
            _release(slot)
            return
        session = g.get("wsapp_session")
        if session is None:  # a transport that names no session greenlet: never hold a slot for ever
            log.error("the transport handed over no session greenlet: connection slot released at once")
            _release(slot)
        else:  # runs once the greenlet is dead, whatever killed it (or at once if it already is)
            session.link(lambda _greenlet: _release(slot))

    def _release(slot: Slot) -> None:
        if slot.release():
            metrics.CONNECTION_SLOTS.dec()

    def _session(raw: socket.socket, accepted: Accepted, route: str, serve: Callable[[Peer], None]) -> None:
        """Run one connection from its 101 to its last byte; the one place it is cleaned up."""
        ident = accepted.identity
        ws = WebSocket(
            raw,
            conn_id=secrets.token_urlsafe(9),
            max_message_bytes=settings.max_message_bytes,
            send_queue=settings.send_queue,
            send_queue_bytes=settings.send_queue_bytes or None,  # 0: derived from the message limit
            compression=accepted.extensions is not None,
            rate_limit=settings.rate_limit,  # every frame the client sends is charged
            rate_burst=settings.rate_burst,
            evict_grace_s=settings.ping_timeout_s,  # for a slow consumer to read its 1008
            on_evict=lambda: hub.evict(peer),  # leaves the registry and its rooms at once
        )
        peer = Peer(ws, ident.client_id, ident.is_admin, ident.expires_at, accepted.remote_addr, route)
        failed = False
        try:
            metrics.OPENED_BY_ROUTE[route].inc()
            metrics.OPEN_BY_ROUTE[route].inc()
            log.info(
                "connect client=%s conn=%s route=%s addr=%s token_from=%s",
                peer.client_id,
                peer.conn_id,
                route,
                peer.remote_addr,
                accepted.token_source,
            )
            hub.connect(peer)
            serve(peer)
        except Exception:
            failed = True
            log.exception("error in %s session conn=%s", route, peer.conn_id)
        finally:
            _end_session(peer, route, failed)

    def _end_session(peer: Peer, route: str, failed: bool) -> None:
        """Every cleanup step, each run whatever the others did; one log line for the failures."""
        ws = peer.ws
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("close", lambda: ws.close(CloseCode.INTERNAL_ERROR, "internal error") if failed else ws.close()),
            ("registry", lambda: hub.disconnect(peer)),
            ("socket", ws.shutdown_socket),
            ("metrics", lambda: _count_close(route, ws.close_code)),
        )
        failures: list[tuple[str, Exception]] = []
        for name, step in steps:
            try:
                step()
            except Exception as exc:
                failures.append((name, exc))
        if failures:
            log.error(
                "cleanup of conn=%s: step(s) %s failed; the others ran",
                peer.conn_id,
                ", ".join(name for name, _ in failures),
                exc_info=failures[0][1],
            )
        log.info(
            "disconnect client=%s conn=%s route=%s addr=%s duration=%.3fs code=%s reason=%r",
            peer.client_id,
            peer.conn_id,
            route,
            peer.remote_addr,
            time.monotonic() - ws.opened_at,
            ws.close_code,
            ws.close_reason,
        )

    def serve_echo(peer: Peer) -> None:
        ws = peer.ws
        while (msg := ws.receive()) is not None:
            if isinstance(msg, RateLimited):
                _rate_limited(ws, None)
            elif isinstance(msg, bytes):
                ws.send_binary(msg)
            else:
                ws.send_text(msg)

    def serve_chat(peer: Peer) -> None:
        ws = peer.ws
        ws.send_frame(protocol.text_frame(protocol.welcome(peer.client_id, peer.conn_id)))
        while (msg := ws.receive()) is not None:
            if isinstance(msg, RateLimited):  # over the connection's budget, charged per frame
                _rate_limited(ws, msg.data)
                continue
            if isinstance(msg, bytes):
                ws.close(CloseCode.UNSUPPORTED_DATA, "chat takes JSON text frames, not binary")
                continue
            _handle_chat_frame(service, peer, msg)

    def _count_close(route: str, code: int | None) -> None:
        metrics.OPEN_BY_ROUTE[route].dec()
        metrics.CONNECTIONS_CLOSED.labels(route, metrics.close_code_label(code)).inc()

    @sock.route("/ws/echo")
    def echo(raw: socket.socket, accepted: Accepted) -> None:
        _session(raw, accepted, "echo", serve_echo)

    @sock.route("/ws/chat")
    def chat(raw: socket.socket, accepted: Accepted) -> None:
        _session(raw, accepted, "chat", serve_chat)


def _rate_limited(ws: WebSocket, chat_frame: str | bytes | None) -> None:
    """Answer a message that came over the budget with `rate_limited` (with the frame's
    `id` on chat, so every id still gets its one answer). Past the debt the connection
    has closed itself 1008 (see `WebSocket.receive`)."""
    msg_id = protocol.frame_id(chat_frame) if isinstance(chat_frame, str) else None
    ws.send_frame(protocol.text_frame(protocol.error("rate_limited", "too many messages: slow down", msg_id)))


def _handle_chat_frame(service: Service, peer: Peer, text: str) -> None:
    hub, ws = service.hub, peer.ws
    try:
        cmd = protocol.parse_command(text)
    except protocol.FrameError as err:
        ws.send_frame(protocol.text_frame(protocol.error(err.code, err.message, err.msg_id)))
        return
    delivered = 0
    if cmd.type == "broadcast":
        delivered = hub.broadcast(peer.client_id, cmd.data)
    elif cmd.type == "direct":
        delivered = hub.send(peer.client_id, cmd.to, cmd.data)
        if delivered == 0:
            ws.send_frame(
                protocol.text_frame(protocol.error("not_connected", f"client {cmd.to!r} is not connected", cmd.id))
            )
            return
    elif cmd.type == "room":
        if cmd.room not in peer.rooms:
            ws.send_frame(
                protocol.text_frame(protocol.error("not_in_room", f"join {cmd.room!r} before sending to it", cmd.id))
            )
            return
        delivered = hub.send_to_room(peer.client_id, cmd.room, cmd.data)
    elif cmd.type == "join":
        max_rooms = service.settings.max_rooms
        result = hub.join(peer, cmd.room, max_rooms)
        if result is Join.FULL:
            message = f"this connection is in {max_rooms} rooms, the most allowed (WSAPP_MAX_ROOMS): leave one first"
            ws.send_frame(protocol.text_frame(protocol.error("too_many_rooms", message, cmd.id)))
            return
        # a repeated join changes nothing: no member list again (the client has it, and presence)
        members = hub.room_members(cmd.room) if result in (Join.NEW_CLIENT, Join.NEW_CONNECTION) else None
        ws.send_frame(protocol.text_frame(protocol.joined(cmd.room, members)))
    elif cmd.type == "leave":
        hub.leave(peer, cmd.room)
    if cmd.id is not None:
        ws.send_frame(protocol.text_frame(protocol.ack(cmd.id, delivered)))
