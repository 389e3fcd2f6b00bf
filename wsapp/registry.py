"""Who is connected to this worker: the one owner of the connection maps.

`Registry` alone touches its maps, each change under `self._lock` (a `threading.Lock`,
which gunicorn's gevent worker turns into a greenlet lock). No method does I/O while
holding it, so it is never held across a switch; sending happens on snapshots, outside.

It also owns admission: `reserve()` counts a connection against the per-worker and
per-client limits (and refuses during shutdown) before the upgrade, atomically with
the count, so two handshakes cannot both take the last slot. It hands back a `Slot`
whose `release()` gives the count back exactly once, however many cleanup paths call it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .connection import WebSocket
from .errors import HandshakeRejected


@dataclass(eq=False, slots=True)  # slots: no __dict__ per connection
class Peer:
    """One connection of one client, as the rest of the service sees it."""

    ws: WebSocket
    client_id: str
    is_admin: bool
    expires_at: float  # the token's exp, unix seconds
    remote_addr: str
    route: str  # the route's name (its view function's), for logs and metrics
    rooms: set[str] = field(default_factory=set)
    connected_at: float = field(default_factory=time.time)
    # a route option: messages to everyone or to a client id (send/broadcast) reach
    # addressable connections only; room messages reach whoever joined the room
    addressable: bool = True
    # a route option: answers `resume` (the built-in chat); such a connection is closed with
    # 1012 when this node's backplane comes back after an outage, so its client resumes
    resumable: bool = False
    # streams whose live messages are held while a resume replays them (`wsapp.chat.resume`):
    # None (the usual case: one check per delivery) or stream -> its Gate. Written by the
    # connection's own greenlet (and by its resume timer, only while no `resume` frame has
    # begun: `Held.waiting`), read by whoever delivers; no switch in between.
    gates: dict[str, Gate] | None = None
    # the member entry rooms show for it (`WSAPP_PRESENCE_CLAIMS`: its token's claims, bounded;
    # `protocol.presence_info`), None when no claim is configured. Set by the route before it joins.
    info: dict[str, Any] | None = None

    @property
    def conn_id(self) -> str:
        return self.ws.conn_id


UNBOUNDED = 1 << 62  # a byte bound that never binds (a lone Gate made without one)


class Held:
    """What one connection's gates hold, all its streams together, and the bound on it:
    the connection's send-queue bounds (`WSAPP_SEND_QUEUE` frames, `WSAPP_SEND_QUEUE_BYTES`
    bytes), so a connection that never sends `resume` parks no more than one send queue's
    worth. `waiting`: its gates are those of `?resume=1`, still waiting for the `resume`
    frame (the resume timer may open them); `timer`: that timer, cancelled once they go."""

    __slots__ = ("frames", "max_bytes", "max_frames", "nbytes", "timer", "waiting")

    def __init__(self, max_frames: int, max_bytes: int = UNBOUNDED) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = 0
        self.nbytes = 0
        self.waiting = False
        self.timer: Any = None  # a gevent Greenlet (spawn_later), or None


class Gate:
    """Live messages of one stream held for a connection while a resume replays it, as
    (offset, frame) pairs, within the connection's `Held` bound (shared by its gates);
    past it the gate has `overflowed` (the rest are in the history, and the resume reads it
    again). Once the replay is sent the gate opens at `floor`, the last offset sent: a
    message still on its way from Redis with an offset at or below it is a duplicate and
    dropped, and the first one above it removes the gate. `Gate(limit)` alone has a bound
    of its own (`limit` frames, `max_bytes` bytes)."""

    __slots__ = ("budget", "floor", "held", "overflowed")

    def __init__(self, limit: int = 0, max_bytes: int = UNBOUNDED, budget: Held | None = None) -> None:
        self.held: list[tuple[int, bytes]] = []
        self.budget = budget if budget is not None else Held(limit, max_bytes)
        self.overflowed = False
        self.floor = -1  # -1: closed (holding)

    def hold(self, offset: int, frame: bytes) -> None:
        b = self.budget
        if b.frames < b.max_frames and b.nbytes + len(frame) <= b.max_bytes:
            self.held.append((offset, frame))
            b.frames += 1
            b.nbytes += len(frame)
        else:
            self.overflowed = True

    def take(self) -> list[tuple[int, bytes]]:
        """The held frames, in order; the gate holds none after, and its bound has them back."""
        held, self.held = self.held, []
        b = self.budget
        b.frames -= len(held)
        b.nbytes -= sum(len(frame) for _offset, frame in held)
        return held


def holding(peer: Peer, stream: str) -> bool:
    """Does `peer` hold `stream` for a resume now (a closed gate)? Then a message of it is
    parked, not delivered, and `delivered` does not count it."""
    gates = peer.gates
    if gates is None:
        return False
    gate = gates.get(stream)
    return gate is not None and gate.floor < 0


def receiving(peers: Iterable[Peer], stream: str) -> int:
    """How many of `peers` take a message of `stream` now: those not holding it."""
    return sum(1 for p in peers if not holding(p, stream))


@dataclass(frozen=True)
class Target:
    """Who a message goes to: everyone, one client id, or one room."""

    kind: str  # "all" | "client" | "room" | "close" (every connection of client `key`, any route)
    key: str = ""
    exclude_client: str = ""  # for presence: everyone in the room but the one who moved


class Join(enum.Enum):
    """What `Registry.join` did."""

    NEW_CLIENT = "new_client"  # the peer's client id was not in the room on this worker
    NEW_CONNECTION = "new_connection"  # its client id was, through another connection
    ALREADY = "already"  # this connection was in the room already: nothing changed
    FULL = "full"  # the connection is in the most rooms allowed: nothing changed
    GONE = "gone"  # the peer has left the registry (closed, evicted): nothing changed


@dataclass(frozen=True)
class Departure:
    """What `Registry.remove` took away: every room the peer was in, and those its
    client id has left on this worker with it (no other connection of it there)."""

    rooms: list[str]
    left: list[str]


class Slot:
    """One reserved connection; `release()` is idempotent (the session's `finally`, the
    greenlet's exit and the request's teardown may all call it)."""

    def __init__(self, registry: Registry, client_id: str) -> None:
        self.registry = registry
        self.client_id = client_id
        self.released = False

    def release(self) -> bool:
        """Give the slot back; True the first time, False (and no change) after that."""
        if self.released:
            return False
        self.released = True
        self.registry.release(self.client_id)
        return True


class Registry:
    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.draining = False
        self._lock = threading.Lock()  # guards every attribute below
        self._count = 0  # connections held or reserved on this worker
        self._per_client: dict[str, int] = {}  # client id -> connections held or reserved
        self._peers: set[Peer] = set()
        self._by_client: dict[str, set[Peer]] = {}  # addressable peers only
        self._any_route: dict[str, int] = {}  # client id -> its peers on any route
        self._rooms: dict[str, dict[str, set[Peer]]] = {}  # room -> client id -> its peers there

    # ---- admission ----------------------------------------------------------------------

    def reserve(self, client_id: str, elsewhere: int = 0) -> Slot:
        """Count one more connection for `client_id`, or refuse with 503/429.

        `elsewhere` is what the client holds on other nodes (the backplane's answer), so
        the per-client limit is cluster-wide with Redis; the local count is exact and
        atomic, the remote one as fresh as the other nodes' presence."""
        with self._lock:
            if self.draining:
                raise HandshakeRejected("shutting_down")
            if self._count >= self.max_connections:
                raise HandshakeRejected("server_busy")
            held = self._per_client.get(client_id, 0) + elsewhere
            if held >= self.max_per_client:
                raise HandshakeRejected(
                    "too_many_connections",
                    f"client {client_id!r} already holds {held} connections (the limit is {self.max_per_client})",
                )
            self._count += 1
            self._per_client[client_id] = self._per_client.get(client_id, 0) + 1
        return Slot(self, client_id)

    def release(self, client_id: str) -> bool:
        """Give back a reservation (the upgrade failed, or the peer has gone); prefer
        `Slot.release`. False (and no change) if `client_id` holds none."""
        with self._lock:
            held = self._per_client.get(client_id, 0)
            if held <= 0:
                return False
            self._count -= 1
            if held > 1:
                self._per_client[client_id] = held - 1
            else:
                del self._per_client[client_id]
            return True

    # ---- membership ---------------------------------------------------------------------

    def add(self, peer: Peer) -> None:
        with self._lock:
            self._peers.add(peer)
            self._any_route[peer.client_id] = self._any_route.get(peer.client_id, 0) + 1
            if peer.addressable:
                self._by_client.setdefault(peer.client_id, set()).add(peer)

    def remove(self, peer: Peer) -> Departure | None:
        """Take the peer out of every map; None if it was not in them (removed already)."""
        with self._lock:
            if peer not in self._peers:
                return None
            self._peers.discard(peer)
            if self._any_route[peer.client_id] > 1:
                self._any_route[peer.client_id] -= 1
            else:
                del self._any_route[peer.client_id]
            peers = self._by_client.get(peer.client_id)
            if peers is not None:
                peers.discard(peer)
                if not peers:
                    del self._by_client[peer.client_id]
            rooms = list(peer.rooms)
            left = [room for room in rooms if self._leave_locked(peer, room)]
            peer.rooms.clear()
            return Departure(rooms, left)

    def join(self, peer: Peer, room: str, max_rooms: int) -> Join:
        """Put the peer in `room` unless it already holds `max_rooms` rooms. O(1)."""
        with self._lock:
            if peer not in self._peers:
                return Join.GONE
            if room in peer.rooms:
                return Join.ALREADY
            if len(peer.rooms) >= max_rooms:
                return Join.FULL
            members = self._rooms.setdefault(room, {})
            entered = peer.client_id not in members
            members.setdefault(peer.client_id, set()).add(peer)
            peer.rooms.add(room)
            return Join.NEW_CLIENT if entered else Join.NEW_CONNECTION

    def leave(self, peer: Peer, room: str) -> bool:
        """Take the peer out of `room`; True if that was its client id's last connection there."""
        with self._lock:
            if room not in peer.rooms:
                return False
            peer.rooms.discard(room)
            return self._leave_locked(peer, room)

    def _leave_locked(self, peer: Peer, room: str) -> bool:
        """`room` is in `peer.rooms`: then the maps hold the peer there (one lock keeps them in step)."""
        members = self._rooms[room]
        peers = members[peer.client_id]
        peers.discard(peer)
        if peers:
            return False
        del members[peer.client_id]
        if not members:
            del self._rooms[room]
        return True

    # ---- reading ----------------------------------------------------------------------

    def targets(self, target: Target) -> list[Peer]:
        """A snapshot of the peers a message to `target` reaches on this worker."""
        with self._lock:
            if target.kind == "all":
                return [p for peers in self._by_client.values() for p in peers]
            if target.kind == "client":
                return list(self._by_client.get(target.key, ()))
            if target.kind == "close":  # rare (revoking access): a scan of every connection
                return [p for p in self._peers if p.client_id == target.key]
            members = self._rooms.get(target.key, {})
            return [p for cid, peers in members.items() if cid != target.exclude_client for p in peers]

    def client_count(self, client_id: str) -> int:
        """Addressable connections `client_id` holds on this worker. O(1)."""
        with self._lock:
            return len(self._by_client.get(client_id, ()))

    def room_count(self, room: str, client_id: str) -> int:
        """Connections of `client_id` in `room` on this worker. O(1)."""
        with self._lock:
            return len(self._rooms.get(room, {}).get(client_id, ()))

    def holds(self, client_id: str) -> bool:
        """Does this worker hold a connection of `client_id`, on any route? O(1)."""
        with self._lock:
            return client_id in self._any_route

    def has_room(self, room: str) -> bool:
        """Does this worker hold a connection in `room`? O(1)."""
        with self._lock:
            return room in self._rooms

    def room_members(self, room: str) -> list[str]:
        with self._lock:
            return sorted(self._rooms.get(room, {}))

    def member_info(self, room: str, client_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The presence entries (`Peer.info`) of those of `client_ids` in `room` on this worker,
        one connection's each (the newest with one). O(len(client_ids))."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            members = self._rooms.get(room, {})
            for cid in client_ids:
                infos = [(p.connected_at, p.info) for p in members.get(cid, ()) if p.info is not None]
                if infos:
                    out[cid] = max(infos, key=lambda pair: pair[0])[1]
        return out

    def clients(self) -> dict[str, int]:
        """Addressable client ids on this worker and how many connections each holds."""
        with self._lock:
            return {cid: len(peers) for cid, peers in self._by_client.items()}

    def peers(self) -> list[Peer]:
        """A snapshot of every connection (any route), for heartbeats and shutdown."""
        with self._lock:
            return list(self._peers)

    @property
    def held(self) -> int:
        """Connections held or reserved on this worker; a session gives its slot back last."""
        with self._lock:
            return self._count


def deliver(peers: Iterable[Peer], frame: bytes, stream: str = "", offset: int = 0) -> int:
    """Queue one encoded frame on each peer; never waits. Returns how many took it.

    A message of a stream (with its offset) goes to a peer's gate instead when the peer
    holds that stream for a resume; it is not counted (the peer may never resume: it gets
    the message from its resume, or when its gates open, and the history keeps it)."""
    n = 0
    for p in peers:
        gates = p.gates
        if gates is not None and stream in gates:
            gate = gates[stream]
            if gate.floor < 0:
                gate.hold(offset, frame)
                continue
            if offset <= gate.floor:  # the replay sent it
                n += 1
                continue
            del gates[stream]
            if not gates:
                p.gates = None
        if p.ws.send_frame(frame):
            n += 1
    return n
