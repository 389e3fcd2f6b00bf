"""Message history: positions (offset, epoch) per stream and what a resume replays.

A stream is what one kind of recipient receives: `broadcast`, `direct:<client id>`, or
`room:<name>` (`stream_*` below). Every message published to a stream with history on
gets the next offset of that stream and the stream's epoch, written into its frame
(`positioned_body`), and the encoded frame is kept so a resume can replay the very bytes
live clients got.

`MemoryHistory` is the embedded store (one per worker, no Redis). It is bounded per
stream (`WSAPP_HISTORY_SIZE` messages, `WSAPP_HISTORY_TTL` seconds) and in total
(`WSAPP_HISTORY_STREAMS` streams, `WSAPP_HISTORY_BYTES` bytes counted as frame bytes
plus a fixed bookkeeping cost per message and per stream): past a total bound the least
recently written stream goes whole. A stream that goes (evicted, idle past the TTL) and
comes back gets a new epoch, so a client holding an old position learns it cannot
recover instead of being handed offsets that mean something else now.

The hot path is one dict lookup, one `move_to_end` and one deque append per message.
No I/O and no switch anywhere here: every method runs to its end without yielding, so
the caller's "append then deliver" is atomic under gevent (one worker's messages of a
stream are delivered in offset order). The store is owned by the worker's backplane.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

from . import frames, protocol

ENTRY_COST = 150  # bytes of bookkeeping counted per retained message (tuple, time, offset, bytes header, deque slot)
STREAM_COST = 400  # ... and per stream (object, deque, dict slots, its name)


def stream_broadcast() -> str:
    return "broadcast"


def stream_direct(client_id: str) -> str:
    return "direct:" + client_id


def stream_room(room: str) -> str:
    return "room:" + room


class Position(NamedTuple):
    """The last message of a stream seen: (0, "") is a stream with no history."""

    offset: int
    epoch: str

    def wire(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


EMPTY = Position(0, "")
# where a stream stands when it cannot be read (the Redis backplane is away): not EMPTY,
# which says "no message yet" and would let a resume from it replay the whole stream as
# `recovered: true`; no real epoch is this, so a resume from it answers `recovered: false`
UNKNOWN = Position(0, "unknown")


class Published(int):
    """What a publish did. An `int`, the connections reached (`delivered`), so callers
    that compare or add counts keep working (`ws.send(...) == 0`, an ack's count), with
    where the message went: its `stream`, `offset` and `epoch` (0 and "" when it got no
    position: history off, a custom frame type, Redis away), `kept` (in the history),
    `stored` (a direct message kept for a client id nobody reached) and `duplicate` (an
    idempotency key seen before: nothing was sent, the first publish's result is answered)."""

    stream: str
    offset: int
    epoch: str
    kept: bool
    duplicate: bool

    def __new__(
        cls, delivered: int, stream: str = "", offset: int = 0, epoch: str = "", kept: bool = False,
        duplicate: bool = False,
    ) -> Published:  # fmt: skip
        self = super().__new__(cls, max(0, int(delivered)))
        self.stream, self.offset, self.epoch, self.kept, self.duplicate = stream, offset, epoch, kept, duplicate
        return self

    @property
    def delivered(self) -> int:
        return int(self)

    @property
    def stored(self) -> bool:
        return self.kept and int(self) == 0

    @property
    def position(self) -> Position:
        return Position(self.offset, self.epoch)

    def again(self) -> Published:
        """The answer to a repeat of this publish (same idempotency key)."""
        return Published(int(self), self.stream, self.offset, self.epoch, self.kept, True)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"delivered": int(self), "stream": self.stream, "offset": self.offset}
        out["epoch"] = self.epoch
        if self.duplicate:
            out["duplicate"] = True
        return out

    def __str__(self) -> str:  # what print() and click.echo show: the count, as before
        return int.__repr__(self)

    def __repr__(self) -> str:
        return (f"Published(delivered={int(self)}, stream={self.stream!r}, offset={self.offset}, "
                f"epoch={self.epoch!r}, kept={self.kept}, duplicate={self.duplicate})")  # fmt: skip


MAX_KEY_CHARS = 128  # an idempotency key: 1 to 128 visible ASCII characters


def check_key(key: Any) -> str:
    """An idempotency key, or ValueError: 1 to `MAX_KEY_CHARS` visible ASCII characters."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS or not all("!" <= c <= "~" for c in key):
        raise ValueError(f"an idempotency key is 1 to {MAX_KEY_CHARS} visible ASCII characters (no spaces)")
    return key


def frame_text(frame: bytes) -> str:
    """The JSON text of an unmasked, unfragmented text frame the server encoded."""
    n = frame[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return frame[start:].decode("utf-8")


class Replay(NamedTuple):
    """What a stream published after a client's position: `recovered` False when that
    cannot be told (new epoch, gap older than the history); `frames` then is empty."""

    recovered: bool
    frames: list[tuple[int, bytes]]  # (offset, encoded frame), in offset order
    position: Position  # where the stream stood when read


def positioned_body(prefix: str, offset: int, epoch: str) -> str:
    """A message's JSON text: `prefix` is the encoded frame object without its closing
    brace; the position goes last (the Redis script writes the same text)."""
    return f'{prefix},"offset":{offset},"epoch":"{epoch}"}}'


def body_prefix(obj: dict[str, Any]) -> str:
    return protocol.encode(obj)[:-1]


def text_frame(body: str) -> bytes:
    return frames.encode_frame(frames.OP_TEXT, body.encode("utf-8"))


def decide(pos: Position, current: Position, first: int | None) -> bool:
    """Can every message after `pos` be replayed? `current` is the stream's position now,
    `first` the oldest offset retained (None: nothing retained). Pure: both stores use it."""
    if pos == EMPTY:  # the client saw the stream empty: all of it, if nothing was trimmed
        return current == EMPTY or current.offset == 0 or first == 1
    if pos.epoch != current.epoch or pos.offset > current.offset:
        return False
    if pos.offset == current.offset:
        return True
    return first is not None and first <= pos.offset + 1


_NO_ENTRIES: tuple[()] = ()


@dataclass(eq=False, slots=True)
class _Stream:
    """One stream's position and retained messages. Slots, and no deque until its first
    message: every client id seen gets a direct stream (for its offline messages), and
    most of those never get one."""

    epoch: str
    offset: int = 0
    nbytes: int = STREAM_COST
    touched: float = 0.0
    # (offset, time, frame), oldest first; the empty tuple until the first message
    entries: deque[tuple[int, float, bytes]] | tuple[()] = _NO_ENTRIES


class MemoryHistory:
    """The in-process store (see the module's docstring). Not shared between workers."""

    def __init__(
        self,
        size: int,
        ttl_s: float,
        max_streams: int,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.max_keys = max_keys  # idempotency keys remembered (WSAPP_IDEMPOTENCY_KEYS)
        self._keys: OrderedDict[tuple[str, str], tuple[float, Published]] = OrderedDict()  # oldest first
        self.size = size
        self.ttl_s = ttl_s
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.clock = clock
        self.nbytes = 0  # every stream's nbytes, summed
        self._streams: OrderedDict[str, _Stream] = OrderedDict()  # least recently written first
        self._base = secrets.token_hex(3)  # a new one per worker start: a restart is a new epoch
        self._generation = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    # ---- writing ------------------------------------------------------------------------

    def append(self, stream: str, prefix: str) -> tuple[int, bytes]:
        """Give the message the stream's next offset; keep and return its encoded frame."""
        now = self.clock()
        s = self._live(stream, now) or self._create(stream, now)
        self._streams.move_to_end(stream)
        s.offset += 1
        frame = text_frame(positioned_body(prefix, s.offset, s.epoch))
        entries = s.entries
        if not isinstance(entries, deque):
            entries = s.entries = deque()
        entries.append((s.offset, now, frame))
        cost = len(frame) + ENTRY_COST
        s.nbytes += cost
        self.nbytes += cost
        s.touched = now
        self._trim(s, now)
        self._bound(stream)
        return s.offset, frame

    def touch(self, stream: str) -> Position:
        """The stream's position, creating it (offset 0) if missing: a client id seen now
        keeps its direct stream for `WSAPP_HISTORY_TTL` (offline messages are stored)."""
        now = self.clock()
        s = self._live(stream, now) or self._create(stream, now)
        self._streams.move_to_end(stream)
        s.touched = now
        self._bound(stream)
        return Position(s.offset, s.epoch)

    # ---- idempotency keys: (stream, key) -> the first publish's result, for the TTL ------

    def seen(self, stream: str, key: str) -> Published | None:
        """The result of the publish to `stream` with `key` within `WSAPP_HISTORY_TTL`, if any."""
        entry = self._keys.get((stream, key))
        if entry is None:
            return None
        if self.clock() - entry[0] > self.ttl_s:
            del self._keys[(stream, key)]
            return None
        return entry[1]

    def remember(self, stream: str, key: str, result: Published) -> None:
        """Keep `result` for `key`; past `max_keys` (or the TTL) the oldest keys go."""
        now = self.clock()
        self._keys[(stream, key)] = (now, result)
        self._keys.move_to_end((stream, key))
        while self._keys:
            oldest_key, (t, _r) = next(iter(self._keys.items()))
            if len(self._keys) <= self.max_keys and now - t <= self.ttl_s:
                break
            del self._keys[oldest_key]

    @property
    def keys(self) -> int:
        return len(self._keys)

    # ---- reading ------------------------------------------------------------------------

    def exists(self, stream: str) -> bool:
        return self._live(stream, self.clock()) is not None

    def position(self, stream: str) -> Position:
        s = self._live(stream, self.clock())
        return EMPTY if s is None else Position(s.offset, s.epoch)

    def since(self, stream: str, pos: Position) -> Replay:
        now = self.clock()
        s = self._live(stream, now)
        if s is None:
            return Replay(pos == EMPTY, [], EMPTY)
        self._trim(s, now)
        current = Position(s.offset, s.epoch)
        first = s.entries[0][0] if s.entries else None
        if not decide(pos, current, first):
            return Replay(False, [], current)
        start = pos.offset + 1 - first if first is not None else 0
        out = [(off, frame) for off, _t, frame in islice(s.entries, max(0, start), None)]
        return Replay(True, out, current)

    def tail(self, stream: str, n: int) -> Replay:
        """The last `n` messages retained, oldest first, and the stream's position."""
        now = self.clock()
        s = self._live(stream, now)
        if s is None:
            return Replay(True, [], EMPTY)
        self._trim(s, now)
        entries = list(s.entries)[-n:] if n > 0 else []
        return Replay(True, [(off, frame) for off, _t, frame in entries], Position(s.offset, s.epoch))

    # ---- bounds -------------------------------------------------------------------------

    def _live(self, stream: str, now: float) -> _Stream | None:
        s = self._streams.get(stream)
        if s is not None and now - s.touched > self.ttl_s:
            self._drop(stream)
            return None
        return s

    def _create(self, stream: str, now: float) -> _Stream:
        self._generation += 1
        s = _Stream(epoch=f"{self._base}.{self._generation}", touched=now)
        self._streams[stream] = s
        self.nbytes += s.nbytes
        # amortised clean-up: the least recently written streams, if idle past the TTL
        for _ in range(2):
            oldest = next(iter(self._streams))
            if oldest == stream or now - self._streams[oldest].touched <= self.ttl_s:
                break
            self._drop(oldest)
        return s

    def _trim(self, s: _Stream, now: float) -> None:
        entries = s.entries
        while entries and (len(entries) > self.size or now - entries[0][1] > self.ttl_s):
            self._pop_oldest(s)

    def _pop_oldest(self, s: _Stream) -> None:
        entries = s.entries
        assert isinstance(entries, deque)  # only called with entries retained
        _off, _t, frame = entries.popleft()
        cost = len(frame) + ENTRY_COST
        s.nbytes -= cost
        self.nbytes -= cost

    def _bound(self, keep: str) -> None:
        """Drop least recently written streams (never `keep`) until within both bounds;
        `keep` alone over the byte bound loses its oldest messages."""
        while len(self._streams) > self.max_streams or self.nbytes > self.max_bytes:
            oldest = next(iter(self._streams))
            if oldest != keep:
                self._drop(oldest)
                continue
            s = self._streams[keep]
            if not s.entries or len(self._streams) > self.max_streams:
                break  # one stream, no messages: its fixed cost is the floor
            self._pop_oldest(s)

    def _drop(self, stream: str) -> None:
        s = self._streams.pop(stream)
        self.nbytes -= s.nbytes


def make_history(settings: Any) -> MemoryHistory | None:
    """The worker's in-process store, or None when history is off (`WSAPP_HISTORY_SIZE` or
    `WSAPP_HISTORY_TTL` 0)."""
    if not settings.history_on:
        return None
    return MemoryHistory(
        settings.history_size,
        settings.history_ttl_s,
        settings.history_streams,
        settings.history_bytes,
        max_keys=settings.idempotency_keys,
    )
