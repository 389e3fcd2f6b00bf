"""How a message reaches the connections it is for, on this worker or any other.

The hub talks to three small interfaces: `Delivery` (who gets a frame: publish,
disconnect, the server's joins), `Presence` (who is where: connections, rooms, members)
and `Streams` (history: positions, keeping, replay). `Backplane` is the three over one
transport, with its life (start, stop, healthy): `InProcessBackplane` (the embedded
default) answers from this worker's registry and memory, and the Redis backplane
(`wsapp.redis.backplane`) carries the same calls between workers and hosts. Only the hub
(and the app's start and stop) calls it; nothing above this layer knows which one runs.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from .history import MemoryHistory, Position, Published, Replay, body_prefix
from .registry import Peer, Registry, Target, deliver


def check_close_code(code: int) -> int:
    """A close code a server may send (RFC 6455 §7.4: 1000-1003, 1007-1011, 3000-4999),
    or ValueError: a bad one must fail where it is asked for, not half-way through a close."""
    if isinstance(code, bool) or not isinstance(code, int) or not (code in _SENDABLE or 3000 <= code <= 4999):
        raise ValueError(f"{code!r} is not a close code a server may send (1000-1003, 1007-1011, 3000-4999)")
    return code


_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})


def close_payload(code: int, reason: str) -> bytes:
    """What a `disconnect` carries between nodes in place of a frame."""
    return json.dumps([check_close_code(code), str(reason)]).encode()


def close_local(registry: Registry, client_id: str, payload: bytes) -> int:
    """Close every connection of `client_id` on this worker (any route); how many were open."""
    code, reason = json.loads(payload)
    code = check_close_code(code)
    closed = 0
    for peer in registry.targets(Target("close", client_id)):
        if peer.ws.open:
            peer.ws.close(int(code), str(reason))
            closed += 1
    return closed


class Delivery(ABC):
    """Who gets a frame: this node's connections and, through the backplane, every other
    node's (python-socketio's managers and Centrifugo's broker are the models)."""

    registry: Registry

    @abstractmethod
    def publish(self, target: Target, frame: bytes) -> int:
        """Deliver an encoded frame to every connection `target` names, on every node.

        Returns the number of connections it reached (cluster-wide)."""

    def disconnect(self, client_id: str, code: int, reason: str) -> int:
        """Close every connection of `client_id`, on every node; returns how many (other
        nodes count their addressable connections, as presence does)."""
        return close_local(self.registry, client_id, close_payload(code, reason))

    # server-side subscriptions (`WSApp.join`/`leave`): the hub acts on this node's
    # connections, then the backplane carries the same to the client's other nodes, the way
    # `disconnect` travels (a control message on the client's channel), where the hub's
    # `on_control` acts on theirs
    on_control: Callable[[str, str, str], int] | None = None  # (client id, "join"/"leave", room)

    def control(self, client_id: str, op: str, room: str) -> int:
        """Have the other nodes `op` ("join" or "leave") `client_id`'s connections to `room`;
        returns how many connections they hold for it (join: the client's addressable ones;
        leave: its ones in the room), as `disconnect` counts. No other node here: 0."""
        return 0


