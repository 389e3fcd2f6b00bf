"""One accepted WebSocket: the only object that touches its socket.

Who may do what:
- **reading**: only the greenlet that runs the route, through `receive()`. It reads,
  parses and handles one batch (one `recv`) at a time, so a client that floods faster
  than the app reads is held back by TCP, not buffered in our memory (a batch is at
  most one read, parsed `frames.BATCH_FRAMES` frames at a time; a read is 64 KiB, or up
  to the rest of a larger frame already admitted, at most `BIG_RECV_BYTES`). Every
  frame the client sends (data, continuation, ping, pong, close) is charged to the
  connection's budget (`WSAPP_RATE_LIMIT`/`WSAPP_RATE_BURST`); between batches the
  reader yields to the other greenlets, so a socket that always has data cannot
  starve the worker.
- **writing**: one writer at a time, in order, whole frames. Every sender (the route,
  the HTTP API, other clients' greenlets, the heartbeat, shutdown) calls
  `send_frame()`/`close()`, which never block: when nothing is queued and no writer
  runs, the caller makes one non-blocking write itself; whatever the kernel does not
  take, and everything sent meanwhile, goes to this connection's writer greenlet
  (spawned when needed, gone when there is nothing left, so an idle connection costs
  no greenlet). A large data frame (`send_text`/`send_binary`, `GATHER_BYTES` and up)
  is written that way as its header and the payload itself in one `sendmsg`, never
  joined into a copy. Partial writes never lose bytes and concurrent senders never
  interleave.
- **memory**: frames wait in `_queue` (not started: may be dropped) and then in
  `_started` (handed to the writer: always finished, so the stream is never cut inside
  a frame). Both hold the senders' bytes objects themselves: a broadcast encoded once
  is shared by every connection's queue, never copied per connection (the writer uses
  `sendmsg` over the list and `memoryview` slices for a partial write). Together they
  are bounded by `send_queue` frames and `send_queue_bytes` bytes; past either the
  client reads slower than it is written to, and it alone is evicted: closed 1008
  "slow consumer".
- **eviction**: the frames not yet started are dropped, the close frame goes out after
  the one frame in progress, and the client gets `evict_grace_s` (the ping timeout) to
  read it before the socket is cut. `on_evict` (if given) is called at once, in the
  sender's greenlet (a broadcast loop, an API request): it must not block; it lets the
  owner take the connection out of the registry and its rooms without waiting for the
  session to end (`Hub.evict`).

`close()` is idempotent. Cleanup (registry, metrics, the log line) is the route's
`finally`, after `receive()` has returned None.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket

from . import frames, ratelimit
from .errors import CloseCode
from .metrics import SLOW_CONSUMERS, Traffic

log = logging.getLogger("wsapp.connections")

RECV_BYTES = 65536
# A frame larger than one read is read in reads of up to the bytes it still lacks (it was
# admitted under the message limit from its header), at most this many at a time: fewer
# reads and hub round trips per large message, memory still bounded by the limit.
BIG_RECV_BYTES = 1 << 20
# Data frames at least this large are written as header + payload in one `sendmsg`, when
# the sender writes itself (nothing queued): no copy of the payload to build the frame.
# Smaller ones are joined (a copy costs less than sendmsg's extra work).
GATHER_BYTES = 8192
CLOSE_HANDSHAKE_TIMEOUT_S = 2.0  # how long we wait for the peer's close reply
_IOV_BATCH = 64  # frames per sendmsg (Linux allows 1024)
_PING = frames.encode_frame(frames.OP_PING, b"")
_EMPTY_CLOSE = frames.encode_frame(frames.OP_CLOSE, b"")
# `_queue` and `_started` of every connection with no writer: an idle connection keeps no
# deques of its own (~760 bytes each). Never appended to: `_write` gives the connection
# its own pair first (maxlen=0: a stray append would drop the frame, never share it).
_NO_FRAMES: deque[Any] = deque(maxlen=0)


def default_send_queue_bytes(max_message_bytes: int) -> int:
    """The byte bound of one connection's send queue: room for four messages of the
    largest size (plus their envelopes), scaling with `WSAPP_MAX_MESSAGE_BYTES`."""
    return 4 * max_message_bytes + 65536


@dataclass(frozen=True, slots=True)
class RateLimited:
    """A data message that came over the connection's budget: answer it, do not act on it."""

    data: str | bytes


