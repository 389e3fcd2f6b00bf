"""The Redis backplane: every worker on every host acts as one service.

Who owns what:

* Messages. Every target (the broadcast, a client id, a room) has its own channel, and a
  node subscribes to a target's channel only while it holds a connection the target
  reaches (`wsapp.redis.subscriber`): a node never receives, let alone decodes, a
  message it has nobody to deliver to. `publish` delivers to this worker's peers at
  once (no round trip, and it keeps working while Redis is away), then one Lua script
  on the target's keys reads which other nodes hold receivers and publishes the frame
  on the target's channel if there are any. Redis keeps a channel's messages in publish
  order, so a sender's messages to one target arrive in send order on every node.
  `delivered` is the local count plus the live other nodes' registered connections.
* Presence. Each node writes its own part of each target's keys (node -> count) and its
  own index (`{n:<node>}:c`, `:r`); its liveness is a deadline in the sorted set
  `wsapp:{nodes}`, in Redis server time. Readers ignore nodes past their deadline, so a
  node killed with -9 stops counting at most `WSAPP_REDIS_PRESENCE_TTL` after its last
  heartbeat; the next live heartbeat that sees it dead removes its entries (one claim:
  one reaper) and announces `presence leave` for the room members that went with it.
* One greenlet per worker (the supervisor) beats the heart and reconnects with backoff
  after an error, re-subscribing and re-registering this node's whole presence from the
  registry (a restarted Redis has lost it). One reader greenlet per Redis server reads
  that server's pub/sub connection.

Presence writes are absolute values computed from the registry, serialised by
`self._lock`, and a mirror of what Redis holds makes each write a small diff. A
connect, join or leave writes only the client's count and the one room's count (O(1)
however many rooms the client holds); a disconnect, each room the peer was in; the
heartbeat's reconcile and a reconnect rewrite everything.
The key layout (`wsapp.redis.keys`), wire format (`wsapp.redis.wire`) and Lua scripts
(`wsapp.redis.bus`) are shared with `wsapp.emitter`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent
import redis
from gevent.event import Event

from .. import protocol
from ..backplane import Backplane, close_local, close_payload
from ..errors import CloseCode
from ..frames import OP_TEXT, encode_frame
from ..history import ENTRY_COST, UNKNOWN, Position, Published, Replay, body_prefix
from ..logsafe import safe
from ..metrics import HISTORY_LOST, HISTORY_OVER_BUDGET
from ..registry import Peer, Registry, Target, deliver, receiving
from ..settings import Settings
from .bus import Bus, Op
from .connect import COMMAND_TIMEOUT_S, REDIS_ERRORS, connect
from .keys import WriteKey, Writes, node_id, target_tag
from .subscriber import Subscriber, SubscribeTimeout
from .wire import decode_envelope, decode_kept

log = logging.getLogger("wsapp.redis")

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0  # reconnect delay, doubled after each failed attempt
POLL_S = 0.5  # the supervisor looks at `healthy` and the clock at least this often
ERRORS = (*REDIS_ERRORS, SubscribeTimeout)
BATCH_MAX = 500  # presence requests written in one round trip
POSITION_COST = 64  # bytes a kept message's text grows by (offset, epoch), counted in its budget
LOST_LOG_EVERY_S = 10.0  # history writes Redis refused: one log line at most this often
MAX_CONTROLS = 10_000  # other nodes' server joins/leaves waiting here; past it one is dropped (logged)
# streams one node may deliver to while Redis is away (each is marked lost when it is back:
# `_unkept`); past it a message is delivered to nobody rather than leave a gap no one hears of
UNKEPT_MAX = 100_000
RESUME_CLOSE_REASON = "backplane reconnected: resume"  # close 1012 at a reconnect (`_after_outage`)


class _Request:
    """One presence write (`ops` None) or one read (its `ops`) waiting for the writer greenlet."""

    __slots__ = ("answer", "ask", "cid", "done", "ops", "results", "rooms")

    def __init__(self, cid: str, rooms: tuple[str, ...], ask: str | None, ops: list[Op] | None = None) -> None:
        self.cid, self.rooms, self.ask, self.ops = cid, rooms, ask, ops
        self.answer = False
        self.results: list[Any] | None = None  # a read's results, None if it failed
        self.done = Event()


class _Mirror:
    """What Redis holds for this node, as this node last wrote it (guarded by RedisBackplane._lock)."""

    def __init__(self) -> None:
        self.clients: dict[str, int] = {}  # client id -> addressable connections here
        self.rooms: dict[str, dict[str, int]] = {}  # client id -> room -> its connections in the room here
        self.room_totals: dict[str, int] = {}
        self.total = 0

    def set(self, cid: str, n: int, rooms: dict[str, int], writes: Writes) -> None:
        """Record `cid`'s whole local state; add to `writes` the `WriteKey` -> value changes (0 deletes)."""
        self.set_client(cid, n, writes)
        for room in self.rooms.get(cid, {}).keys() | rooms.keys():
            self.set_room(cid, room, rooms.get(room, 0), writes)

    def set_client(self, cid: str, n: int, writes: Writes) -> None:
        """Record that `cid` holds `n` addressable connections here."""
        old_n = self.clients.get(cid, 0)
        if n != old_n:
            self.total += n - old_n
            writes[WriteKey.client(cid)] = n
            writes[WriteKey.total()] = self.total
            _put(self.clients, cid, n)

    def set_room(self, cid: str, room: str, n: int, writes: Writes) -> None:
        """Record that `cid` has `n` connections in `room` here. O(1)."""
        mine = self.rooms.get(cid, {})
        delta = n - mine.get(room, 0)
        if not delta:
            return
        writes[WriteKey.member(room, cid)] = n
        total = self.room_totals.get(room, 0) + delta
        writes[WriteKey.room_total(room)] = total
        _put(self.room_totals, room, total)
        _put(mine, room, n)
        if mine:
            self.rooms[cid] = mine
        else:
            self.rooms.pop(cid, None)


