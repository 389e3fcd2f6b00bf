"""Messaging: who gets what. Chat sessions and the HTTP API call only this.

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
from typing import Any

import gevent

from . import history, protocol
from .backplane import Backplane
from .registry import Departure, Join, Peer, Registry, Target

log = logging.getLogger("wsapp.hub")


class Hub:
    def __init__(self, registry: Registry, backplane: Backplane, store_offline: bool = False) -> None:
        self.registry = registry
        self.backplane = backplane
        self.store_offline = store_offline  # WSAPP_STORE_OFFLINE: keep directs to any client id

    # ---- connections ----------------------------------------------------------------

    def connect(self, peer: Peer) -> None:
        self.registry.add(peer)
        self.backplane.connected(peer)

    def disconnect(self, peer: Peer) -> None:
        """Take the peer out everywhere at once; tell its rooms if its client id left them.

        Idempotent: a peer already removed (evicted earlier) is left alone. Each step
        runs even if another raised; the first error is raised at the end."""
        self.announce_departure(peer, self.registry.remove(peer))

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

    def broadcast(self, sender: str, data: Any) -> int:
        obj = protocol.broadcast(sender, data)
        return self._publish(Target("all"), history.stream_broadcast(), obj, True)[0]

    def send(self, sender: str, to: str, data: Any) -> int:
        return self.send_direct(sender, to, data)[0]

    def send_direct(self, sender: str, to: str, data: Any) -> tuple[int, bool]:
        """(connections reached, stored): stored is True when nobody was reached but the
        message was kept in `to`'s direct stream for its next resume."""
        obj = protocol.direct(sender, to, data)
        delivered, kept = self._publish(Target("client", to), history.stream_direct(to), obj, self.store_offline)
        return delivered, kept and delivered == 0

    def send_to_room(self, sender: str, room: str, data: Any) -> int:
        obj = protocol.room_message(room, sender, data)
        return self._publish(Target("room", room), history.stream_room(room), obj, True)[0]

    def _publish(self, target: Target, stream: str, obj: dict[str, Any], create: bool) -> tuple[int, bool]:
        if not self.backplane.history_on:
            return self.backplane.publish(target, protocol.text_frame(obj)), False
        return self.backplane.publish_kept(target, stream, obj, create)

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
                frame = protocol.text_frame(protocol.presence(room, "join", peer.client_id))
                self.backplane.publish(Target("room", room, exclude_client=peer.client_id), frame)
        return result

    def room_members(self, room: str) -> list[str]:
        """The room's client ids, cluster-wide."""
        return self.backplane.room_members(room)

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
