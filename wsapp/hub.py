"""Messaging: who gets what. Chat sessions, resume, the handshake, the HTTP API and the
extension call only this: the backplane is the hub's (the extension only starts and stops it;
tests/test_structure.py checks).

The hub encodes each message once into a WebSocket frame and hands it to the
backplane, which puts the same bytes on every connection it reaches; `delivered` is
the number of connections that took it. Presence follows the contract: the joiner
gets `joined` with the members, the others get `presence` when a client id enters a
room or its last connection there leaves.

Every room operation costs the same however many rooms the client holds: the
registry and the backplane touch only the one room (a disconnect touches each of the
peer's rooms once, and their number is capped by `WSAPP_MAX_ROOMS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gevent

from . import history, protocol
from .backplane import Backplane
from .history import Position, Published, Replay, check_key
from .registry import Departure, Join, Peer, Registry, Target

log = logging.getLogger("wsapp.hub")

# what the server itself sends on /ws/chat: a custom frame type may not be one of these
SERVER_TYPES = frozenset(
    {"welcome", "broadcast", "direct", "room", "joined", "resumed", "presence", "left", "ack", "error"}
)
MAX_TYPE_CHARS = 64


def check_type(frame_type: Any) -> str:
    """A custom frame type an app may send, or ValueError."""
    if not isinstance(frame_type, str) or not 0 < len(frame_type) <= MAX_TYPE_CHARS:
        raise ValueError(f"a frame type is a string of 1 to {MAX_TYPE_CHARS} characters")
    if frame_type in SERVER_TYPES:
        raise ValueError(f"{frame_type!r} is a frame type the server sends itself: choose another")
    return frame_type


def stream_of(room: str | None = None, to: str | None = None, broadcast: bool = False) -> str:
    """The stream of exactly one of: a room, a client id's directs, the broadcast; or ValueError."""
    if sum((room is not None, to is not None, bool(broadcast))) != 1:
        raise ValueError("name exactly one stream: room=, to= or broadcast=True")
    if room is not None:
        return history.stream_room(room)
    if to is not None:
        return history.stream_direct(to)
    return history.stream_broadcast()


@dataclass(frozen=True)
class Page:
    """A read of a stream's history (`Hub.history`). `recovered` False: what came after the
    position cannot be told (a new epoch, a gap older than the history, history off);
    then `texts` is empty and `offset`/`epoch` are where the stream stands now: reload,
    and go on from there. Otherwise `texts` are the JSON texts of the messages after the
    position, in offset order, as clients received them, and `offset`/`epoch` the position
    after the last of them; `more`: the stream has more after it (read again from there)."""

    stream: str
    recovered: bool
    texts: list[str]
    offset: int
    epoch: str
    more: bool

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [protocol.loads(text) for text in self.texts]

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)


