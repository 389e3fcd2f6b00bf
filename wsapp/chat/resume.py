"""Resume: a reconnecting client gets what its streams published while it was away.

The race this module settles: a stream's new messages keep arriving while its history
is read (with Redis the read is a round trip, and other greenlets deliver meanwhile).
So a stream is first *held* for the connection (`registry.Gate`: `deliver` parks its
frames there instead of queueing them), then its history after the client's position is
read and queued, then the held frames past the last replayed offset are queued and the
gate is removed, with no switch between that last read and the removal. Every message
goes out once (offsets de-duplicate), in order, the replay before anything newer.

With `?resume=1` on the URL the session holds the broadcast and direct streams from the
connection's first moment (`gates.hold_streams`), so nothing published between the 101 and
the `resume` frame can overtake the replay; room streams are held just before the room
is joined again.

Bounds: what a connection's gates hold, all its streams together, is bounded like its
send queue (`WSAPP_SEND_QUEUE` frames, `WSAPP_SEND_QUEUE_BYTES` bytes, `registry.Held`);
past it a gate has overflowed and the resume reads the history again. A `?resume=1`
connection has `WSAPP_RESUME_TIMEOUT` seconds to send `resume`; then (as when another
frame comes first) its held streams are released without a replay (`gates.open_gates`): what
they hold goes out in order and they are live, or, if one overflowed, the connection is
closed `1008 "resume needed"` (what it missed is in the history: it resumes on its next
connection). A held frame is not counted in `delivered` (`registry.deliver`).

Ownership: `peer.gates` is written by the connection's own greenlet (here, and the
session set-up and end) and by the resume timer, which acts only while the gates are
still `waiting` for the `resume` frame (a parsed `resume` frame ends that before its
first switch); the delivering greenlets only add to a gate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..history import EMPTY, Position, stream_broadcast, stream_direct, stream_room
from ..protocol import FrameError
from ..registry import UNBOUNDED, Join, Peer
from . import gates

if TYPE_CHECKING:
    from ..hub import Hub
    from ..session import Connection

log = logging.getLogger("wsapp.chat.resume")

MAX_ROUNDS = 4  # history re-reads after a gate overflowed before giving up on recovery
MAX_EPOCH_CHARS = 64


def parse_position(value: Any, what: str, msg_id: Any) -> Position:
    if not isinstance(value, dict):
        raise FrameError("missing_field", f'{what} must be an object {{"offset": n, "epoch": "e"}}', msg_id)
    offset, epoch = value.get("offset"), value.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset >= 2**63:
        raise FrameError("missing_field", f"{what}: 'offset' must be a whole number of at least 0", msg_id)
    if not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_CHARS:
        raise FrameError("missing_field", f"{what}: 'epoch' must be a string", msg_id)
    return Position(offset, epoch)


def catch_up(
    peer: Peer, hub: Hub, stream: str, pos: Position, limit: int, max_bytes: int = UNBOUNDED
) -> dict[str, Any]:
    """Replay `stream` after `pos` to `peer` and go live (see the module's docstring).
    `limit` and `max_bytes` bound what the connection's gates hold (its send queue's
    bounds), for a gate made here.

    `replayed` counts the messages read from the history: every one after `pos` up to the
    read, those held since the connection opened included (they are in the history too);
    the ones that arrived while the history was read (Redis: a round trip) follow them,
    uncounted, before the answer, whose `offset` is the last message sent."""
    gate = (peer.gates or {}).get(stream)
    if gate is None or gate.floor >= 0:  # not held yet, or an open gate of an earlier resume
        gate = gates.gate(peer, stream, limit, max_bytes)
    held = peer.gates
    assert held is not None
    ws = peer.ws
    sent = 0
    try:
        replay = hub.replay(stream, pos)
        recovered, last, epoch = replay.recovered, replay.position.offset, replay.position.epoch
        if recovered:
            for _offset, frame in replay.frames:
                ws.send_frame(frame)
                sent += 1
        rounds = 0
        while gate.overflowed and recovered:  # what the gate dropped is in the history
            rounds += 1
            gate.take()
            gate.overflowed = False
            more = hub.replay(stream, Position(last, epoch))
            recovered = more.recovered and rounds <= MAX_ROUNDS
            for _offset, frame in more.frames if recovered else ():
                ws.send_frame(frame)
                sent += 1
            last = more.position.offset
        for offset, frame in gate.take():  # published while we read: only what is newer
            if offset > last:
                ws.send_frame(frame)
                last = offset
    finally:  # open at the last offset sent (messages still on their way are dropped)
        gate.take()
        gate.floor = max(last, 0) if hub.in_flight else 0
        if not hub.in_flight:
            held.pop(stream, None)
            if not held and peer.gates is held:
                peer.gates = None
    return {"recovered": recovered, "replayed": sent, "offset": last, "epoch": epoch}


def handle_resume(conn: Connection, frame: dict[str, Any]) -> int:
    """The `resume` frame: rooms joined again (room rules apply), each stream replayed,
    then one `resumed` frame with a result per stream."""
    msg_id = frame.get("id")
    service = conn.service
    peer, hub, settings = conn.peer, service.hub, service.settings
    wanted: dict[str, Position] = {}
    for key in ("broadcast", "direct"):
        if key in frame:
            wanted[key] = parse_position(frame[key], repr(key), msg_id)
    rooms_in = frame.get("rooms", {})
    if not isinstance(rooms_in, dict) or len(rooms_in) > settings.max_rooms:
        raise FrameError(
            "missing_field", f"'rooms' must map at most {settings.max_rooms} room names to positions", msg_id
        )
    rooms: dict[str, Position] = {}
    for room, value in rooms_in.items():
        if not room or len(room) > protocol.MAX_ROOM_CHARS:
            raise FrameError("missing_field", f"a room name is 1 to {protocol.MAX_ROOM_CHARS} characters", msg_id)
        rooms[room] = parse_position(value, f"room {room!r}", msg_id)

    gates.stop_waiting(peer)  # parsed: this resume owns the gates now (before any switch)
    limit, max_bytes = peer.ws.max_queue, peer.ws.max_queue_bytes  # the send queue's bounds
    on = hub.history_on
    out: dict[str, Any] = {"type": "resumed"}
    streams = {"broadcast": stream_broadcast(), "direct": stream_direct(conn.client_id)}
    for key, stream in streams.items():
        if key in wanted:
            out[key] = catch_up(peer, hub, stream, wanted[key], limit, max_bytes) if on else _lost()
    if gates.open_gates(peer):  # streams held by ?resume=1 but not asked about; overflowed: closed
        return 0
    results: dict[str, Any] = {}
    for room, pos in rooms.items():
        results[room] = _resume_room(conn, room, pos, limit, max_bytes)
    out["rooms"] = results
    conn.send_server_frame(out)
    return 0


def _lost() -> dict[str, Any]:
    return {"recovered": False, "replayed": 0, **EMPTY.wire()}


def _resume_room(conn: Connection, room: str, pos: Position, limit: int, max_bytes: int) -> dict[str, Any]:
    peer, service = conn.peer, conn.service
    if room not in peer.rooms and not conn.service.hooks.may_join(conn.identity, room):
        return {"error": "forbidden", "message": f"you may not join {room!r}"}
    stream = stream_room(room)
    on = service.hub.history_on
    if on:  # held before the join: from the join on, its messages wait for the replay
        gates.gate(peer, stream, limit, max_bytes)
    try:
        result = conn.join_result(room)
    except FrameError as err:
        if on and peer.gates is not None:
            gate = peer.gates.pop(stream, None)
            if gate is not None:
                gate.take()  # what it held goes back to the bound
            if not peer.gates:
                peer.gates = None
        return {"error": err.code, "message": err.message}
    members = service.hub.room_members(room) if result in (Join.NEW_CLIENT, Join.NEW_CONNECTION) else None
    out = catch_up(peer, service.hub, stream, pos, limit, max_bytes) if on else _lost()
    if members is not None:
        out["members"] = members
    return out
