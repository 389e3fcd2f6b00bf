"""The built-in chat route (`WSAPP_CHAT_PATH`, /ws/chat by default) and its frame types.

Chat is an ordinary route of the public API: `serve_chat` is its handler, and the
built-in types (`broadcast`, `direct`, `room`, `join`, `leave`) are registered with
`WSApp.on` exactly as an app registers its own (`typing`, `read`...). A handler takes
`(conn, frame)` and returns the `delivered` count for the ack (None: 0), or raises
`FrameError` for an `error` frame; the connection stays open either way. Any other
exception is a server bug: the session ends 1011 and it is logged once.
"""

from __future__ import annotations

from typing import Any

from .. import auth, history, protocol
from ..errors import CloseCode, HandshakeRejected
from ..hooks import AppHooks, FrameHandler
from ..protocol import FrameError
from ..registry import Join
from ..session import Connection
from . import gates, resume


def serve_chat(conn: Connection) -> None:
    """The chat route's handler: the welcome, then each frame to its type's handler."""
    peer = conn.peer  # the hot path: one frame in, its answers out
    send = conn.send_server_frame
    handlers = conn.service.hooks.frame_handlers
    settings = conn.service.settings
    # its entry in member lists (WSAPP_PRESENCE_CLAIMS), before it can join anything
    peer.info = protocol.presence_info(conn.identity.claims, settings.presence_claims, settings.presence_info_bytes)
    resuming = peer.gates is not None  # ?resume=1: the `resume` frame joins its rooms again
    send(protocol.welcome(conn.client_id, conn.conn_id, _streams(conn)))
    if settings.autojoin_claim and not resuming:
        autojoin(conn, settings.autojoin_claim)
    while (msg := conn.next_message(with_ids=True)) is not None:
        if isinstance(msg, bytes):
            conn.close(CloseCode.UNSUPPORTED_DATA, "chat takes JSON text frames, not binary")
            continue
        msg_id: str | int | None = None
        try:
            frame, msg_id, kind = protocol.parse_frame(msg)
            if peer.gates is not None and kind != "resume":  # ?resume=1, then another frame first
                gates.open_gates(peer)
            handler = handlers.get(kind)
            if handler is None:
                raise protocol.unknown_type(kind, msg_id)
            delivered = handler(conn, frame)
        except FrameError as err:
            error_id = err.msg_id if err.msg_id is not None else msg_id
            send(protocol.error(err.code, err.message, error_id))
            continue
        if msg_id is not None:  # a handler's count; anything else it returns counts 0
            count = delivered if isinstance(delivered, int) and not isinstance(delivered, bool) else 0
            send(protocol.ack(msg_id, count, type(count) is protocol.Stored))


def _streams(conn: Connection) -> dict[str, Any] | None:
    """The welcome's positions (history on): broadcast, and the client's direct stream,
    which this connection keeps for another history window (offline messages)."""
    if not conn.streams:
        return None
    b, d = conn.streams[history.stream_broadcast()], conn.streams[history.stream_direct(conn.client_id)]
    return {"broadcast": b.wire(), "direct": d.wire()}


def autojoin(conn: Connection, claim: str) -> None:
    """`WSAPP_AUTOJOIN_CLAIM`: join the rooms the token's `claim` lists, in order, each as a
    `join` frame would (the room rule, `WSAPP_MAX_ROOMS`); a refused one gets the `error`
    frame a refused `join` gets (no `id`). A string is one room. A claim of another type,
    or an entry that is not a room name, gets one `missing_field` error and is skipped;
    at most `WSAPP_MAX_ROOMS` entries are read (more: one `too_many_rooms` error)."""
    send, settings = conn.send_server_frame, conn.service.settings
    listed = conn.identity.claims.get(claim)
    if listed is None:
        return
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list):
        send(protocol.error("missing_field", f"the token's {claim!r} claim is not a list of rooms: none joined"))
        return
    most = settings.max_rooms
    if len(listed) > most:
        message = f"the token's {claim!r} claim lists more than {most} rooms (WSAPP_MAX_ROOMS): the first {most} read"
        send(protocol.error("too_many_rooms", message))
    bad = False
    for name in listed[:most]:
        if not isinstance(name, str) or not 0 < len(name) <= protocol.MAX_ROOM_CHARS:
            bad = True
            continue
        if name not in conn.peer.rooms and not conn.service.hooks.may_join(conn.identity, name):
            send(protocol.error("forbidden", f"you may not join {name!r}"))
            continue
        try:
            result = conn.join_result(name)
        except FrameError as err:  # full: every later one would be too
            send(protocol.error(err.code, err.message))
            break
        if result in (Join.NEW_CLIENT, Join.NEW_CONNECTION):
            send(conn.service.hub.joined_frame(name))
    if bad:
        most_chars = protocol.MAX_ROOM_CHARS
        message = f"the token's {claim!r} claim holds entries that are not room names (1 to {most_chars} characters)"
        send(protocol.error("missing_field", message))