class Hub:
    def __init__(
        self,
        registry: Registry,
        backplane: Backplane,
        store_offline: bool = False,
        *,
        max_rooms: int = 100,
        members_limit: int = 1000,
        presence_info: bool = False,
    ) -> None:
        self.registry = registry
        self.backplane = backplane
        self.store_offline = store_offline  # WSAPP_STORE_OFFLINE: keep directs to any client id
        self.max_rooms = max_rooms  # WSAPP_MAX_ROOMS, for the server's own joins (`server_join`)
        self.members_limit = members_limit  # WSAPP_MEMBERS_LIMIT: the most `info` entries a read carries
        self.presence_info = presence_info  # WSAPP_PRESENCE_CLAIMS set: member lists carry `info`
        backplane.on_control = self._on_control  # another node's server_join / server_leave

    # ---- the backplane's state, for the layers above (they ask the hub, never it) -------

    @property
    def history_on(self) -> bool:
        """Messages get positions and are kept; resumes replay (`Backplane.history_on`)."""
        return self.backplane.history_on

    @property
    def in_flight(self) -> bool:
        """A kept message can still be on its way here after its history was read
        (`Backplane.in_flight`): a resumed stream drops the offsets it replayed."""
        return self.backplane.in_flight

    @property
    def healthy(self) -> bool:
        """The backplane reaches the other nodes (`/readyz`)."""
        return self.backplane.healthy

    def connections_elsewhere(self, client_id: str) -> int:
        """Connections `client_id` holds on other nodes (for the per-client limit)."""
        return self.backplane.connections_elsewhere(client_id)

    # ---- connections ----------------------------------------------------------------

    def connect(self, peer: Peer, streams: Sequence[str] = (), touch: str = "") -> list[Position]:
        """Add `peer` here and everywhere; returns where `streams` stand once it counts
        (`Backplane.connected`)."""
        self.registry.add(peer)
        return self.backplane.connected(peer, streams, touch)

    def disconnect(self, peer: Peer) -> None:
        """Take the peer out everywhere at once; tell its rooms if its client id left them.

        Idempotent: a peer already removed (evicted earlier) is left alone. Each step
        runs even if another raised; the first error is raised at the end."""
        self.announce_departure(peer, self.registry.remove(peer))

    def disconnect_client(self, client_id: str, code: int, reason: str) -> int:
        """Close every connection of `client_id` (any route), on every node; returns how
        many (`Backplane.disconnect`)."""
        return self.backplane.disconnect(client_id, code, reason)

    def evict(self, peer: Peer) -> None:
        """The connection dropped `peer` as a slow consumer: out of the registry and its
        rooms now, so nothing more is sent to it and `/api/clients` no longer lists it.

        Called from whichever greenlet was sending to it (a broadcast loop, an API
        request), so the part that does I/O (backplane, presence `leave` to the rooms)
        runs in a greenlet of its own, started at once: the sender never waits, and a
        presence frame that evicts another peer does not recurse into this one."""
        departure = self.registry.remove(peer)
        if departure is not None:
            gevent.spawn(self._announce_logged, peer, departure)

    def _announce_logged(self, peer: Peer, departure: Departure) -> None:
        try:
            self.announce_departure(peer, departure)
        except Exception:
            log.exception("announcing the eviction of conn=%s failed", peer.conn_id)

    def announce_departure(self, peer: Peer, departure: Departure | None) -> None:
        """The backplane half of `disconnect`, for a peer the registry has just removed."""
        if departure is None:
            return
        steps: list[tuple[Any, tuple[Any, ...]]] = [(self.backplane.disconnected, (peer, departure.rooms))]
        if self.backplane.history_on and peer.addressable:  # seen until now: its direct stream stays a window
            direct = history.stream_direct(peer.client_id)
            steps.append((self.backplane.positions, ([], direct)))
        steps += [(self._left, (peer, room)) for room in departure.left]
        first: Exception | None = None
        for step, args in steps:
            try:
                step(*args)
            except Exception as exc:  # one room's failure must not keep the others' presence
                first = first or exc
        if first is not None:
            raise first

    def _left(self, peer: Peer, room: str) -> None:
        if self.backplane.left(peer, room):
            self._announce_leave(peer, room)

    # ---- messages -------------------------------------------------------------------

    # With history on, every message gets its stream's next position and is kept
    # (`Backplane.publish_kept`); off, it is encoded once and published as it always was.
    # Each returns a `Published`: an int (`delivered`) with the message's stream, offset
    # and epoch. `key`: an idempotency key (`check_key`), scoped to the sender and the
    # stream. `frame_type`: the frame's `type` instead of the built-in one (`check_type`);
    # such a frame is live only: no position, not kept, no key. `charged`: a client's own
    # message (a chat frame of a token without the admin role), counted against its
    # history budget (`WSAPP_HISTORY_BYTES_PER_CLIENT`); the server's own publishes are not.

    def broadcast(
        self, sender: str, data: Any, key: str = "", frame_type: str | None = None, *, charged: bool = False
    ) -> Published:
        obj = protocol.broadcast(sender, data)
        return self._publish(Target("all"), history.stream_broadcast(), obj, True, sender, key, frame_type, charged)

    def send(
        self, sender: str, to: str, data: Any, key: str = "", frame_type: str | None = None, *, charged: bool = False
    ) -> Published:
        obj = protocol.direct(sender, to, data)
        return self._publish(Target("client", to), history.stream_direct(to), obj, self.store_offline, sender, key,
                             frame_type, charged)  # fmt: skip

    def send_direct(
        self, sender: str, to: str, data: Any, key: str = "", *, charged: bool = False
    ) -> tuple[Published, bool]:
        """(the result, stored): stored is True when nobody was reached but the message was
        kept in `to`'s direct stream for its next resume."""
        result = self.send(sender, to, data, key, charged=charged)
        return result, result.stored

    def send_to_room(
        self, sender: str, room: str, data: Any, key: str = "", frame_type: str | None = None, *, charged: bool = False
    ) -> Published:
        obj = protocol.room_message(room, sender, data)
        return self._publish(Target("room", room), history.stream_room(room), obj, True, sender, key, frame_type,
                             charged)  # fmt: skip

    def _publish(
        self, target: Target, stream: str, obj: dict[str, Any], create: bool, sender: str, key: str,
        frame_type: str | None, charged: bool = False,
    ) -> Published:  # fmt: skip
        if frame_type is not None and frame_type != obj["type"]:
            obj = {"type": check_type(frame_type), **{k: v for k, v in obj.items() if k != "type"}}
            if key:
                raise ValueError("a frame of a custom type is live only: it takes no idempotency key")
            return Published(self.backplane.publish(target, protocol.text_frame(obj)), stream)
        if key:
            check_key(key)
            if not self.backplane.history_on:
                raise ValueError("idempotency keys need history (WSAPP_HISTORY_SIZE and WSAPP_HISTORY_TTL above 0)")
        if not self.backplane.history_on:
            return Published(self.backplane.publish(target, protocol.text_frame(obj)), stream)
        scoped = f"{len(sender)}:{sender}:{key}" if key else ""  # one sender cannot claim another's key
        return self.backplane.publish_kept(target, stream, obj, create, scoped, charged=charged)

    # ---- reading streams -----------------------------------------------------------------

    def position(self, stream: str) -> Position:
        """Where `stream` stands now ({0, ""}: no such stream, or history off)."""
        if not self.backplane.history_on:
            return history.EMPTY
        return self.backplane.positions([stream])[0]

    def replay(self, stream: str, pos: Position) -> Replay:
        """What `stream` published after `pos`, as frames, or that it cannot be told (a
        resume's catch-up; history on only)."""
        return self.backplane.replay(stream, pos)

    def history(self, stream: str, since: Position | None, limit: int) -> Page:
        """At most `limit` messages of `stream` after `since`, in order (see `Page`); with
        `since` None, the last `limit` it keeps and its position now (a page's first load)."""
        if not self.backplane.history_on:
            return Page(stream, False, [], 0, "", False)
        if since is None:
            tail = self.backplane.tail(stream, max(0, limit))
            texts = [history.frame_text(frame) for _off, frame in tail.frames]
            return Page(stream, tail.recovered, texts, tail.position.offset, tail.position.epoch, False)
        replay = self.backplane.replay(stream, since)
        current = replay.position
        if not replay.recovered:
            return Page(stream, False, [], current.offset, current.epoch, False)
        frames = replay.frames[: max(0, limit)]
        offset = frames[-1][0] if frames else current.offset
        texts = [history.frame_text(frame) for _off, frame in frames]
        return Page(stream, True, texts, offset, current.epoch, len(replay.frames) > len(frames))

    # ---- rooms ------------------------------------------------------------------------

    def join(self, peer: Peer, room: str, max_rooms: int) -> Join:
        """Add the peer to `room` (at most `max_rooms` rooms per connection).

        The backplane hears of every connection's join (its counts are per connection);
        the room hears `presence` only when the client id is new in it everywhere. A
        repeated join, a full or a closed connection change nothing."""
        result = self.registry.join(peer, room, max_rooms)
        if result in (Join.NEW_CLIENT, Join.NEW_CONNECTION):
            new_everywhere = self.backplane.joined(peer, room)
            if result is Join.NEW_CLIENT and new_everywhere:
                info = (peer.info or {}) if self.presence_info else None  # {}: a route that took none
                frame = protocol.text_frame(protocol.presence(room, "join", peer.client_id, info))
                self.backplane.publish(Target("room", room, exclude_client=peer.client_id), frame)
        return result

    def room_members(self, room: str) -> list[str]:
        """The room's client ids, cluster-wide."""
        return self.backplane.room_members(room)

    def member_info(self, room: str, members: list[str]) -> dict[str, dict[str, Any]] | None:
        """The presence entries of the first `WSAPP_MEMBERS_LIMIT` of `members` (a member
        whose token had none of the claims: `{}`), cluster-wide; None when
        `WSAPP_PRESENCE_CLAIMS` is empty (frames and answers then carry no `info`)."""
        if not self.presence_info:
            return None
        shown = members[: self.members_limit]
        found = self.backplane.member_info(room, shown) if shown else {}
        return {cid: found.get(cid, {}) for cid in shown}

    def joined_frame(self, room: str) -> dict[str, Any]:
        """The `joined` frame of a connection new in `room`: its members (cluster-wide), the
        room stream's position (history on), and their presence entries (`info`)."""
        members = self.room_members(room)
        position = None
        if self.backplane.history_on:
            position = self.backplane.positions([history.stream_room(room)])[0].wire()
        return protocol.joined(room, members, position, self.member_info(room, members))

    # ---- the server's own joins (`WSApp.join` / `leave`, the HTTP API) ----------------------

    def server_join(self, client_id: str, room: str) -> int:
        """Put every addressable connection of `client_id`, on every node, in `room`, with the
        frames a chat `join` gets (no room rule: the server decides; `WSAPP_MAX_ROOMS` still
        holds). Returns the connections reached: here, those in the room after it (a full
        one got the `too_many_rooms` error and is not counted), plus the client's
        addressable connections on the other nodes."""
        return self.join_here(client_id, room) + self.backplane.control(client_id, "join", room)

    def server_leave(self, client_id: str, room: str) -> int:
        """Take every connection of `client_id`, on every node, out of `room` (each gets a
        `left` frame). Returns how many were in it (the other nodes' as presence counts them)."""
        return self.leave_here(client_id, room) + self.backplane.control(client_id, "leave", room)

    def _on_control(self, client_id: str, op: str, room: str) -> int:
        if op == "join":
            return self.join_here(client_id, room)
        if op == "leave":
            return self.leave_here(client_id, room)
        return 0

    def join_here(self, client_id: str, room: str) -> int:
        """`server_join` on this node's connections only."""
        reached = 0
        new: list[Peer] = []
        for peer in self.registry.targets(Target("client", client_id)):
            result = self.join(peer, room, self.max_rooms)
            if result is Join.FULL:
                # the very frame a client's `join` gets (`Connection.join_result`)
                message = (
                    f"this connection is in {self.max_rooms} rooms, the most allowed (WSAPP_MAX_ROOMS): leave one first"
                )
                peer.ws.send_frame(protocol.text_frame(protocol.error("too_many_rooms", message)))
            elif result is Join.ALREADY:  # as a repeated `join` answers: no member list again
                peer.ws.send_frame(protocol.text_frame(protocol.joined(room, None)))
                reached += 1
            elif result is not Join.GONE:
                new.append(peer)
        if new:  # one member read for all of them, after they are all in
            frame = protocol.text_frame(self.joined_frame(room))
            for peer in new:
                peer.ws.send_frame(frame)
        return reached + len(new)

    def leave_here(self, client_id: str, room: str) -> int:
        """`server_leave` on this node's connections only."""
        left = 0
        frame = protocol.text_frame(
            {"type": "left", "room": room, "code": "forbidden", "message": f"the server took you out of {room!r}"}
        )
        for peer in self.registry.targets(Target("client", client_id)):
            if room in peer.rooms:
                self.leave(peer, room)
                peer.ws.send_frame(frame)
                left += 1
        return left

    def leave(self, peer: Peer, room: str) -> None:
        if room not in peer.rooms:
            return
        last_here = self.registry.leave(peer, room)
        if self.backplane.left(peer, room) and last_here:
            self._announce_leave(peer, room)

    def _announce_leave(self, peer: Peer, room: str) -> None:
        frame = protocol.text_frame(protocol.presence(room, "leave", peer.client_id))
        self.backplane.publish(Target("room", room, exclude_client=peer.client_id), frame)

    def clients(self) -> dict[str, int]:
        return self.backplane.clients()