class WebSocket:
    # slots: no per-connection __dict__ (an idle connection's memory is mostly this object
    # and what it holds; see bench/idle_memory.py)
    __slots__ = (
        "_abort_timer",
        "_can_try_send",
        "_close_wait_s",
        "_closing",
        "_drop_started",
        "_events",
        "_failure",
        "_handshake_done",
        "_limiter",
        "_msg_limited",
        "_partial",
        "_peer_closed",
        "_queue",
        "_queued_bytes",
        "_queued_pong",
        "_read_before",
        "_reader",
        "_started",
        "_writer",
        "close_code",
        "close_reason",
        "compression",
        "conn_id",
        "evict_grace_s",
        "evicted",
        "last_ping_at",
        "max_queue",
        "max_queue_bytes",
        "on_evict",
        "opened_at",
        "ping_sent_at",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        conn_id: str,
        max_message_bytes: int,
        send_queue: int,
        compression: bool,
        rate_limit: float = 0.0,
        rate_burst: float = 0.0,
        send_queue_bytes: int | None = None,
        evict_grace_s: float = CLOSE_HANDSHAKE_TIMEOUT_S,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        """`rate_limit` <= 0 turns the per-frame budget off. `send_queue_bytes` defaults
        to `default_send_queue_bytes(max_message_bytes)`. `on_evict` is called once, by
        the sender whose frame did not fit, when the connection is evicted as a slow
        consumer; `evict_grace_s` (<= 0: CLOSE_HANDSHAKE_TIMEOUT_S) is how long the
        evicted client then has to read its close frame."""
        self.sock = sock
        self.conn_id = conn_id
        self.compression = compression
        self.max_queue = send_queue
        if send_queue_bytes is None:
            send_queue_bytes = default_send_queue_bytes(max_message_bytes)
        self.max_queue_bytes = send_queue_bytes
        self.evict_grace_s = evict_grace_s if evict_grace_s > 0 else CLOSE_HANDSHAKE_TIMEOUT_S
        self.on_evict = on_evict
        self.opened_at = time.monotonic()
        self.last_ping_at = self.opened_at  # the heartbeat pings when this is an interval old
        self.ping_sent_at: float | None = None  # None: no ping awaiting its pong
        self.close_code: int | None = None  # the code this connection ended with
        self.close_reason = ""
        self.evicted = False
        self._reader = frames.FrameReader(max_message_bytes, frames.Inflater() if compression else None)
        # False until the first read: the session greenlet has just come from the hub, so
        # the yield before a read (one batch at a time) is not needed for that one
        self._read_before = False
        self._limiter = ratelimit.RateLimiter(rate_limit, rate_burst) if rate_limit > 0 else None
        # the parsed events of the batch being handled; None between batches (an idle
        # connection keeps no deque: each batch gets its own)
        self._events: deque[frames.Event] | None = None
        self._failure: frames.ProtocolError | None = None  # raised after the events before it
        self._msg_limited = False  # a fragment of the message arriving was over budget
        # Frames for the writer. Senders append to `_queue`; only the writer moves them
        # to `_started` and sends them. No lock: under gevent nothing yields between a
        # check and a change here; the writer yields only inside sendmsg.
        # Both are `_NO_FRAMES` until a frame has to wait, and again once the writer ends.
        self._queue: deque[bytes] = _NO_FRAMES
        self._started: deque[bytes | memoryview] = _NO_FRAMES
        self._queued_bytes = 0  # in _queue and _started
        self._partial = False  # _started[0] is partly written: it must be finished
        self._drop_started = False  # eviction: drop what the writer has not begun
        self._queued_pong: bytes | None = None  # the pong waiting in _queue, if any
        self._writer: gevent.Greenlet[Any, Any] | None = None
        self._closing = False  # our close frame is queued: no more frames accepted
        self._peer_closed = False  # the peer's close frame (or EOF) has been read
        # gevent sockets take a per-call timeout: 0.0 makes one write non-blocking
        self._can_try_send = isinstance(sock, gevent.socket.socket)
        self._handshake_done = False  # both close frames exchanged: nothing more will come
        self._abort_timer: Any = None  # set when we start the closing handshake
        self._close_wait_s = CLOSE_HANDSHAKE_TIMEOUT_S

    # ---- any greenlet -------------------------------------------------------------

    @property
    def open(self) -> bool:
        return not self._closing and not self._peer_closed

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._started)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def send_frame(self, frame: bytes) -> bool:
        """Queue one encoded frame; never blocks. False if it was not queued.

        The frame's bytes are kept as they are (not copied): the caller must not
        mutate them. A frame over either bound of the queue evicts the connection."""
        if self._closing:
            return False
        if self._writer is not None and (
            len(self._queue) + len(self._started) >= self.max_queue
            or self._queued_bytes + len(frame) > self.max_queue_bytes
        ):
            self._evict_slow_consumer()
            return False
        self._write(frame)
        return True

    def _send_data(self, opcode: int, payload: bytes) -> bool:
        """Queue one data frame made of `payload` (not copied: the caller must not mutate
        it); never blocks. False if it was not queued.

        When the sender may write itself (no writer, nothing queued), a large payload is
        written with its header in one non-blocking `sendmsg`, without building the frame;
        only what the kernel did not take is handed to the writer, as in `_write`. (Only
        `bytes`: what is left of a mutable buffer would be a view the caller could change.)"""
        n = len(payload)
        if (
            n < GATHER_BYTES
            or self._writer is not None
            or self._queue
            or not self._can_try_send
            or self._closing
            or type(payload) is not bytes
        ):
            return self.send_frame(frames.encode_frame(opcode, payload))
        head = frames.frame_header(opcode, n)
        try:
            sent = self.sock.sendmsg((head, payload), (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return True  # as `_write`: the frame was accepted, the connection is gone
        Traffic.bytes_out += sent
        total = len(head) + n
        if sent == total:
            Traffic.messages_out += 1
            return True
        # the rest goes to the writer, which finishes it before any other frame
        if sent >= len(head):
            self._hand_over(memoryview(payload)[sent - len(head) :], total - sent, partial=True)
        else:  # not even the header went (a full socket): join them, the rare case
            frame = head + payload
            self._hand_over(memoryview(frame)[sent:] if sent else frame, total - sent, partial=sent > 0)
        return True

    def _hand_over(self, rest: bytes | memoryview, size: int, partial: bool) -> None:
        """Give the writer the unsent `rest` (`size` bytes) of a frame the sender began."""
        self._own_queues()
        self._started.append(rest)
        self._partial = partial
        self._queued_bytes += size
        if self._writer is None:
            self._writer = gevent.spawn(self._write_loop)

    def _write(self, frame: bytes) -> None:
        """Hand a frame to the socket in order, never blocking the caller.

        Fast path: with nothing queued and no writer running, the caller tries one
        non-blocking write itself (no greenlet hand-off for the common case of a
        socket with room). Whatever the kernel does not take goes to the writer as a
        started frame, so ordering and whole frames are kept: nobody else writes while
        a writer exists, and nothing here yields to another greenlet.
        """
        if self._writer is None and not self._queue and self._can_try_send:
            try:
                sent = self.sock.send(frame, 0, timeout=0.0)  # type: ignore[call-arg]  # gevent's socket
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()
                return
            Traffic.bytes_out += sent
            if sent == len(frame):
                Traffic.messages_out += 1
                return
            # the writer finishes this frame before any other
            self._hand_over(memoryview(frame)[sent:] if sent else frame, len(frame) - sent, partial=sent > 0)
            return
        self._own_queues()
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._writer is None:
            self._writer = gevent.spawn(self._write_loop)

    def _own_queues(self) -> None:
        """Give this connection its own `_queue` and `_started` before a frame waits."""
        if self._queue is _NO_FRAMES:
            self._queue, self._started = deque(), deque()

    def send_text(self, text: str) -> bool:
        return self._send_data(frames.OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> bool:
        return self._send_data(frames.OP_BINARY, data)

    def ping(self, now: float) -> None:
        """Send a ping (the heartbeat's); the pong clears `ping_sent_at`."""
        self.last_ping_at = now
        if self.ping_sent_at is None:
            self.ping_sent_at = now
        self.send_frame(_PING)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, drop_queue: bool = False) -> None:
        """Start the closing handshake; idempotent. Queued frames go out first unless
        `drop_queue` (the frame being written is finished either way). If the peer does
        not answer within CLOSE_HANDSHAKE_TIMEOUT_S, the socket is shut down."""
        self._close(code, reason, drop_queue, CLOSE_HANDSHAKE_TIMEOUT_S)

    def _close(self, code: int, reason: str, drop_queue: bool, wait_s: float) -> None:
        if self._closing:
            return
        self._closing = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if drop_queue:
            self._drop_queue()
        if self._peer_closed:
            # answering the peer's close: echo its code (RFC 6455 §5.5.1)
            self._write(frames.encode_close(code) if code != CloseCode.NO_STATUS else _EMPTY_CLOSE)
        else:
            self._write(frames.encode_close(code, reason))
            # we started it: if the peer does not answer in time, cut the connection
            # (a loop timer, not a greenlet: it only calls abort(), which never blocks).
            # update=True: libev counts from the time it cached at its last iteration,
            # which is stale by however long the hub has been held since (a long
            # broadcast, a CPU-bound request); without it the timer fires that much early.
            self._close_wait_s = wait_s
            self._abort_timer = gevent.get_hub().loop.timer(wait_s)
            self._abort_timer.start(self.abort, update=True)

    def _drop_queue(self) -> None:
        """Forget the frames not begun; the writer finishes the one in progress."""
        for frame in self._queue:
            self._queued_bytes -= len(frame)
        self._queue.clear()
        self._queued_pong = None
        if self._started:
            self._drop_started = True

    def abort(self) -> None:
        """Cut the TCP connection: wakes a blocked reader and writer with an error."""
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL
        self._queue.clear()
        self._started.clear()
        self._queued_bytes = 0
        self._queued_pong = None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _evict_slow_consumer(self) -> None:
        self.evicted = True
        SLOW_CONSUMERS.inc()
        self._close(CloseCode.POLICY_VIOLATION, "slow consumer", True, self.evict_grace_s)
        if self.on_evict is not None:
            try:
                self.on_evict()
            except Exception:  # the owner's bug must not fail the sender that evicted us
                log.exception("on_evict failed conn=%s", self.conn_id)

    # ---- the writer greenlet --------------------------------------------------------

    def _write_loop(self) -> None:
        queue, started = self._queue, self._started
        try:
            while True:
                if self._drop_started:
                    self._drop_unbegun()
                while queue and len(started) < _IOV_BATCH:
                    frame = queue.popleft()
                    if frame is self._queued_pong:
                        self._queued_pong = None
                    started.append(frame)
                if not started:
                    return
                # blocks this greenlet only, until the kernel takes some bytes
                sent = self.sock.send(started[0]) if len(started) == 1 else self.sock.sendmsg(list(started))
                if not started:  # aborted while we waited: nothing of ours left to account
                    continue
                self._sent(sent)
        except OSError:
            self.abort()
        finally:
            self._writer = None
            if not self._queue and not self._started:  # idle again: drop the deques
                self._queue = self._started = _NO_FRAMES

    def _sent(self, sent: int) -> None:
        """Account for `sent` bytes of `_started` written; keep the rest."""
        started = self._started
        self._queued_bytes -= sent
        Traffic.bytes_out += sent
        while sent:
            head = started[0]
            if sent >= len(head):
                started.popleft()
                sent -= len(head)
                self._partial = False
                Traffic.messages_out += 1
            else:
                started[0] = memoryview(head)[sent:]
                self._partial = True
                sent = 0

    def _drop_unbegun(self) -> None:
        """Eviction: drop what the writer took but has not begun (between two sends,
        when `_started` holds only frames taken before the close frame was queued)."""
        self._drop_started = False
        started = self._started
        keep = 1 if self._partial else 0
        while len(started) > keep:
            self._queued_bytes -= len(started.pop())

    # ---- the reader (the route's greenlet) ----------------------------------------------

    def receive(self) -> str | bytes | RateLimited | None:
        """The next message (str for text, bytes for binary), or None once closed.

        A message that came over the budget is wrapped in `RateLimited`: the route
        answers it with an error and drops it. Pings are answered (over the budget:
        not), pongs noted on the way. Past the budget's debt the connection is closed
        1008; a protocol error closes it with its code (1002, 1007, 1009) once the
        events before it are handled. Both return None.
        """
        limiter = self._limiter
        while True:
            while self._events:
                event = self._events.popleft()
                verdict = ratelimit.OK if limiter is None else limiter.check()
                if verdict == ratelimit.CLOSE and not isinstance(event, frames.Close):
                    self._stop_reading(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                    return None
                if isinstance(event, frames.Message):
                    limited, self._msg_limited = self._msg_limited or verdict == ratelimit.LIMITED, False
                    if self._closing:
                        continue  # after our close frame, data is read and dropped
                    Traffic.messages_in += 1
                    return RateLimited(event.data) if limited else event.data
                if isinstance(event, frames.Fragment):
                    if verdict == ratelimit.LIMITED:
                        self._msg_limited = True
                elif isinstance(event, frames.Ping):
                    if not self._closing and verdict == ratelimit.OK:
                        self._send_pong(event.payload)
                elif isinstance(event, frames.Pong):
                    self.ping_sent_at = None
                elif isinstance(event, frames.Close):
                    self._peer_closed = True
                    self._handshake_done = True
                    self._events = None
                    self.close(event.code, event.reason)  # a no-op if we closed first
                    return None
            self._events = None  # drained: an idle connection holds no deque
            if self._failure is not None:
                self._stop_reading(self._failure.code, self._failure.reason)
                return None
            if self._peer_closed:
                return None
            if self._read_before:
                gevent.sleep(0)  # one batch at a time: let every other greenlet run first
            self._read_before = True
            if self._reader.backlog:  # frames already read and not parsed yet: no recv
                data = b""
            else:
                wanted = self._reader.wanted  # the rest of a large frame: read it in big chunks
                try:
                    data = self.sock.recv(RECV_BYTES if wanted <= RECV_BYTES else min(wanted, BIG_RECV_BYTES))
                except OSError:
                    data = b""
                if not data:
                    self._peer_closed = True
                    self._closing = True
                    if self.close_code is None:
                        self.close_code = CloseCode.ABNORMAL
                    return None
                Traffic.bytes_in += len(data)
            try:
                self._events = deque(self._reader.feed(data))
            except frames.ProtocolError as exc:
                self._events = deque(exc.events)
                self._failure = exc

    def _stop_reading(self, code: int, reason: str) -> None:
        """Close with `code` and read nothing more: what the peer sends is not worth it."""
        self.close(code, reason)
        self._peer_closed = True
        self._events = None

    def _send_pong(self, payload: bytes) -> None:
        """Answer a ping; a pong still waiting in the queue is replaced by this one
        (RFC 6455 §5.5.3), so a ping flood cannot grow the queue."""
        pong = frames.encode_frame(frames.OP_PONG, payload)
        old = self._queued_pong
        if old is not None:
            queue = self._queue
            index = len(queue) - 1 if queue and queue[-1] is old else _index_of(queue, old)
            if index >= 0:
                queue[index] = pong
                self._queued_bytes += len(pong) - len(old)
                self._queued_pong = pong
                return
            self._queued_pong = None
        if self.send_frame(pong) and self._queue and self._queue[-1] is pong:
            self._queued_pong = pong

    def shutdown_socket(self) -> None:
        """Called once by the route when the session is over: release the socket.

        Our close frame goes out first (for an evicted client, within its grace). After
        a complete closing handshake the server closes TCP at once (RFC 6455 §7.1.1);
        otherwise the peer may still be sending, so we half-close and read to its EOF,
        lest unread bytes turn our close into a reset.
        """
        self._closing = True
        writer = self._writer
        if writer is not None:
            writer.join(timeout=self._close_wait_s)
        if self._abort_timer is not None:
            self._abort_timer.close()
        if not self._handshake_done:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                with gevent.Timeout(CLOSE_HANDSHAKE_TIMEOUT_S, False):
                    while self.sock.recv(RECV_BYTES):
                        gevent.sleep(0)  # a flooding peer must not keep us from the hub
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass


def _index_of(queue: deque[bytes], frame: bytes) -> int:
    """Index of this very object in `queue` (identity, not equality), or -1."""
    for i, queued in enumerate(queue):
        if queued is frame:
            return i
    return -1