class _Budget:
    """This node's side of each sender's history budget (`WSAPP_HISTORY_BYTES_PER_CLIENT`).

    The count is in Redis (`Bus.charge`: one counter per client id, cluster-wide, for one
    `WSAPP_HISTORY_TTL` window from its first grant). A node takes the budget a lease at a
    time (a sixteenth of it, or the message if bigger) and spends it here, so a sender's
    messages cost a round trip per lease, not per message; leases a node does not spend
    are lost for the window (the bound errs on the side of keeping less). A sender past
    its budget is not asked about again before its window ends: its messages then cost
    Redis nothing. Not thread-safe: the worker's greenlets only."""

    LEASES = 16
    MAX_SENDERS = 10_000  # senders remembered; past it the expired go (then all: leases are lost, not the bound)

    def __init__(self, bus: Bus, budget: int, ttl_s: float) -> None:
        self.bus, self.budget, self.ttl_s = bus, budget, ttl_s
        self.lease = max(1, budget // self.LEASES)
        self._left: dict[str, tuple[int, float]] = {}  # sender -> (bytes granted not spent, window end)
        self._over: dict[str, float] = {}  # sender -> end of the window it is past its budget in

    def allow(self, sender: str, cost: int) -> tuple[bool, bool]:
        """(keep the message, the sender went past its budget just now). Raises Redis errors."""
        now = time.monotonic()
        left, until = self._left.get(sender, (0, 0.0))
        if until <= now:
            left = 0
        if left >= cost:
            self._left[sender] = (left - cost, until)
            return True, False
        over = self._over.get(sender)
        if over is not None and over > now:
            return False, False
        self._prune(now)
        granted, window_s = self.bus.charge(sender, max(cost - left, self.lease), cost - left, self.budget, self.ttl_s)
        until = time.monotonic() + window_s
        if not granted:
            self._over[sender] = until
            self._left.pop(sender, None)
            return False, True
        self._over.pop(sender, None)
        self._left[sender] = (left + granted - cost, until)
        return True, False

    def _prune(self, now: float) -> None:
        if len(self._left) + len(self._over) < self.MAX_SENDERS:
            return
        self._left = {k: v for k, v in self._left.items() if v[1] > now}
        self._over = {k: v for k, v in self._over.items() if v > now}
        if len(self._left) + len(self._over) >= self.MAX_SENDERS:
            self._left, self._over = {}, {}


def _put(d: dict[str, int], k: str, v: int) -> None:
    if v:
        d[k] = v
    else:
        d.pop(k, None)


class RedisBackplane(Backplane):
    def __init__(self, registry: Registry, settings: Settings) -> None:
        super().__init__(registry)
        self.heartbeat_s = settings.redis_heartbeat_s
        self.presence_ttl_s = settings.redis_presence_ttl_s
        self.node_id = node_id(socket.gethostname(), os.getpid(), secrets.token_hex(3))
        self.bus = Bus(connect(settings.redis_url, name=f"wsapp-{self.node_id}"), self.node_id, self.heartbeat_s)
        self.history_on = self.in_flight = settings.history_on
        self.history_size, self.history_ttl_s = settings.history_size, settings.history_ttl_s
        per_client = settings.history_bytes_per_client
        self.budget = _Budget(self.bus, per_client, self.history_ttl_s) if per_client > 0 else None
        self._lost_logged = -1e18  # monotonic time of the last "history write refused" line
        self._lost_since = 0  # refused since that line
        self._policy_checked = False
        # Held across Redis round trips on purpose: this node's presence writes must reach
        # Redis in the order they were computed, and the mirror must match what was written.
        self._lock = threading.Lock()
        self._mirror = _Mirror()
        self._healthy = False  # True only while subscribed and presence is registered
        # streams this node delivered to while Redis was away, without a position and unkept:
        # their epochs are ended when it is back, so no resume elsewhere claims to recover
        # across those messages (an ordered set; written by publishers, drained by `_connect`)
        self._unkept: dict[str, None] = {}
        self._unkept_refused = 0  # publishes delivered to nobody: `_unkept` was full
        self._stopping = False
        self.subscriber = Subscriber(self.bus, self._on_message, self._lost)
        self.subscriber.wanted.add(self._channel(Target("all")))  # broadcasts: every node
        self._supervisor: gevent.Greenlet | None = None
        self._requests: list[_Request] = []  # presence writes waiting for the writer
        self._writer: gevent.Greenlet | None = None
        self.presence_on = bool(settings.presence_claims)  # member entries carry info (`<room tag>:i`)
        self._controls: deque[tuple[str, str, str]] = deque()  # other nodes' joins/leaves, in order
        self._controller: gevent.Greenlet | None = None

    def _channel(self, target: Target) -> str:
        return self.bus.channel(target_tag(target))

    # ---- life ---------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._connect()  # serve ready from the start when Redis is there
        except ERRORS as exc:
            self._lost(exc)
        # the supervisor: beats the heart, reconnects; one per worker
        self._supervisor = gevent.spawn(self._supervise)

    def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.kill(block=True, timeout=COMMAND_TIMEOUT_S)
        self.subscriber.close()
        if self._healthy:
            self._healthy = False
            try:
                self.bus.unregister()
            except REDIS_ERRORS:
                pass  # the TTL will do it
        self.bus.client.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    # ---- messages -----------------------------------------------------------------------

    def publish(self, target: Target, frame: bytes) -> int:
        local = deliver(self.registry.targets(target), frame)
        if not self._healthy:
            return local
        try:
            return local + self.bus.publish(target, frame)
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return local

    # ---- history: one script per message keeps it and publishes it to every receiver ----

    def publish_kept(
        self, target: Target, stream: str, obj: dict[str, Any], create: bool, key: str = "", *, charged: bool = False
    ) -> Published:
        """This node's peers get the message from the stream's channel too, so every node
        delivers a stream's messages in offset order (one channel per stream, ordered).
        While Redis is away the message goes to this node's peers only, without a
        position, unkept (and an idempotency key is not checked: nothing can be)."""
        peers = self.registry.targets(target)
        here = len(peers)  # every receiver here gets it from the channel, held ones too
        if self._healthy:
            prefix = body_prefix(obj)
            try:
                store = not charged or self._within_budget(obj.get("from"), prefix, stream)
                size, ttl = self.history_size, self.history_ttl_s
                # `delivered` leaves out the connections here holding the stream for a resume
                counted = receiving(peers, stream)
                kept = self.bus.publish_at(target, stream, prefix, here, create, size, ttl, store, key, counted)
                if kept.duplicate:
                    return Published(kept.others, stream, kept.offset, kept.epoch, kept.status == 1, True)
                if kept.status == 0:
                    return Published(0, stream)
                return Published(counted + kept.others, stream, kept.offset, kept.epoch, store)
            except redis.exceptions.OutOfMemoryError as exc:
                return Published(self._publish_lost(target, stream, obj, exc)[0], stream)
            except REDIS_ERRORS as exc:
                self._lost(exc)
        return self._publish_unkept(target, stream, obj)

    def _publish_unkept(self, target: Target, stream: str, obj: dict[str, Any]) -> Published:
        """Redis is away: deliver to this node's receivers only, without a position, and
        remember the stream so its epoch ends when Redis is back (`_connect`): receivers on
        other nodes missed this message, and a resume must not say `recovered: true` across it."""
        if stream not in self._unkept:
            if len(self._unkept) >= UNKEPT_MAX:
                self._unkept_refused += 1
                if self._unkept_refused == 1:
                    log.warning("redis backplane down: %d streams had messages delivered on this node only; "
                                "further messages to other streams are delivered to nobody until Redis is back",
                                UNKEPT_MAX)  # fmt: skip
                return Published(0, stream)
            self._unkept[stream] = None
        return Published(deliver(self.registry.targets(target), protocol.text_frame(obj)), stream)

    def _within_budget(self, sender: Any, prefix: str, stream: str) -> bool:
        """May `sender`'s message be kept (`WSAPP_HISTORY_BYTES_PER_CLIENT`)? Past the budget
        it is delivered with a position but not kept: a gap no resume recovers across."""
        if self.budget is None or not isinstance(sender, str):
            return True
        cost = len(prefix.encode("utf-8", "surrogatepass")) + POSITION_COST + ENTRY_COST
        keep, went_over = self.budget.allow(sender, cost)
        if went_over:
            log.warning("history: client %s is past WSAPP_HISTORY_BYTES_PER_CLIENT=%d for this window; its "
                        "messages are delivered but not kept (stream %s and the next)", safe(sender),
                        self.budget.budget, safe(stream))  # fmt: skip
        if not keep:
            HISTORY_OVER_BUDGET.inc()
        return keep

    def _publish_lost(self, target: Target, stream: str, obj: dict[str, Any], exc: BaseException) -> tuple[int, bool]:
        """Redis refused to keep the message (full): deliver it all the same, without a
        position, and forget the stream's history so no resume claims to recover across it.
        The backplane stays up: presence and delivery do not depend on history."""
        HISTORY_LOST.inc()
        self._lost_since += 1
        now = time.monotonic()
        if now - self._lost_logged >= LOST_LOG_EVERY_S:
            log.warning("history: Redis refused to keep a message (%s); delivered it without history, stream %s "
                        "(and %d more refused since the last such line) not recoverable across it; see "
                        "maxmemory-policy in docs/scaling.md", safe(exc), safe(stream),
                        self._lost_since - 1)  # fmt: skip
            self._lost_logged, self._lost_since = now, 0
        frame = protocol.text_frame(obj)
        local = deliver(self.registry.targets(target), frame)
        try:
            return local + self.bus.publish_lost(target, frame), False
        except REDIS_ERRORS as exc2:
            self._lost(exc2)
            return local, False

    def positions(self, streams: list[str], touch: str = "") -> list[Position]:
        """Read with the writer's next batch (one round trip for a storm of welcomes). Only
        a touch (a disconnect renewing its direct stream) does not wait for its answer."""
        if not self._healthy:
            return [UNKNOWN for _ in streams]
        ops, decode = self.bus.position_ops(streams, touch, self.history_ttl_s)
        request = _Request("", (), None, ops)
        self._enqueue(request)
        if not streams:
            return []
        request.done.wait()
        return decode(request.results) if request.results is not None else [UNKNOWN for _ in streams]

    def replay(self, stream: str, pos: Position) -> Replay:
        if self._healthy:
            try:
                return self.bus.since(stream, pos, self.history_ttl_s)
            except REDIS_ERRORS as exc:
                self._lost(exc)
        return Replay(False, [], UNKNOWN)

    def tail(self, stream: str, n: int) -> Replay:
        if self._healthy:
            try:
                return self.bus.tail(stream, n, self.history_ttl_s)
            except REDIS_ERRORS as exc:
                self._lost(exc)
        return Replay(False, [], UNKNOWN)

    def disconnect(self, client_id: str, code: int, reason: str) -> int:
        payload = close_payload(code, reason)
        local = close_local(self.registry, client_id, payload)
        if not self._healthy:
            return local
        try:
            return local + self.bus.publish(Target("close", client_id), payload)
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return local

    # ---- server-side subscriptions: carried like `disconnect`, on the client's channel ----

    def control(self, client_id: str, op: str, room: str) -> int:
        """A `control` envelope ([op, room]) to the client's other nodes, which act on their
        connections (`on_control`, in order, in a greenlet of their own). Returns what they
        hold: join, the client's addressable connections; leave, its connections in the room."""
        if not self._healthy:
            return 0
        payload = json.dumps([op, room]).encode()
        try:  # a leave's count is read first: the other nodes may act on it before the publish returns
            in_room = self.bus.room_count_elsewhere(room, client_id) if op == "leave" else 0
            reached = self.bus.publish(Target("control", client_id), payload)
            return in_room if op == "leave" else reached
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return 0

    def _on_control(self, client_id: str, payload: bytes) -> None:
        """Queue another node's join/leave for this node's connections; the control
        greenlet runs them one after another (a join then a leave stay in that order),
        never in the reader (they make round trips)."""
        op, room = json.loads(payload)
        if op not in ("join", "leave") or not isinstance(room, str) or not room:
            raise ValueError("not a join or leave")
        if len(self._controls) >= MAX_CONTROLS:
            log.warning("redis backplane: dropped a server %s of %s to %s: %d waiting already",
                        op, safe(client_id), safe(room), MAX_CONTROLS)  # fmt: skip
            return
        self._controls.append((client_id, str(op), room))
        if self._controller is None:
            self._controller = gevent.spawn(self._run_controls)

    def _run_controls(self) -> None:
        try:
            while self._controls:
                client_id, op, room = self._controls.popleft()
                handler = self.on_control
                if handler is None:
                    continue
                try:
                    handler(client_id, op, room)
                except Exception:
                    log.exception("redis backplane: a server %s of %s to %s failed", op, safe(client_id), safe(room))
        finally:
            self._controller = None

    def member_info(self, room: str, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        found = self.registry.member_info(room, client_ids)
        rest = [cid for cid in client_ids if cid not in found]
        if rest and self._healthy:
            try:
                found.update(self.bus.member_info(room, rest))
            except REDIS_ERRORS as exc:
                self._lost(exc)
        return found

    def room_members(self, room: str) -> list[str]:
        members = set(self.registry.room_members(room))
        if self._healthy:
            try:
                members |= self.bus.room_members(room)
            except REDIS_ERRORS as exc:
                self._lost(exc)
        return sorted(members)

    def connections_elsewhere(self, client_id: str) -> int:
        if not self._healthy:
            return 0
        try:
            return self.bus.client_count(client_id)
        except REDIS_ERRORS as exc:
            self._lost(exc)
            return 0

    def clients(self) -> dict[str, int]:
        counts = self.registry.clients()
        if self._healthy:
            try:
                for cid, n in self.bus.clients().items():
                    counts[cid] = counts.get(cid, 0) + n
            except REDIS_ERRORS as exc:
                self._lost(exc)
        return counts

    # ---- interest and presence ----------------------------------------------------------
    # Subscribe before presence counts a connection; unsubscribe after it stops counting.

    def connected(self, peer: Peer, streams: Sequence[str] = (), touch: str = "") -> list[Position]:
        self._interest(Target("close", peer.client_id))  # first: whoever counts it, reaches it
        if not peer.addressable:
            return self.positions(list(streams), touch) if streams else []
        if not streams:
            self._write(peer.client_id, ())
            return []
        # the presence write and the read in one batch of the writer (one round trip): the
        # write is queued first, so the read sees the connection counted
        write = self._enqueue_write(peer.client_id, ())
        positions = self.positions(list(streams), touch)
        if write is not None:
            write.done.wait()
        return positions

    def disconnected(self, peer: Peer, rooms: list[str]) -> None:
        if peer.addressable:
            self._write(peer.client_id, rooms)
        self._interest(Target("close", peer.client_id))
        for room in rooms:
            self._interest(Target("room", room))

    def joined(self, peer: Peer, room: str) -> bool:
        self._interest(Target("room", room))
        elsewhere = self._write(peer.client_id, (room,), ask=room)
        return not elsewhere

    def left(self, peer: Peer, room: str) -> bool:
        elsewhere = self._write(peer.client_id, (room,), ask=room)
        self._interest(Target("room", room))
        return not elsewhere

    def _wanted(self, target: Target) -> Callable[[], bool]:
        if target.kind == "room":
            return lambda: self.registry.has_room(target.key)
        return lambda: self.registry.holds(target.key)

    def _interest(self, target: Target) -> None:
        """Subscribe to `target`'s channel while the registry holds a connection it reaches."""
        try:
            self.subscriber.sync(self._channel(target), self._wanted(target))
        except ERRORS as exc:
            self._lost(exc)

    def _write(self, cid: str, rooms: Iterable[str], ask: str | None = None) -> bool:
        """Write `cid`'s connection count and its counts in `rooms` on this node, nothing else
        (O(len(rooms))); with `ask`, also answer (atomically with the room's write) whether
        `cid` is in room `ask` on another live node. False while unhealthy.

        The request joins the next batch of the writer greenlet: in a reconnect storm,
        thousands of connects share a few round trips instead of queueing for one each."""
        request = self._enqueue_write(cid, rooms, ask)
        if request is None:
            return False
        request.done.wait()
        return request.answer

    def _enqueue_write(self, cid: str, rooms: Iterable[str], ask: str | None = None) -> _Request | None:
        """`_write` without the wait: None while unhealthy."""
        if not self._healthy:
            return None
        request = _Request(cid, tuple(rooms), ask)
        self._enqueue(request)
        return request

    def _enqueue(self, request: _Request) -> None:
        self._requests.append(request)
        if self._writer is None:
            self._writer = gevent.spawn(self._write_batches)

    def _write_batches(self) -> None:
        """The writer: takes every waiting request, computes one diff for all of them from the
        registry (absolute values: the latest state wins), and writes it in one round trip
        per Redis server. Every request's event is set, whatever happens."""
        try:
            while self._requests:
                batch, self._requests = self._requests[:BATCH_MAX], self._requests[BATCH_MAX:]
                try:
                    self._write_batch(batch)
                finally:
                    for request in batch:
                        request.done.set()
        finally:
            self._writer = None
            for request in self._requests:  # only after a BaseException (a kill at stop)
                request.done.set()
            self._requests = []

    def _write_batch(self, batch: list[_Request]) -> None:
        """One round trip per server for the batch: the presence diff of its writes first,
        then the reads riding along (positions)."""
        with self._lock:
            if not self._healthy:
                return
            writes: Writes = {}
            asks: list[tuple[str, str]] = []
            for request in batch:
                if request.ops is not None:
                    continue
                cid = request.cid
                self._mirror.set_client(cid, self.registry.client_count(cid), writes)
                for room in request.rooms:
                    self._mirror.set_room(cid, room, self.registry.room_count(room, cid), writes)
                if request.ask is not None:
                    asks.append((request.ask, cid))
            ops, decode = self.bus.presence_ops(writes, asks, self._infos(writes))
            first = len(ops)
            for request in batch:
                if request.ops is not None:
                    ops += request.ops
            try:
                results = self.bus.run(ops)
            except REDIS_ERRORS as exc:
                self._lost(exc)
                return
        answered = iter(decode(results[:first]))
        at = first
        for request in batch:
            if request.ops is not None:
                request.results = results[at : at + len(request.ops)]
                at += len(request.ops)
            elif request.ask is not None:
                request.answer = next(answered, False)

    def _local_state(self, cid: str) -> tuple[int, dict[str, int]]:
        peers = self.registry.targets(Target("client", cid))
        rooms: dict[str, int] = {}
        for p in peers:
            for room in list(p.rooms):
                rooms[room] = rooms.get(room, 0) + 1
        return len(peers), rooms

    def _sync(self, cids: Iterable[str]) -> None:
        """Write the whole presence of `cids` on this node (the heartbeat's safety net)."""
        with self._lock:
            if not self._healthy:
                return
            writes: Writes = {}
            for cid in cids:
                self._mirror.set(cid, *self._local_state(cid), writes)
            self._execute(writes)

    def _infos(self, writes: Writes) -> dict[str, str]:
        """Client id -> its presence entry's JSON, for the clients whose room counts `writes`
        sets above 0 (from their connections here: the newest with one). Empty when off."""
        if not self.presence_on:
            return {}
        out: dict[str, str] = {}
        for (suffix, cid), n in writes.items():
            if n and suffix.startswith("r:") and cid not in out:
                infos = [(p.connected_at, p.info) for p in self.registry.targets(Target("client", cid))
                         if p.info is not None]  # fmt: skip
                out[cid] = protocol.encode(max(infos, key=lambda pair: pair[0])[1]) if infos else ""
        return out

    def _execute(self, writes: Writes) -> None:
        """Send `writes`; under `_lock`."""
        if not writes:
            return
        try:
            self.bus.write_presence(writes, infos=self._infos(writes))
        except REDIS_ERRORS as exc:
            self._lost(exc)

    def _rewrite(self) -> None:
        """Register this node and its whole presence from the registry, replacing what Redis held."""
        with self._lock:
            self.bus.unregister()  # what a previous connection left (this node's id lives as long as the process)
            self.bus.register(self.presence_ttl_s)
            mirror, writes = _Mirror(), Writes()
            for cid in {p.client_id for p in self.registry.peers() if p.addressable}:
                mirror.set(cid, *self._local_state(cid), writes)
            if writes:
                self.bus.write_presence(writes, infos=self._infos(writes))
            self._mirror = mirror
            self._healthy = True  # inside the lock: presence events waiting on it now write

    def _reconcile(self) -> None:
        """Catch up on changes the hub does not report (a second connection joining a room)."""
        with self._lock:
            cids = set(self._mirror.clients) | set(self._mirror.rooms)
        cids |= {p.client_id for p in self.registry.peers() if p.addressable}
        self._sync(cids)

    # ---- the supervisor -----------------------------------------------------------------

    def _wanted_now(self) -> None:
        """Record every channel the registry needs (before a reconnect subscribes them)."""
        for peer in self.registry.peers():
            self.subscriber.wanted.add(self._channel(Target("close", peer.client_id)))
            for room in list(peer.rooms):
                self.subscriber.wanted.add(self._channel(Target("room", room)))

    def _check_memory_policy(self) -> None:
        """Once per process: say so when Redis would refuse writes when full (`noeviction`,
        its default) or evict presence (`allkeys-*`); docs/scaling.md, "Memory"."""
        if self._policy_checked:
            return
        self._policy_checked = True
        try:
            policies = self.bus.memory_policies()
        except REDIS_ERRORS as exc:
            log.info("redis backplane: could not read maxmemory-policy (%s); see docs/scaling.md, Memory", safe(exc))
            return
        if "noeviction" in policies:
            log.warning("redis backplane: Redis has maxmemory-policy noeviction: when it is full it refuses writes, "
                        "presence and heartbeats included, and every node goes 503; set volatile-lru (history keys "
                        "expire, presence keys do not): docs/scaling.md, Memory")  # fmt: skip
        elif any(p.startswith("allkeys-") for p in policies):
            log.warning("redis backplane: Redis has maxmemory-policy %s: when full it may evict presence and "
                        "liveness keys; set volatile-lru: docs/scaling.md, Memory",
                        safe(",".join(sorted(policies))))  # fmt: skip

    def _connect(self) -> None:
        self.bus.detect()
        self._check_memory_policy()
        self._wanted_now()
        self.bus.client.ping()  # Redis answers again: only now is a resume worth it
        # before the first message is heard: a live message after the gap would move the
        # client's position past what it missed, and its resume would skip that
        self._after_outage()
        self.subscriber.open()  # before presence: whoever counts us, we hear
        ended = self._end_unkept()  # before this node publishes with a position again
        self._rewrite()
        ended += self._end_unkept()  # delivered while the rewrite waited on Redis
        if ended or self._unkept_refused:
            log.warning("redis backplane: ended the epoch of %d streams this node delivered to while Redis was "
                        "away (a resume across those messages says recovered: false); %d messages were "
                        "delivered to nobody", ended, self._unkept_refused)  # fmt: skip
        self._unkept_refused = 0
        log.info("redis backplane up: node=%s, %d clients registered", self.node_id, len(self._mirror.clients))

    def _end_unkept(self) -> int:
        """End the epochs of the streams in `_unkept` (`Bus.forget`); how many."""
        streams = list(self._unkept)
        if streams:
            self.bus.forget(streams)
            for stream in streams:
                del self._unkept[stream]
        return len(streams)

    def _after_outage(self) -> None:
        """The connections served while the backplane was down (none at the first start)
        heard nothing from other nodes meanwhile: what those published is in the history but
        never reached them. Each connection of a resumable route is closed with 1012, so its
        client resumes from the positions it kept and gets exactly that (or `recovered: false`)."""
        if not self.history_on:
            return
        closed = 0
        for peer in self.registry.peers():
            if peer.resumable and peer.ws.open:
                peer.ws.close(CloseCode.SERVICE_RESTART, RESUME_CLOSE_REASON)
                closed += 1
        if closed:
            log.info("redis backplane: closed %d resumable connections (1012) so they resume what they missed "
                     "while Redis was away", closed)  # fmt: skip

    def _supervise(self) -> None:
        backoff = BACKOFF_MIN_S
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stopping:
            try:
                if not self._healthy:
                    self.subscriber.close()
                    self._connect()
                    backoff = BACKOFF_MIN_S
                    next_beat = time.monotonic() + self.heartbeat_s
                gevent.sleep(max(0.0, min(POLL_S, next_beat - time.monotonic())))
                if self._healthy and time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.heartbeat_s
                    self._beat()
            except ERRORS as exc:
                self._lost(exc)
            except Exception:  # a bug must not end the supervisor: the node would never recover
                if not self._stopping:
                    log.exception("redis backplane supervisor error")
                self._healthy = False
            if not self._healthy and not self._stopping:
                gevent.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(2 * backoff, BACKOFF_MAX_S)

    def _beat(self) -> None:
        known, dead = self.bus.heartbeat(self.presence_ttl_s)
        if not known:
            log.warning("redis backplane: this node's presence was gone (Redis restarted or the node "
                        "stalled past WSAPP_REDIS_PRESENCE_TTL); registering it again")  # fmt: skip
            self._rewrite()
        else:
            self._reconcile()
        for node in dead:
            departed = self.bus.reap(node)
            if departed is None:
                continue  # another node is reaping it
            log.info("redis backplane: removed dead node %s (%d room memberships left)", node, len(departed))
            for room, cid in departed:  # members of a dead node: nobody else will say they left
                self.publish(Target("room", room, exclude_client=cid),
                             protocol.text_frame(protocol.presence(room, "leave", cid)))  # fmt: skip

    def _on_message(self, payload: bytes) -> None:
        try:
            kept = decode_kept(payload)
            if kept is not None:  # every receiving node's, this one's too: delivered here in offset order
                target, stream, offset, body = kept
                deliver(self.registry.targets(target), encode_frame(OP_TEXT, body), stream, offset)
                return
            origin, target, frame = decode_envelope(payload)
        except (ValueError, TypeError) as exc:
            log.warning("redis backplane: dropped a malformed message: %s", exc)
            return
        if origin == self.node_id:  # our own peers had it when we published
            return
        if target.kind == "close":
            try:
                close_local(self.registry, target.key, frame)
            except (ValueError, TypeError) as exc:
                log.warning("redis backplane: dropped a malformed disconnect: %s", exc)
            return
        if target.kind == "control":
            try:
                self._on_control(target.key, frame)
            except (ValueError, TypeError) as exc:
                log.warning("redis backplane: dropped a malformed join/leave: %s", safe(exc))
            return
        deliver(self.registry.targets(target), frame)

    def _lost(self, exc: BaseException) -> None:
        if self._healthy or self._supervisor is None:
            log.warning("redis backplane down (%s: %s); serving this node's connections only, /readyz is 503 "
                        "until it is back", type(exc).__name__, exc)  # fmt: skip
        self._healthy = False
