"""Messaging: who gets what. Chat sessions and the HTTP API call only this.

The hub encodes each message once into a WebSocket frame and hands it to the
backplane, which puts the same bytes on every connection it reaches; `delivered` is
the number of connections that took it. Presence follows the contract: the joiner
gets `joined` with the members, the others get `presence` when a client id enters a
room or its last connection there leaves.
"""

from __future__ import annotations

from typing import Any

from . import protocol
from .backplane import Backplane
from .registry import Peer, Registry, Target


class Hub:
    def __init__(self, registry: Registry, backplane: Backplane) -> None:
        self.registry = registry
        self.backplane = backplane

    # ---- connections ----------------------------------------------------------------

    def connect(self, peer: Peer) -> None:
        self.registry.add(peer)
        self.backplane.connected(peer)

    def disconnect(self, peer: Peer) -> None:
        """Take the peer out everywhere at once; tell its rooms if its client id left them."""
        left_rooms = self.registry.remove(peer)
        self.backplane.disconnected(peer)
        for room in left_rooms:
            if self.backplane.left(peer, room):
                self._announce_leave(peer, room)

    # ---- messages -------------------------------------------------------------------

    def broadcast(self, sender: str, data: Any) -> int:
        return self.backplane.publish(Target("all"), protocol.text_frame(protocol.broadcast(sender, data)))

    def send(self, sender: str, to: str, data: Any) -> int:
        frame = protocol.text_frame(protocol.direct(sender, to, data))
        return self.backplane.publish(Target("client", to), frame)

    def send_to_room(self, sender: str, room: str, data: Any) -> int:
        frame = protocol.text_frame(protocol.room_message(room, sender, data))
        return self.backplane.publish(Target("room", room), frame)

    # ---- rooms ------------------------------------------------------------------------

    def join(self, peer: Peer, room: str) -> list[str]:
        """Add the peer to `room`; return the room's members (the peer's client id included).

        The backplane hears of every connection's join (its counts are per connection);
        the room hears `presence` only when the client id is new in it everywhere."""
        entered_here = self.registry.join(peer, room)
        if self.backplane.joined(peer, room) and entered_here:
            frame = protocol.text_frame(protocol.presence(room, "join", peer.client_id))
            self.backplane.publish(Target("room", room, exclude_client=peer.client_id), frame)
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
