"""One WebSocket connection from its 101 to its last byte, and `Connection`, what a
route handler holds.

Each connection is one greenlet of its own (spawned by `handshake.upgrade.Upgrader` after the 101) running
`run_session` around the route's handler: the handler reads (`receive`, iteration) in
that greenlet alone; any greenlet may `send` (frames are queued and written by the
connection's writer, see `connection.WebSocket`, so a slow client never blocks a
sender). The session's `finally` is the one place a connection is cleaned up, whatever
ended it (the handler returned, raised, or the client left); each cleanup step runs
even if another raised, and the failures are logged in one line.

The slot the handshake reserved (`registry.Slot`) is not this module's: the `Upgrader` links
its release to the session's greenlet, so it comes back however the greenlet ends.
"""

from __future__ import annotations

import functools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent

from . import frames, protocol
from .auth import Identity
from .backplane import check_close_code
from .chat.gates import hold_streams, release
from .connection import RateLimited, WebSocket
from .errors import CloseCode
from .handshake.checks import Accepted
from .history import Position, stream_broadcast, stream_direct
from .metrics import close_code_label
from .protocol import FrameError
from .registry import Join, Peer
from .service import Service

log = logging.getLogger("wsapp.connections")


@dataclass(frozen=True)
class Route:
    """A WebSocket route's options: its name (the view's endpoint, for logs and the
    metrics' `route` label) and whether `ws.send`/`ws.broadcast` reach it."""

    name: str
    addressable: bool = False
    resumable: bool = False  # answers `resume` frames (the built-in chat): `?resume=1` holds its streams


def json_frame(data: Any) -> bytes:
    """`data` (any JSON value the encoder takes) as one complete text frame."""
    return frames.encode_frame(frames.OP_TEXT, protocol.encode(data).encode("utf-8"))