class Presence(ABC):
    """Who is where, cluster-wide: connections, rooms, their members and member entries
    (Centrifugo's presence manager is the model). The in-process registry holds it all."""

    registry: Registry

    @abstractmethod
    def room_members(self, room: str) -> list[str]:
        """Client ids in `room`, cluster-wide."""

    @abstractmethod
    def clients(self) -> dict[str, int]:
        """Chat client ids and their connection counts, cluster-wide."""

    def connections_elsewhere(self, client_id: str) -> int:
        """Connections `client_id` holds on other nodes (for the per-client limit)."""
        return 0

    def member_info(self, room: str, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The presence entries (`WSAPP_PRESENCE_CLAIMS`) of `client_ids` in `room`, cluster-wide."""
        return self.registry.member_info(room, client_ids)

    def connected(self, peer: Peer, streams: Sequence[str] = (), touch: str = "") -> list[Position]:
        """`peer` was added to the local registry. Returns where `streams` stand, read once
        the connection counts (so nothing published after the read misses it); `touch` as
        in `Streams.positions`. Redis: one round trip for both, shared with other connects."""
        raise NotImplementedError

    def disconnected(self, peer: Peer, rooms: list[str]) -> None:
        """`peer` was removed from the local registry, and with it from `rooms`."""

    def joined(self, peer: Peer, room: str) -> bool:
        """`peer` joined `room` locally; True if its client id is new in the room everywhere.
        Must cost the same however many rooms the client holds."""
        return True

    def left(self, peer: Peer, room: str) -> bool:
        """`peer` left `room` locally; True if its client id is gone from the room everywhere.
        Must cost the same however many rooms the client holds."""
        return True


class Streams:
    """Message history: positions, keeping, replay (only called when `history_on`)."""

    history_on = False  # True: messages get positions (`publish_kept`), resumes replay
    # True: a kept message can still be on its way to this node after its history was read
    # (Redis: publish and delivery are apart), so a resumed stream drops offsets it replayed
    in_flight = False

    def publish_kept(
        self, target: Target, stream: str, obj: dict[str, Any], create: bool, key: str = "", *, charged: bool = False
    ) -> Published:
        """Give `obj` the next position of `stream`, keep it, deliver it to `target` on
        every node. With `create` False (a direct message) nothing is kept or sent when
        nobody receives it and the stream does not exist (the client id was not seen
        within the history window). With `key` (an idempotency key, already scoped to
        its sender): when `stream` had a publish with that key within the history TTL,
        nothing is sent and that publish's result comes back (`duplicate`), cluster-wide.
        `charged`: a client's own message, counted against its history budget."""
        raise NotImplementedError

    def positions(self, streams: list[str], touch: str = "") -> list[Position]:
        """Where each stream stands; `touch` (a direct stream) is created if missing and
        kept for another history window (its client id was seen now)."""
        raise NotImplementedError

    def replay(self, stream: str, pos: Position) -> Replay:
        """What `stream` published after `pos`, or that it cannot be told."""
        raise NotImplementedError

    def tail(self, stream: str, n: int) -> Replay:
        """The last `n` messages `stream` keeps, oldest first, and where it stands now (one
        read: the position is the last message's). `recovered` False: it cannot be read."""
        raise NotImplementedError


class Backplane(Delivery, Presence, Streams):
    """The three interfaces the hub talks to, over one transport (this worker's memory,
    or Redis), with the life of that transport."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def start(self) -> None:
        """Begin listening (called once the worker serves)."""

    def stop(self) -> None:
        """Stop listening and forget this node's presence."""

    @property
    def healthy(self) -> bool:
        return True

    def connected(self, peer: Peer, streams: Sequence[str] = (), touch: str = "") -> list[Position]:
        return self.positions(list(streams), touch) if streams else []


class InProcessBackplane(Backplane):
    """One worker: the local registry is the whole truth, the history is in its memory."""

    def __init__(self, registry: Registry, history: MemoryHistory | None = None) -> None:
        super().__init__(registry)
        self.history = history
        self.history_on = history is not None

    def publish_kept(
        self, target: Target, stream: str, obj: dict[str, Any], create: bool, key: str = "", *, charged: bool = False
    ) -> Published:
        history = self.history
        assert history is not None
        if key:
            prior = history.seen(stream, key)
            if prior is not None:
                return prior.again()
        peers = self.registry.targets(target)
        if not create and not peers and not history.exists(stream):
            return Published(0, stream)
        # no switch from here to the last queued frame: offsets go out in order
        offset, frame = history.append(stream, body_prefix(obj))
        epoch = history.position(stream).epoch
        result = Published(deliver(peers, frame, stream, offset), stream, offset, epoch, kept=True)
        if key:
            history.remember(stream, key, result)
        return result

    def positions(self, streams: list[str], touch: str = "") -> list[Position]:
        history = self.history
        assert history is not None
        if touch:
            history.touch(touch)
        return [history.position(s) for s in streams]

    def replay(self, stream: str, pos: Position) -> Replay:
        assert self.history is not None
        return self.history.since(stream, pos)

    def tail(self, stream: str, n: int) -> Replay:
        assert self.history is not None
        return self.history.tail(stream, n)

    def publish(self, target: Target, frame: bytes) -> int:
        return deliver(self.registry.targets(target), frame)

    def room_members(self, room: str) -> list[str]:
        return self.registry.room_members(room)

    def clients(self) -> dict[str, int]:
        return self.registry.clients()
