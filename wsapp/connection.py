"""One accepted WebSocket: the only object that touches its socket.

Who may do what:
- **reading**: only the greenlet that runs the route, through `receive()`. It reads,
  parses and handles one message at a time, so a client that floods faster than the
  app reads is held back by TCP, not buffered in our memory.
- **writing**: one writer at a time, in order, whole frames. Every sender (the route,
  the HTTP API, other clients' greenlets, the heartbeat, shutdown) calls
  `send_frame()`/`close()`, which never block: when nothing is queued and no writer
  runs, the caller makes one non-blocking write itself; whatever the kernel does not
  take, and everything sent meanwhile, goes to a bounded queue that this connection's
  writer greenlet drains with `sendall` (spawned when needed, gone when the queue is
  empty, so an idle connection costs no greenlet). Partial writes never lose bytes and
  concurrent senders never interleave. A full queue means the client reads slower
  than it is written to: it alone is closed 1008 "slow consumer".

`close()` is idempotent. Cleanup (registry, metrics, the log line) is the route's
`finally`, after `receive()` has returned None.
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any

import gevent
import gevent.socket

from . import frames
from .errors import CloseCode
from .metrics import SLOW_CONSUMERS, Traffic

RECV_BYTES = 65536
CLOSE_HANDSHAKE_TIMEOUT_S = 2.0  # how long we wait for the peer's close reply
_PING = frames.encode_frame(frames.OP_PING, b"")
_EMPTY_CLOSE = frames.encode_frame(frames.OP_CLOSE, b"")


class WebSocket:
    def __init__(
        self, sock: socket.socket, *, conn_id: str, max_message_bytes: int, send_queue: int, compression: bool
    ) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.compression = compression
        self.max_queue = send_queue
        self.opened_at = time.monotonic()
        self.last_ping_at = self.opened_at  # the heartbeat pings when this is an interval old
        self.ping_sent_at: float | None = None  # None: no ping awaiting its pong
        self.close_code: int | None = None  # the code this connection ended with
        self.close_reason = ""
        self._reader = frames.FrameReader(max_message_bytes, frames.Inflater() if compression else None)
        self._events: deque[frames.Event] = deque()
        # Frames waiting for the writer. Only send_frame()/close() append; only the
        # writer pops. No lock: under gevent nothing yields between check and change.
        self._queue: deque[bytes] = deque()
        self._writer: gevent.Greenlet[Any, Any] | None = None
        self._closing = False  # our close frame is queued: no more frames accepted
        self._peer_closed = False  # the peer's close frame (or EOF) has been read
        # gevent sockets take a per-call timeout: 0.0 makes one write non-blocking
        self._can_try_send = isinstance(sock, gevent.socket.socket)
        self._handshake_done = False  # both close frames exchanged: nothing more will come
        self._abort_timer: Any = None  # set when we start the closing handshake

    # ---- any greenlet -------------------------------------------------------------

    @property
    def open(self) -> bool:
        return not self._closing and not self._peer_closed

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def send_frame(self, frame: bytes) -> bool:
        """Queue one encoded frame; never blocks. False if it was not queued."""
        if self._closing:
            return False
        if len(self._queue) >= self.max_queue:
            self._evict_slow_consumer()
            return False
        self._write(frame)
        return True

    def _write(self, frame: bytes) -> None:
        """Hand a frame to the socket in order, never blocking the caller.

        Fast path: with nothing queued and no writer running, the caller tries one
        non-blocking write itself (no greenlet hand-off for the common case of a
        socket with room). Whatever the kernel does not take goes to the writer, so
        ordering and whole frames are kept: nobody else writes while `_queue` is
        non-empty or a writer exists, and nothing here yields to another greenlet.
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
            frame = frame[sent:]  # the writer finishes this frame before any other
        self._queue.append(frame)
        if self._writer is None:
            self._writer = gevent.spawn(self._write_loop)

    def send_text(self, text: str) -> bool:
        return self.send_frame(frames.encode_frame(frames.OP_TEXT, text.encode("utf-8")))

    def send_binary(self, data: bytes) -> bool:
        return self.send_frame(frames.encode_frame(frames.OP_BINARY, data))

    def ping(self, now: float) -> None:
        """Send a ping (the heartbeat's); the pong clears `ping_sent_at`."""
        self.last_ping_at = now
        if self.ping_sent_at is None:
            self.ping_sent_at = now
        self.send_frame(_PING)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, drop_queue: bool = False) -> None:
        """Start the closing handshake; idempotent. Queued frames go out first unless
        `drop_queue`. If the peer does not answer in time, the socket is shut down."""
        if self._closing:
            return
        self._closing = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if drop_queue:
            self._queue.clear()
        if self._peer_closed:
            # answering the peer's close: echo its code (RFC 6455 §5.5.1)
            self._write(frames.encode_close(code) if code != CloseCode.NO_STATUS else _EMPTY_CLOSE)
        else:
            self._write(frames.encode_close(code, reason))
            # we started it: if the peer does not answer in time, cut the connection
            # (a loop timer, not a greenlet: it only calls abort(), which never blocks)
            self._abort_timer = gevent.get_hub().loop.timer(CLOSE_HANDSHAKE_TIMEOUT_S)
            self._abort_timer.start(self.abort)

    def abort(self) -> None:
        """Cut the TCP connection: wakes a blocked reader and writer with an error."""
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL
        self._queue.clear()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _evict_slow_consumer(self) -> None:
        SLOW_CONSUMERS.inc()
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer", drop_queue=True)

    # ---- the writer greenlet --------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while self._queue:
                count = len(self._queue)
                if count == 1:
                    data = self._queue.popleft()
                else:
                    # everything queued in one write: one syscall for a burst
                    data = b"".join(self._queue)
                    self._queue.clear()
                self.sock.sendall(data)
                Traffic.messages_out += count
                Traffic.bytes_out += len(data)
        except OSError:
            self.abort()
        finally:
            self._writer = None

    # ---- the reader (the route's greenlet) ----------------------------------------------

    def receive(self) -> str | bytes | None:
        """The next message (str for text, bytes for binary), or None once closed.

        Pings are answered and pongs noted on the way. A protocol error closes the
        connection with its code (1002, 1007, 1009) and returns None.
        """
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, frames.Message):
                    if self._closing:
                        continue  # after our close frame, data is read and dropped
                    Traffic.messages_in += 1
                    return event.data
                if isinstance(event, frames.Ping):
                    if not self._closing:
                        self.send_frame(frames.encode_frame(frames.OP_PONG, event.payload))
                elif isinstance(event, frames.Pong):
                    self.ping_sent_at = None
                elif isinstance(event, frames.Close):
                    self._peer_closed = True
                    self._handshake_done = True
                    self._events.clear()
                    self.close(event.code, event.reason)  # a no-op if we closed first
                    return None
            if self._peer_closed:
                return None
            try:
                data = self.sock.recv(RECV_BYTES)
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
                self._events.extend(self._reader.feed(data))
            except frames.ProtocolError as exc:
                self.close(exc.code, exc.reason)
                self._peer_closed = True  # nothing more it sends is worth reading
                return None

    def shutdown_socket(self) -> None:
        """Called once by the route when the session is over: release the socket.

        Our close frame goes out first. After a complete closing handshake the server
        closes TCP at once (RFC 6455 §7.1.1); otherwise the peer may still be sending, so
        we half-close and read to its EOF, lest unread bytes turn our close into a reset.
        """
        self._closing = True
        writer = self._writer
        if writer is not None:
            writer.join(timeout=CLOSE_HANDSHAKE_TIMEOUT_S)
        if self._abort_timer is not None:
            self._abort_timer.close()
        if not self._handshake_done:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                with gevent.Timeout(CLOSE_HANDSHAKE_TIMEOUT_S, False):
                    while self.sock.recv(RECV_BYTES):
                        pass
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
