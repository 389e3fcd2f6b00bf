"""Send and broadcast to wsapp clients from any Python process, through Redis.

A cron job, a queue worker or a shell needs no gunicorn and no WebSocket: it publishes
on the same Redis bus, in the same wire format, as the web workers do (the code is
`wsapp.redis.bus.Bus`), and gets the same cluster-wide `delivered` counts::

    from wsapp.emitter import Emitter

    with Emitter("redis://127.0.0.1:6379/0") as emitter:
        emitter.broadcast({"text": "deploy at 18:00"})             # every addressable connection (chat)
        emitter.broadcast({"text": "standup"}, room="team-a")       # one room
        if emitter.send("alice", {"text": "your report is ready"}) == 0:
            ...                                                     # alice is not connected
        emitter.disconnect("mallory", 4403, "access revoked")      # every connection, any route

Clients receive the same frames as from the HTTP API, with `"from"` set to `sender`
("server" unless given). Each call is one Redis round trip; if Redis is unreachable it
raises `redis.RedisError` (or `OSError`), and nothing is queued for later: pub/sub
delivers at most once, to the clients connected at that moment.
"""

from __future__ import annotations

import secrets
from types import TracebackType
from typing import Any

from . import history, protocol
from .backplane import close_payload
from .history import Published, check_key
from .redis.bus import Bus
from .redis.connect import connect
from .registry import Target


class Emitter:
    """A publisher for one Redis URL (the `WSAPP_REDIS_URL` of the service). Thread-safe."""

    def __init__(
        self,
        redis_url: str,
        *,
        sender: str = "server",
        timeout_s: float = 5.0,
        history_size: int = 100,
        history_ttl_s: float = 300.0,
        store_offline: bool = False,
    ) -> None:
        # not a node: it holds no connections and is never in the live set, so every
        # node's connections count towards `delivered`
        self._bus = Bus(connect(redis_url, timeout_s, name="wsapp-emitter"), f"emitter-{secrets.token_hex(4)}")
        self.sender = sender
        # the service's WSAPP_HISTORY_SIZE / _TTL / WSAPP_STORE_OFFLINE: give the same values
        self.history_size, self.history_ttl_s, self.store_offline = history_size, history_ttl_s, store_offline

    def _publish(self, target: Target, stream: str, obj: dict[str, Any], create: bool, key: str) -> Published:
        sender = str(obj["from"])
        if self.history_size <= 0 or self.history_ttl_s <= 0:
            if key:
                raise ValueError("idempotency keys need history (history_size and history_ttl_s above 0)")
            return Published(self._bus.publish(target, protocol.text_frame(obj)), stream)
        scoped = f"{len(sender)}:{sender}:{check_key(key)}" if key else ""  # as the hub scopes it
        kept = self._bus.publish_at(
            target, stream, history.body_prefix(obj), 0, create, self.history_size, self.history_ttl_s, key=scoped
        )
        if kept.duplicate:
            return Published(kept.others, stream, kept.offset, kept.epoch, kept.status == 1, True)
        if kept.status == 0:
            return Published(0, stream)
        return Published(kept.others, stream, kept.offset, kept.epoch, kept.status == 1)

    def broadcast(self, data: Any, room: str | None = None, *, sender: str | None = None, key: str = "") -> Published:
        """Send `data` to every addressable connection, or to the members of `room`. Returns a
        `Published`: an int, the connections reached, with the message's `stream`, `offset`
        and `epoch`. `key`: an idempotency key (a repeat within the history TTL sends nothing
        and answers the first result, `duplicate` True)."""
        sender = sender or self.sender
        if room is None:
            obj = protocol.broadcast(sender, data)
            return self._publish(Target("all"), history.stream_broadcast(), obj, True, key)
        obj = protocol.room_message(room, sender, data)
        return self._publish(Target("room", room), history.stream_room(room), obj, True, key)

    def send(self, to: str, data: Any, *, sender: str | None = None, key: str = "") -> Published:
        """Send `data` to every connection of client id `to`. Returns a `Published` (0: not
        connected; with history on it may have been kept for `to`: `.stored`)."""
        obj = protocol.direct(sender or self.sender, to, data)
        return self._publish(Target("client", to), history.stream_direct(to), obj, self.store_offline, key)

    def send_direct(self, to: str, data: Any, *, sender: str | None = None, key: str = "") -> tuple[Published, bool]:
        """`send`, and whether a message that reached nobody was kept for `to`'s resume
        (history on, `to` seen within the history TTL or `store_offline`)."""
        result = self.send(to, data, sender=sender, key=key)
        return result, result.stored

    def disconnect(self, client_id: str, code: int = 1008, reason: str = "") -> int:
        """Close every connection of `client_id` on every node (`WSApp.disconnect` from outside).
        Returns the addressable connections it held (what presence counts)."""
        return self._bus.publish(Target("close", client_id), close_payload(code, reason))

    def clients(self) -> dict[str, int]:
        """Connected addressable client ids and their connection counts, cluster-wide."""
        return self._bus.clients()

    def close(self) -> None:
        self._bus.client.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