class Connection:
    """One WebSocket connection, as a route handler sees it (flask-sock's `ws` shape).

    `send` may be called from any greenlet; `receive` and iteration belong to the
    handler's greenlet."""

    __slots__ = ("_peer", "_service", "_ws", "identity", "streams")

    def __init__(self, peer: Peer, identity: Identity, service: Service) -> None:
        self._peer = peer
        self._ws = peer.ws
        self._service = service
        self.identity = identity
        # where its broadcast and direct streams stood as it began to count (history on, an
        # addressable route): stream -> Position, for a welcome; read with its presence write
        self.streams: dict[str, Position] = {}

    def replace_identity(self, identity: Identity) -> None:
        """The token now in force (a chat `refresh`, same client id): its rights (admin,
        claims) and its expiry replace the old token's. The caller re-checks the rooms."""
        self.identity = identity
        self._peer.is_admin = identity.is_admin
        self._peer.expires_at = identity.expires_at

    # ---- for wsapp's own routes (the built-in chat): not part of the public API ---------

    @property
    def peer(self) -> Peer:
        """The registry's entry of this connection (rooms, held streams, the socket)."""
        return self._peer

    @property
    def service(self) -> Service:
        """The app's service objects (hub, backplane, settings, hooks)."""
        return self._service

    def send_server_frame(self, frame: dict[str, Any]) -> bool:
        """Queue one of the protocol's server frames (`wsapp.protocol`'s builders)."""
        return self._ws.send_frame(protocol.text_frame(frame))

    def __repr__(self) -> str:
        return f"<Connection client={self._peer.client_id!r} conn={self._peer.conn_id} route={self._peer.route}>"

    @property
    def client_id(self) -> str:
        return self._peer.client_id

    @property
    def conn_id(self) -> str:
        return self._peer.conn_id

    @property
    def route(self) -> str:
        return self._peer.route

    @property
    def remote_addr(self) -> str:
        return self._peer.remote_addr

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (a snapshot)."""
        return frozenset(self._peer.rooms)

    @property
    def open(self) -> bool:
        """False once either side has begun closing."""
        return self._ws.open

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    # ---- sending (any greenlet) -------------------------------------------------------

    def send(self, data: Any) -> bool:
        """Queue one message: `str` as a text frame, `bytes` as a binary frame, anything
        else (dict, list, number...) as JSON text. False if the connection is closing or
        was just evicted as a slow consumer (nothing queued)."""
        if isinstance(data, str):
            return self._ws.send_text(data)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self._ws.send_binary(bytes(data))
        return self._ws.send_frame(json_frame(data))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Begin the closing handshake (idempotent); `receive` then returns None.
        ValueError for a code a server may not send."""
        self._ws.close(check_close_code(code), reason)

    # ---- receiving (the handler's greenlet) -------------------------------------------

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next message (str or bytes), or None once the connection has closed or
        `timeout` seconds passed (`conn.open` tells which). A message over the rate
        limit is answered with an `error` frame `rate_limited` and skipped."""
        if timeout is None:
            return self.next_message(with_ids=False)
        with gevent.Timeout(timeout, False):  # safe: the reader switches only before it reads
            return self.next_message(with_ids=False)
        return None

    def next_message(self, with_ids: bool) -> str | bytes | None:
        """`receive` without a timeout; `with_ids` puts a JSON frame's `id` in the
        `rate_limited` answer (chat: every id gets its one answer)."""
        ws = self._ws
        while True:
            msg = ws.receive()
            if not isinstance(msg, RateLimited):
                return msg
            data = msg.data
            msg_id = protocol.frame_id(data) if with_ids and isinstance(data, str) else None
            ws.send_frame(protocol.text_frame(protocol.error("rate_limited", "too many messages: slow down", msg_id)))

    def __iter__(self) -> Iterator[str | bytes]:
        return self

    def __next__(self) -> str | bytes:
        msg = self.next_message(with_ids=False)
        if msg is None:
            raise StopIteration
        return msg

    # ---- rooms --------------------------------------------------------------------------

    def join(self, room: str) -> bool:
        """Put this connection in `room` (the server's decision: no `authorize_join` rule
        applies). True if it was not in it; raises `FrameError("too_many_rooms")` when it
        holds `WSAPP_MAX_ROOMS` rooms already. The room hears `presence` as on chat."""
        return self.join_result(room) in (Join.NEW_CLIENT, Join.NEW_CONNECTION)

    def join_result(self, room: str) -> Join:
        _check_room(room)
        max_rooms = self._service.settings.max_rooms
        result = self._service.hub.join(self._peer, room, max_rooms)
        if result is Join.FULL:
            message = f"this connection is in {max_rooms} rooms, the most allowed (WSAPP_MAX_ROOMS): leave one first"
            raise FrameError("too_many_rooms", message)
        return result

    def leave(self, room: str) -> bool:
        """Take this connection out of `room`; False if it was not in it."""
        if room not in self._peer.rooms:
            return False
        self._service.hub.leave(self._peer, room)
        return True


def _check_room(room: Any) -> None:
    if not isinstance(room, str) or not room or len(room) > protocol.MAX_ROOM_CHARS:
        raise ValueError(f"a room is a non-empty string of at most {protocol.MAX_ROOM_CHARS} characters")


def own_streams(client_id: str) -> list[str]:
    """The streams every addressable connection of `client_id` receives: the broadcast, then
    its direct stream (kept for another history window from each connect: offline messages)."""
    return [stream_broadcast(), stream_direct(client_id)]


def run_session(
    service: Service,
    raw: socket.socket,
    accepted: Accepted,
    route: Route,
    handler: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    resume: bool = False,
) -> None:
    """Run one connection from its 101 to its last byte; the one place it is cleaned up.

    `resume` (`?resume=1`): the connection's broadcast and direct streams are held from
    the start until its `resume` frame replays them (`wsapp.chat.resume`)."""
    settings, hub, metrics = service.settings, service.hub, service.metrics
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
    )
    peer = Peer(
        ws,
        ident.client_id,
        ident.is_admin,
        ident.expires_at,
        accepted.remote_addr,
        route.name,
        addressable=route.addressable,
        resumable=route.resumable,
    )
    # an evicted slow consumer leaves the registry and its rooms at once (a partial, not a
    # closure: smaller, and it is kept for the connection's whole life)
    ws.on_evict = functools.partial(hub.evict, peer)
    # only chat answers a `resume` frame (an app's route would hold these streams forever);
    # held within the send queue's bounds, for at most WSAPP_RESUME_TIMEOUT
    if resume and route.resumable and service.hub.history_on:
        hold_streams(peer, settings.resume_timeout_s)
    conn = Connection(peer, ident, service)
    failed = False
    if route.name not in metrics.open_by_route:
        metrics.add_route(route.name)
    try:
        metrics.opened_by_route[route.name].inc()
        metrics.open_by_route[route.name].inc()
        log.info(
            "connect client=%s conn=%s route=%s addr=%s token_from=%s",
            peer.client_id,
            peer.conn_id,
            route.name,
            peer.remote_addr,
            accepted.token_source,
        )
        own = own_streams(peer.client_id) if route.addressable and service.hub.history_on else []
        conn.streams = dict(zip(own, hub.connect(peer, own, touch=own[-1] if own else ""), strict=True))
        for hook in service.hooks.connect_hooks:
            hook(conn)
        handler(conn, *args, **kwargs)
    except Exception:
        failed = True
        log.exception("error in %s session conn=%s", route.name, peer.conn_id)
    finally:
        _end_session(service, conn, peer, failed)


def _end_session(service: Service, conn: Connection, peer: Peer, failed: bool) -> None:
    """Every cleanup step, each run whatever the others did; one log line for the failures."""
    ws, route = peer.ws, peer.route

    def on_disconnect() -> None:
        for hook in service.hooks.disconnect_hooks:
            hook(conn)

    def count_close() -> None:
        service.metrics.open_by_route[route].dec()
        service.metrics.connections_closed.labels(route, close_code_label(ws.close_code)).inc()

    steps: tuple[tuple[str, Callable[[], object]], ...] = (
        ("close", lambda: ws.close(CloseCode.INTERNAL_ERROR, "internal error") if failed else ws.close()),
        ("on_disconnect", on_disconnect),
        ("registry", lambda: service.hub.disconnect(peer)),
        ("gates", lambda: release(peer)),  # held frames and the resume timer, if any
        ("socket", ws.shutdown_socket),
        ("metrics", count_close),
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
