"""This node's interest on Redis pub/sub: the channels of the targets it holds connections for.

A node subscribes to a target's channel (`wsapp.redis.keys`) while its registry holds a
connection the target reaches, and to nothing else, so a message reaches only the nodes
that deliver it. Subscribing happens *before* the node's presence counts the connection,
and unsubscribing *after* presence stops counting it: whoever counts a node as a
receiver reaches it.

Ownership:

* `wanted` (the channels this node needs) and every command written to a pub/sub
  connection are guarded by `_lock`; callers pass a predicate that reads the registry
  *under* that lock, so two greenlets that change the same target's interest at once end
  in the state the registry has last (never unsubscribed from a channel still needed).
* Each Redis server (one, or each primary of a cluster: sharded pub/sub lives on the
  primary that owns the channel's slot) gets one pub/sub connection and one reader
  greenlet, which alone reads it and hands each message to `on_message`.
* A subscribe is confirmed by its reply; Redis answers one connection's commands in
  order, so each channel keeps a queue of the events its callers wait on.

While Redis is away (`closed`), `sync` only records what is wanted; `open` subscribes to
all of it when the backplane reconnects.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.event import Event

from ..metrics import BACKPLANE_IN
from .bus import Bus
from .connect import COMMAND_TIMEOUT_S

log = logging.getLogger("wsapp.redis")

POLL_S = 0.5  # a reader looks at its stop flag at least this often
# Outside a gevent-patched process (tests, tools) a poll blocks the whole thread: keep it short
UNPATCHED_POLL_S = 0.01
YIELD_EVERY = 64  # messages a reader hands on before it lets other greenlets run


class SubscribeTimeout(TimeoutError):
    """A subscribe was not confirmed within the command timeout: treat Redis as gone."""


class _Shard:
    """One Redis server's pub/sub connection and its reader."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub
        self.reader: gevent.Greenlet | None = None


class Subscriber:
    def __init__(
        self, bus: Bus, on_message: Callable[[bytes], None], on_error: Callable[[BaseException], None]
    ) -> None:
        self.bus = bus
        self.on_message = on_message
        self.on_error = on_error
        self._lock = threading.Lock()
        self.wanted: set[str] = set()
        self._subscribed: set[str] = set()  # asked of Redis since `open` (and not unsubscribed)
        self._pending: dict[str, deque[Event]] = {}  # channel -> one event per unconfirmed subscribe
        self._shards: dict[str, _Shard] = {}
        self.closed = True

    # ---- interest ------------------------------------------------------------------------

    def sync(self, channel: str, wanted: Callable[[], bool]) -> None:
        """Subscribe to `channel` or leave it, as `wanted()` (read under the lock) says; when
        subscribed, wait for Redis to confirm. Raises a Redis error or `SubscribeTimeout`."""
        with self._lock:
            want = wanted()
            if want:
                self.wanted.add(channel)
            else:
                self.wanted.discard(channel)
            if self.closed:
                return
            if want and channel not in self._subscribed:
                self._send(channel, True)
            elif not want and channel in self._subscribed:
                self._send(channel, False)
            waiting = self._pending.get(channel)
            event = waiting[-1] if want and waiting else None
        if event is not None and not event.wait(COMMAND_TIMEOUT_S):
            raise SubscribeTimeout(f"no reply to the subscription of {channel}")

    def _send(self, channel: str, subscribe: bool) -> None:
        """Under `_lock`."""
        ps = self._shard(channel).pubsub
        if subscribe:
            self._pending.setdefault(channel, deque()).append(Event())
            self._subscribed.add(channel)
            ps.ssubscribe(channel) if self.bus.sharded else ps.subscribe(channel)
        else:
            self._subscribed.discard(channel)
            ps.sunsubscribe(channel) if self.bus.sharded else ps.unsubscribe(channel)

    def _shard(self, channel: str) -> _Shard:
        """Under `_lock`: the connection of the server that owns `channel`, opened on first use."""
        client: Any = self.bus.client
        node = client.get_node_from_key(channel) if self.bus.cluster else None
        name = node.name if node is not None else ""
        shard = self._shards.get(name)
        if shard is None:
            server = client.get_redis_connection(node) if node is not None else client
            shard = self._shards[name] = _Shard(server.pubsub())
            # starts reading once this greenlet yields, after the first subscribe is written
            shard.reader = gevent.spawn(self._read, shard)
        return shard

    # ---- life ----------------------------------------------------------------------------

    def open(self) -> None:
        """Subscribe to every wanted channel and wait for every confirmation."""
        with self._lock:
            self.closed = False
            for channel in sorted(self.wanted):
                self._send(channel, True)
            events = [e for q in self._pending.values() for e in q]
        for event in events:
            if not event.wait(COMMAND_TIMEOUT_S):
                raise SubscribeTimeout("no reply to the subscriptions")

    def close(self) -> None:
        """Drop every connection; callers waiting for a confirmation go on (and find the
        backplane unhealthy). `wanted` stays for the next `open`."""
        with self._lock:
            self.closed = True
            shards, self._shards = list(self._shards.values()), {}
            pending, self._pending = self._pending, {}
            self._subscribed.clear()
        for queue in pending.values():
            for event in queue:
                event.set()
        current = gevent.getcurrent()
        for shard in shards:
            if shard.reader is not None and shard.reader is not current:
                shard.reader.kill(block=True, timeout=COMMAND_TIMEOUT_S)
            try:
                shard.pubsub.close()
            except Exception:  # closing a broken connection may raise anything; it is gone either way
                pass

    # ---- the readers ---------------------------------------------------------------------

    def _read(self, shard: _Shard) -> None:
        data_types = ("smessage", "message")
        confirm_types = ("ssubscribe", "subscribe")
        handled = 0
        poll = POLL_S if monkey.is_module_patched("socket") else UNPATCHED_POLL_S
        try:
            while not self.closed:
                msg = shard.pubsub.get_message(ignore_subscribe_messages=False, timeout=poll)
                if msg is None:
                    gevent.sleep(0)  # unpatched, the wait above did not yield
                    continue
                kind = msg.get("type")
                if kind in data_types:
                    BACKPLANE_IN.inc()
                    self.on_message(msg["data"])
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        gevent.sleep(0)  # one busy channel must not hold the loop
                elif kind in confirm_types:
                    self._confirmed(msg["channel"])
        except Exception as exc:  # the connection failed (or Redis is gone): the backplane reconnects
            if not self.closed:
                self.on_error(exc)

    def _confirmed(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        with self._lock:
            queue = self._pending.get(name)
            if queue:
                queue.popleft().set()
                if not queue:
                    del self._pending[name]