def _left(room: str, code: str, message: str) -> dict[str, Any]:
    """A room the server took this connection out of (not an answer to `leave`, which is
    an `ack`): `code` is one of `FRAME_ERRORS`' codes, `message` says why."""
    return {"type": "left", "room": room, "code": code, "message": message}


def broadcast(conn: Connection, frame: dict[str, Any]) -> int:
    cmd = protocol.command(frame, frame.get("id"), "broadcast")
    hub = conn.service.hub
    return hub.broadcast(conn.client_id, cmd.data, charged=not conn.identity.is_admin)


def direct(conn: Connection, frame: dict[str, Any]) -> int:
    cmd = protocol.command(frame, frame.get("id"), "direct")
    hub = conn.service.hub
    delivered, stored = hub.send_direct(conn.client_id, cmd.to, cmd.data, charged=not conn.identity.is_admin)
    if stored:
        return protocol.Stored(0)
    if delivered == 0:
        raise FrameError("not_connected", f"client {cmd.to!r} is not connected")
    return delivered


def room(conn: Connection, frame: dict[str, Any]) -> int:
    cmd = protocol.command(frame, frame.get("id"), "room")
    hub = conn.service.hub
    if cmd.room not in conn.peer.rooms:
        raise FrameError("not_in_room", f"join {cmd.room!r} before sending to it")
    return hub.send_to_room(conn.client_id, cmd.room, cmd.data, charged=not conn.identity.is_admin)


def join(conn: Connection, frame: dict[str, Any]) -> int:
    cmd = protocol.command(frame, frame.get("id"), "join")
    hub = conn.service.hub
    if cmd.room not in conn.peer.rooms and not conn.service.hooks.may_join(conn.identity, cmd.room):
        raise FrameError("forbidden", f"you may not join {cmd.room!r}")
    result = conn.join_result(cmd.room)
    # a repeated join changes nothing: no member list again (the client has it, and presence);
    # a connection new in it gets the members (and their `info`) and the room's position
    if result in (Join.NEW_CLIENT, Join.NEW_CONNECTION):
        conn.send_server_frame(hub.joined_frame(cmd.room))
    else:
        conn.send_server_frame(protocol.joined(cmd.room, None))
    return 0


def leave(conn: Connection, frame: dict[str, Any]) -> int:
    cmd = protocol.command(frame, frame.get("id"), "leave")
    hub = conn.service.hub
    hub.leave(conn.peer, cmd.room)
    return 0


def resume_(conn: Connection, frame: dict[str, Any]) -> int:
    return resume.handle_resume(conn, frame)


def refresh(conn: Connection, frame: dict[str, Any]) -> int:
    """A new token for the same client id becomes the connection's token: its expiry
    (the heartbeat's 4401 deadline reads `peer.expires_at`) and its rights (admin, the
    rooms claim, what `authorize_join` sees). Each room the new token may not join is
    left, with a `left` frame `forbidden` before the ack. A refused token changes nothing."""
    token = frame.get("token")
    if not isinstance(token, str) or not token:
        raise FrameError("missing_field", "a 'refresh' frame needs 'token', a non-empty string")
    try:
        identity = auth.verify_token(token, conn.service.settings)
    except HandshakeRejected as err:
        raise FrameError(err.code, err.message) from None
    if identity.client_id != conn.client_id:
        raise FrameError("wrong_client", "the token is for another client id: reconnect with it instead")
    conn.replace_identity(identity)
    hub = conn.service.hub
    for room in sorted(conn.peer.rooms):  # a snapshot: leaving changes the set
        if not conn.service.hooks.may_join(identity, room):
            hub.leave(conn.peer, room)  # the others hear presence `leave`, as on a `leave`
            message = f"the refreshed token may not be in {room!r}"
            conn.send_server_frame(_left(room, "forbidden", message))
    return 0


# the contract's frame types, registered like an app's own (`@ws.on`) when the WSApp is made
BUILT_INS: dict[str, FrameHandler] = {
    "broadcast": broadcast,
    "direct": direct,
    "room": room,
    "join": join,
    "leave": leave,
    "resume": resume_,
    "refresh": refresh,
}


def register_built_ins(hooks: AppHooks) -> None:
    """Put the built-in frame types in `hooks` (an app's own `@ws.on` may replace one)."""
    hooks.frame_handlers.update(BUILT_INS)
