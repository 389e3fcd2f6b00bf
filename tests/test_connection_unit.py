"""`connection.WebSocket` over a real `socket.socketpair()` (gevent sockets, no server).

The test plays the client on the other end of the pair: it writes masked frames and
reads the server's frames byte by byte, so partial writes, ordering, whole frames,
eviction and the per-frame budget are checked on the bytes that really went out.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.queue
import gevent.socket
import pytest

from wsapp import connection, frames
from wsapp.connection import CLOSE_HANDSHAKE_TIMEOUT_S, RateLimited, WebSocket, default_send_queue_bytes
from wsapp.metrics import Traffic


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    head = bytes((first, 0x80 | n)) if n < 126 else struct.pack("!BBH", first, 0xFE, n)
    key = os.urandom(4)
    return head + key + frames.unmask(payload, key)


@pytest.fixture
def pair() -> Iterator[Callable[..., tuple[WebSocket, Any]]]:
    made: list[tuple[WebSocket, Any]] = []

    def make(small_buffers: bool = False, **kw: Any) -> tuple[WebSocket, Any]:
        server, client = gevent.socket.socketpair()
        if small_buffers:  # the kernel takes little: writes go partial, the queue fills
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        opts: dict[str, Any] = {"max_message_bytes": 1000, "send_queue": 64, "compression": False}
        opts.update(kw)
        ws = WebSocket(server, conn_id="unit", **opts)
        made.append((ws, client))
        return ws, client

    yield make
    for ws, client in made:
        ws.abort()
        client.close()
        ws.sock.close()


class Stream:
    """Reads the server's frames from the client end; checks the stream is whole frames."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def frame(self, timeout: float = 5) -> tuple[int, bytes] | None:
        """The next frame (opcode, payload), or None at EOF on a frame boundary."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if self.eof:
                assert self.buf == b"", f"stream cut inside a frame: {len(self.buf)} bytes left"
                return None
            self._fill(deadline)

    def _parse(self) -> tuple[int, bytes] | None:
        b = self.buf
        if len(b) < 2:
            return None
        assert b[0] & 0x80 and not b[1] & 0x80, "server frames are final and unmasked"
        n, off = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, off = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, off = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < off + n:
            return None
        self.buf = b[off + n :]
        return b[0] & 0x0F, b[off : off + n]

    def all(self, timeout: float = 10) -> list[tuple[int, bytes]]:
        out = []
        while (f := self.frame(timeout)) is not None:
            out.append(f)
        return out


def wait_for(cond: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.005)


def close_of(frame: tuple[int, bytes]) -> tuple[int, str]:
    assert frame[0] == frames.OP_CLOSE
    return struct.unpack("!H", frame[1][:2])[0], frame[1][2:].decode()


# ---- writing ------------------------------------------------------------------------------


def test_fast_path_writes_at_once_without_a_writer(pair: Any) -> None:
    ws, client = pair()
    assert ws.send_text("hi") is True
    assert ws._writer is None and ws.queue_depth == 0 and ws.queued_bytes == 0
    assert Stream(client).frame() == (frames.OP_TEXT, b"hi")


def test_partial_writes_keep_order_and_whole_frames(pair: Any) -> None:
    ws, client = pair(small_buffers=True, send_queue=10_000, send_queue_bytes=10_000_000)
    sent = [os.urandom(n) for n in (1, 70_000, 3, 125, 126, 65_535, 65_536, 9_000, 0, 40_000)] * 3
    for payload in sent:
        assert ws.send_binary(payload) is True
    assert ws.queue_depth > 0  # the small buffer could not take it all: the writer has it
    ws.close(1000, "done")
    got = Stream(client).all()
    assert [p for op, p in got[:-1]] == sent and all(op == frames.OP_BINARY for op, _ in got[:-1])
    assert close_of(got[-1]) == (1000, "done")
    assert ws.queued_bytes == 0


def test_queued_frames_are_shared_not_copied(pair: Any) -> None:
    # the same encoded broadcast queued for two slow readers is one bytes object
    a, ca = pair(small_buffers=True)
    b, cb = pair(small_buffers=True)
    filler = frames.encode_frame(frames.OP_BINARY, b"f" * 900)
    shared = frames.encode_frame(frames.OP_TEXT, b"s" * 900)
    for ws in (a, b):
        while ws.queue_depth < 3:
            ws.send_frame(filler)
        ws.send_frame(shared)
    assert a._queue[-1] is shared and b._queue[-1] is shared


class SpySocket:
    """Delegates to the real socket; records every buffer handed to send/sendmsg."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.handed: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def send(self, data: Any, *args: Any, **kwargs: Any) -> int:
        self.handed.append(data)
        return self._sock.send(data, *args, **kwargs)  # type: ignore[no-any-return]

    def sendmsg(self, buffers: list[Any], *args: Any) -> int:
        self.handed.extend(buffers)
        return self._sock.sendmsg(buffers, *args)  # type: ignore[no-any-return]


def test_the_writer_hands_the_kernel_the_queued_buffers_not_a_joined_copy(pair: Any) -> None:
    ws, client = pair(small_buffers=True, send_queue=1000, send_queue_bytes=1_000_000)
    spy = ws.sock = SpySocket(ws.sock)
    sent = [frames.encode_frame(frames.OP_BINARY, bytes([i]) * 20_000) for i in range(8)]
    for frame in sent:
        ws.send_frame(frame)
    got = Stream(client)
    for i in range(8):
        assert got.frame() == (frames.OP_BINARY, bytes([i]) * 20_000)
    # every buffer written was one of the senders' objects, or a view into one
    originals = {id(f) for f in sent}
    assert spy.handed and all(id(getattr(buf, "obj", buf)) in originals for buf in spy.handed)
    assert any(isinstance(buf, memoryview) for buf in spy.handed)  # a partial write went on from a view


def test_close_is_idempotent_and_sends_one_close_frame(pair: Any) -> None:
    ws, client = pair()
    ws.close(1001, "bye")
    ws.close(1000, "again")
    ws.close(1011, drop_queue=True)
    assert ws.send_text("late") is False
    assert ws.close_code == 1001 and ws.close_reason == "bye"
    client.shutdown(socket.SHUT_WR)  # the peer goes away without a close frame
    assert ws.receive() is None
    ws.shutdown_socket()
    ws.shutdown_socket()
    got = Stream(client).all()
    assert [close_of(f) for f in got] == [(1001, "bye")]


def test_the_close_timer_counts_from_now_even_after_the_hub_was_held(pair: Any, monkeypatch: Any) -> None:
    """libev caches its clock once per loop iteration: after a stretch in which the hub
    was held (a long broadcast, or earlier tests in the same process), a timer started
    without refreshing it fired that much early and cut the close handshake at once."""
    monkeypatch.setattr(connection, "CLOSE_HANDSHAKE_TIMEOUT_S", 2.0)  # room for a slow test process
    ws, client = pair(small_buffers=True)
    big = os.urandom(20_000)
    ws.send_binary(big)  # more than the kernel takes: the close frame will be queued
    # back from the hub through a timer (not a callback, where gevent refreshes the
    # clock itself): the loop's clock is cached here ...
    gevent.sleep(0.001)
    time.sleep(2.5)  # ... and the hub is then held for longer than the close timeout
    ws.close(1000, "bye")
    stream = Stream(client)
    assert stream.frame() == (frames.OP_BINARY, big)
    assert close_of(stream.frame() or (0, b"")) == (1000, "bye")
    for _ in range(3):  # let the loop run: an overdue timer fires now
        gevent.sleep(0.01)
    client.settimeout(0)
    with pytest.raises(BlockingIOError):  # nothing to read and no EOF: not cut yet
        client.recv(1)
    assert stream.frame(timeout=10) is None  # and the peer that never answers is cut later


# ---- eviction -------------------------------------------------------------------------------


def fill_until_evicted(ws: WebSocket, frame: bytes, limit: int = 10_000) -> int:
    for i in range(limit):
        if not ws.send_frame(frame):
            return i
    raise AssertionError("never evicted")


def test_byte_bound_evicts_with_whole_frames_then_1008(pair: Any) -> None:
    calls: list[int] = []
    ws, client = pair(small_buffers=True, send_queue=10_000, send_queue_bytes=20_000, on_evict=lambda: calls.append(1))
    frame = frames.encode_frame(frames.OP_BINARY, b"b" * 999)
    accepted = fill_until_evicted(ws, frame)
    assert ws.evicted and calls == [1] and not ws.open
    assert ws.close_code == 1008 and ws.close_reason == "slow consumer"
    assert ws.send_frame(frame) is False and calls == [1]  # once
    got = Stream(client).all()
    # some whole frames (never one cut partway: Stream asserts that), then the close
    assert close_of(got[-1]) == (1008, "slow consumer")
    assert all(f == (frames.OP_BINARY, b"b" * 999) for f in got[:-1])
    assert 0 < len(got) - 1 <= accepted


@pytest.mark.parametrize(("bound_bytes", "frame_len", "fits"), [(3000, 1000, 3), (2999, 1000, 2), (3001, 1000, 3)])
def test_byte_bound_at_and_around_the_limit(pair: Any, bound_bytes: int, frame_len: int, fits: int) -> None:
    ws, _client = pair(send_queue=10_000, send_queue_bytes=bound_bytes)
    ws._writer = gevent.spawn(gevent.sleep, 10)  # a writer that makes no progress: all is queued
    frame = b"q" * frame_len
    assert [ws.send_frame(frame) for _ in range(fits)] == [True] * fits
    assert ws.queued_bytes == fits * frame_len
    assert ws.send_frame(frame) is False and ws.evicted
    ws._writer.kill()


@pytest.mark.parametrize("bound", [1, 2, 5])
def test_message_bound_at_the_limit(pair: Any, bound: int) -> None:
    ws, _client = pair(send_queue=bound)
    ws._writer = gevent.spawn(gevent.sleep, 10)
    assert [ws.send_frame(b"m") for _ in range(bound)] == [True] * bound
    assert ws.send_frame(b"m") is False and ws.evicted
    ws._writer.kill()


def test_default_byte_bound_scales_with_the_message_limit() -> None:
    assert default_send_queue_bytes(65536) == 4 * 65536 + 65536
    assert default_send_queue_bytes(1_000_000) == 4_000_000 + 65536
    a, b = gevent.socket.socketpair()
    ws = WebSocket(a, conn_id="x", max_message_bytes=5000, send_queue=8, compression=False)
    assert ws.max_queue_bytes == default_send_queue_bytes(5000)
    a.close(), b.close()


class TrickleSocket:
    """A socket that takes, per send call, only the bytes the test allows (blocking
    until it allows some): the writer's partial writes are under the test's control."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.allow: gevent.queue.Queue[int] = gevent.queue.Queue()

    def sendmsg(self, buffers: list[Any]) -> int:
        return self.send(b"".join(bytes(b) for b in buffers))

    def send(self, data: Any) -> int:
        n = min(self.allow.get(), len(data))
        self.out += bytes(data[:n])
        return n

    def shutdown(self, how: int) -> None:
        pass


def test_eviction_finishes_the_frame_in_progress_and_drops_the_rest() -> None:
    sock = TrickleSocket()
    ws = WebSocket(sock, conn_id="t", max_message_bytes=1000, send_queue=4, compression=False)  # type: ignore[arg-type]
    f1, f2, f3, f4 = (frames.encode_frame(frames.OP_BINARY, bytes([i]) * 100) for i in range(4))
    for f in (f1, f2, f3):
        assert ws.send_frame(f)
    sock.allow.put(5)  # the writer takes all three and gets 5 bytes of f1 out
    wait_for(lambda: len(sock.out) == 5)
    assert ws.send_frame(f4)  # queued behind the three the writer holds
    assert ws.send_frame(f4) is False and ws.evicted  # over 4 frames: evicted
    for _ in range(40):
        sock.allow.put(7)  # small steps: the writer returns between them
    wait_for(lambda: ws._writer is None)
    # f1 finished (never cut), f2/f3 never begun so dropped, f4 dropped, then the close
    assert bytes(sock.out) == f1 + frames.encode_close(1008, "slow consumer")
    assert ws.queued_bytes == 0 and ws.queue_depth == 0


def test_no_frame_is_stranded_when_an_abort_lands_during_a_write() -> None:
    sock = TrickleSocket()
    ws = WebSocket(sock, conn_id="t", max_message_bytes=1000, send_queue=8, compression=False)  # type: ignore[arg-type]
    ws.send_frame(b"first")
    wait_for(lambda: len(ws._started) == 1 and not ws._queue)  # the writer took it and waits in send
    ws.abort()  # (the heartbeat's, say) drops everything while the writer waits
    ws.send_frame(b"later")  # queued behind the waiting writer
    sock.allow.put(100)
    sock.allow.put(100)
    wait_for(lambda: ws._writer is None)
    assert ws.queue_depth == 0 and ws.queued_bytes == 0  # nothing left without a writer
    assert bytes(sock.out) == b"firstlater"


def test_evicted_client_that_resumes_reading_gets_its_1008(pair: Any) -> None:
    ws, client = pair(small_buffers=True, send_queue=10_000, send_queue_bytes=50_000, evict_grace_s=5)
    fill_until_evicted(ws, frames.encode_frame(frames.OP_TEXT, b"t" * 900))
    assert ws.close_code == 1008 and ws._abort_timer is not None  # the socket is cut only after the grace
    got = Stream(client)
    frames_read = []
    while (f := got.frame()) is not None:
        frames_read.append(f)
        if f[0] == frames.OP_CLOSE:
            break
    assert close_of(frames_read[-1]) == (1008, "slow consumer")
    client.sendall(masked(frames.OP_CLOSE, struct.pack("!H", 1008)))
    assert ws.receive() is None
    ws.shutdown_socket()
    assert got.frame() is None  # then EOF, on a frame boundary


def test_evicted_client_that_never_reads_is_cut_after_the_grace(pair: Any) -> None:
    ws, client = pair(small_buffers=True, send_queue=10_000, send_queue_bytes=20_000, evict_grace_s=0.3)
    fill_until_evicted(ws, frames.encode_frame(frames.OP_TEXT, b"t" * 900))
    reader = gevent.spawn(ws.receive)
    assert reader.get(timeout=5) is None  # the abort after the grace woke the reader
    assert ws.close_code == 1008


def test_on_evict_failure_is_logged_not_raised(pair: Any, caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("owner bug")

    ws, _client = pair(send_queue=1, on_evict=boom)
    ws._writer = gevent.spawn(gevent.sleep, 10)
    ws.send_frame(b"a")
    assert ws.send_frame(b"b") is False and ws.evicted
    assert "on_evict failed" in caplog.text
    ws._writer.kill()


# ---- reading: pongs, budget, errors ------------------------------------------------------------


def test_every_ping_gets_its_pong_when_the_client_reads(pair: Any) -> None:
    ws, client = pair()
    client.sendall(b"".join(masked(frames.OP_PING, f"p{i}".encode()) for i in range(10)))
    client.sendall(masked(frames.OP_TEXT, b"end"))
    assert ws.receive() == "end"
    got = Stream(client)
    assert [got.frame() for _ in range(10)] == [(frames.OP_PONG, f"p{i}".encode()) for i in range(10)]


def test_a_queued_pong_is_replaced_by_the_newer_one(pair: Any) -> None:
    ws, client = pair(send_queue=10_000, send_queue_bytes=10_000_000)
    ws._writer = gevent.spawn(gevent.sleep, 10)  # nothing drains: every pong waits in the queue
    client.sendall(b"".join(masked(frames.OP_PING, f"p{i}".encode()) for i in range(500)))
    client.sendall(masked(frames.OP_TEXT, b"end"))
    assert ws.receive() == "end"
    assert list(ws._queue) == [frames.encode_frame(frames.OP_PONG, b"p499")]
    assert ws.queued_bytes == len(ws._queue[0])
    # a data frame queued after the pong: the next pong replaces the old one in place
    ws.send_text("data")
    client.sendall(masked(frames.OP_PING, b"new") + masked(frames.OP_TEXT, b"end"))
    assert ws.receive() == "end"
    assert list(ws._queue) == [
        frames.encode_frame(frames.OP_PONG, b"new"),
        frames.encode_frame(frames.OP_TEXT, b"data"),
    ]
    ws._writer.kill()


def test_every_frame_kind_is_charged_to_the_budget(pair: Any) -> None:
    for flood in (
        masked(frames.OP_PING),
        masked(frames.OP_PONG),
        masked(frames.OP_TEXT, b"x"),
        masked(frames.OP_BINARY, b"x"),
    ):
        ws, client = pair(rate_limit=1, rate_burst=3)
        client.sendall(flood * 20)
        while (msg := ws.receive()) is not None:
            pass
        assert ws.close_code == 1008 and ws.close_reason == "rate limit exceeded"
    # continuation frames of one endless message: charged per frame, not per message
    ws, client = pair(rate_limit=1, rate_burst=3, max_message_bytes=1_000_000)
    client.sendall(masked(frames.OP_TEXT, b"a", fin=False) + masked(frames.OP_CONT, b"", fin=False) * 20)
    assert ws.receive() is None and ws.close_code == 1008
    assert msg is None


def test_budget_verdicts_per_frame(pair: Any) -> None:
    ws, client = pair(rate_limit=0.001, rate_burst=3)  # no refill during the test
    client.sendall(masked(frames.OP_TEXT, b"one") + masked(frames.OP_PING, b"ok"))  # within the burst
    client.sendall(masked(frames.OP_TEXT, b"three"))  # the last within the burst
    client.sendall(masked(frames.OP_PING, b"dropped"))  # limited: no pong
    client.sendall(masked(frames.OP_TEXT, b"two"))  # limited: handed over as RateLimited
    client.sendall(masked(frames.OP_PONG))  # limited, still noted
    client.sendall(masked(frames.OP_TEXT, b"closed"))  # debt past the burst: 1008
    ws.ping_sent_at = 1.0
    assert ws.receive() == "one"
    assert ws.receive() == "three"
    assert ws.receive() == RateLimited("two")
    assert ws.receive() is None
    assert ws.ping_sent_at is None and ws.close_code == 1008
    got = Stream(client).all()
    assert got[0] == (frames.OP_PONG, b"ok")
    assert close_of(got[-1]) == (1008, "rate limit exceeded") and len(got) == 2


def test_a_fragment_over_budget_makes_its_message_rate_limited(pair: Any) -> None:
    ws, client = pair(rate_limit=0.001, rate_burst=2)
    client.sendall(masked(frames.OP_TEXT, b"a", fin=False) + masked(frames.OP_CONT, b"b", fin=False))
    client.sendall(masked(frames.OP_CONT, b"c"))  # the third frame is over: the message is limited
    assert ws.receive() == RateLimited("abc")


def test_zero_rate_charges_nothing(pair: Any) -> None:
    ws, client = pair(rate_limit=0, rate_burst=1)
    client.sendall(masked(frames.OP_PING) * 2000 + masked(frames.OP_TEXT, b"end"))
    assert ws.receive() == "end" and ws.open


def test_a_close_frame_is_honoured_even_over_budget(pair: Any) -> None:
    ws, client = pair(rate_limit=0.001, rate_burst=1)
    client.sendall(masked(frames.OP_PING) + masked(frames.OP_CLOSE, struct.pack("!H", 4000)))
    assert ws.receive() is None
    assert ws.close_code == 4000


def test_a_message_before_a_bad_frame_is_delivered_first(pair: Any) -> None:
    ws, client = pair()
    client.sendall(masked(frames.OP_TEXT, b"Hello") + masked(0x3, b""))
    assert ws.receive() == "Hello"
    ws.send_text("Hello")  # the route echoes it
    assert ws.receive() is None and ws.close_code == 1002
    got = Stream(client)
    assert got.frame() == (frames.OP_TEXT, b"Hello")
    assert close_of(got.frame()) == (1002, "reserved opcode 3")  # type: ignore[arg-type]


def test_the_reader_yields_between_batches(pair: Any) -> None:
    """With several reads' worth of frames waiting, another greenlet runs while the reader
    is in the middle of them (it would not if the reader kept the hub to itself)."""
    ws, client = pair(rate_limit=0)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    flood = masked(frames.OP_PONG) * 30_000  # 180 KB: three reads or more
    client.sendall(flood + masked(frames.OP_TEXT, b"end"))
    start = Traffic.bytes_in
    reader = gevent.spawn(ws.receive)
    progress: list[int] = []

    def bystander() -> None:
        while not reader.dead:
            progress.append(Traffic.bytes_in - start)
            gevent.sleep(0)

    watcher = gevent.spawn(bystander)
    assert reader.get(timeout=10) == "end"
    watcher.join(5)
    assert any(0 < seen < len(flood) for seen in progress), progress


def test_close_handshake_timeout_constant_is_sane() -> None:
    assert 0 < CLOSE_HANDSHAKE_TIMEOUT_S <= 5


# ---- large frames: written as header + payload, read in big chunks (issue 22) -----------------


class GatherSocket(TrickleSocket):
    """TrickleSocket whose non-blocking writes (the sender's own: `send(timeout=0.0)`,
    `sendmsg(MSG_DONTWAIT)`) take the byte counts in `takes`, one per call (0: the kernel
    is full, BlockingIOError), then everything; the writer's blocking writes trickle."""

    def __init__(self, takes: list[int]) -> None:
        super().__init__()
        self.takes = list(takes)
        self.gathered: list[Any] = []  # the buffers of the last non-blocking sendmsg

    def _now(self, data: bytes) -> int:
        n = min(self.takes.pop(0), len(data)) if self.takes else len(data)
        if n == 0:
            raise BlockingIOError
        self.out += data[:n]
        return n

    def send(self, data: Any, flags: int = 0, timeout: float | None = None) -> int:
        return self._now(bytes(data)) if timeout == 0.0 else super().send(data)

    def sendmsg(self, buffers: list[Any], ancdata: Any = (), flags: int = 0) -> int:
        if flags & socket.MSG_DONTWAIT:
            self.gathered = list(buffers)
            return self._now(b"".join(bytes(b) for b in buffers))
        return super().sendmsg(buffers)


def gather_ws(sock: GatherSocket, **kw: Any) -> WebSocket:
    opts: dict[str, Any] = {"max_message_bytes": 100_000, "send_queue": 64, "compression": False}
    opts.update(kw)
    ws = WebSocket(sock, conn_id="g", **opts)  # type: ignore[arg-type]
    ws._can_try_send = True  # it behaves as a gevent socket's non-blocking calls do
    return ws


def test_a_large_frame_is_handed_to_the_kernel_as_its_header_and_the_payload_itself() -> None:
    sock = GatherSocket([])
    ws = gather_ws(sock)
    payload = os.urandom(connection.GATHER_BYTES)
    before = Traffic.messages_out
    assert ws.send_binary(payload) is True
    assert ws._writer is None and ws.queued_bytes == 0
    assert len(sock.gathered) == 2 and sock.gathered[1] is payload  # not a joined copy
    assert bytes(sock.out) == frames.encode_frame(frames.OP_BINARY, payload)
    assert Traffic.messages_out == before + 1
    # below the threshold: one joined frame in one send
    small = os.urandom(connection.GATHER_BYTES - 1)
    sock.gathered = []
    assert ws.send_binary(small) is True and sock.gathered == []
    assert bytes(sock.out) == frames.encode_frame(frames.OP_BINARY, payload) + frames.encode_frame(
        frames.OP_BINARY, small
    )


SPLIT_PAYLOAD = 20_000  # its header: 4 bytes
SPLITS = [0, 1, 3, 4, 5, 4_000, 20_003, 20_004]


@pytest.mark.parametrize("took", SPLITS)
def test_a_gathered_write_cut_anywhere_is_finished_whole_and_in_order(took: int) -> None:
    """The kernel takes `took` bytes of header + payload (0: none, inside the header, at its
    end, inside the payload, all): the writer sends exactly the rest, before what follows."""
    sock = GatherSocket([took])
    ws = gather_ws(sock)
    payload, text = os.urandom(SPLIT_PAYLOAD), "é" * 6_000  # 12,000 bytes of UTF-8
    frame = frames.encode_frame(frames.OP_BINARY, payload)
    assert ws.send_binary(payload) is True
    assert ws.queued_bytes == len(frame) - took and bytes(sock.out) == frame[:took]
    assert ws._partial is (0 < took < len(frame))
    assert ws.send_text(text) is True  # behind the rest of the first (queued, or at once)
    for _ in range(4):
        sock.allow.put(10**9)
    wait_for(lambda: ws._writer is None and ws.queue_depth == 0)
    assert bytes(sock.out) == frame + frames.encode_frame(frames.OP_TEXT, text.encode())
    assert ws.queued_bytes == 0


@pytest.mark.parametrize("took", [1, 3, 4, 5, 4_000])
def test_eviction_finishes_a_gathered_frame_in_progress(took: int) -> None:
    sock = GatherSocket([took])
    ws = gather_ws(sock, send_queue=2)
    payload = os.urandom(SPLIT_PAYLOAD)
    assert ws.send_binary(payload)  # partly written: the writer has the rest
    small = frames.encode_frame(frames.OP_BINARY, b"s" * 10)
    assert ws.send_frame(small)  # queued: two frames
    assert ws.send_frame(small) is False and ws.evicted  # a third: over the bound
    for _ in range(40):
        sock.allow.put(10**9)
    wait_for(lambda: ws._writer is None)
    # the frame in progress is finished (never cut), the one not begun dropped, then the close
    assert bytes(sock.out) == frames.encode_frame(frames.OP_BINARY, payload) + frames.encode_close(
        1008, "slow consumer"
    )
    assert ws.queued_bytes == 0 and ws.queue_depth == 0


def test_gathered_writes_over_a_real_socket_with_a_small_buffer_stay_whole(pair: Any) -> None:
    ws, client = pair(small_buffers=True, max_message_bytes=200_000, send_queue=1000, send_queue_bytes=10_000_000)
    got = Stream(client)
    for n in (connection.GATHER_BYTES, 9_000, 65_000, 65_535, 65_536, 70_000, 150_000):
        wait_for(lambda: ws._writer is None)  # the sender writes itself: the gathered path
        payload = os.urandom(n)
        assert ws.send_binary(payload) is True
        assert ws.send_text("next") is True  # queued behind the rest, or written at once
        assert got.frame() == (frames.OP_BINARY, payload)
        assert got.frame() == (frames.OP_TEXT, b"next")
    wait_for(lambda: ws._writer is None)
    assert ws.queued_bytes == 0


class RecvSpy:
    """Delegates to the real socket; records each recv's size asked and bytes read before it."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.asked: list[tuple[int, int]] = []
        self.got = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, n: int) -> bytes:
        self.asked.append((n, self.got))
        data: bytes = self._sock.recv(n)
        self.got += len(data)
        return data


def test_a_frame_larger_than_one_read_is_read_in_big_chunks_bounded_by_what_it_lacks(pair: Any) -> None:
    size = 3_000_000
    ws, client = pair(max_message_bytes=size)
    spy = ws.sock = RecvSpy(ws.sock)  # type: ignore[assignment]
    payload, key = os.urandom(size), os.urandom(4)
    raw = struct.pack("!BBQ", 0x82, 0xFF, size) + key + frames.unmask(payload, key)
    sender = gevent.spawn(client.sendall, raw + masked(frames.OP_TEXT, b"after"))
    assert ws.receive() == payload
    assert ws.receive() == "after"
    sender.get(timeout=10)
    sizes = [n for n, _ in spy.asked]
    assert sizes[0] == connection.RECV_BYTES  # the header's read: nothing known yet
    assert max(sizes) == connection.BIG_RECV_BYTES  # then chunks of up to 1 MiB
    # never more than the frame still lacked (or one ordinary read): memory stays bounded
    assert all(n <= max(connection.RECV_BYTES, len(raw) - got) for n, got in spy.asked), spy.asked


def test_a_mutable_payload_is_copied_into_its_frame_not_kept() -> None:
    # only bytes are written gathered: a bytearray's unsent rest would be a view the
    # caller could change (or could no longer resize) after send_binary returned
    sock = GatherSocket([10])
    ws = gather_ws(sock)
    data = bytearray(b"m" * 20_000)
    assert ws.send_binary(data) is True  # type: ignore[arg-type]
    assert sock.gathered == []  # joined into a frame of its own
    data[:] = b"x" * 30_000  # the caller reuses its buffer at once
    sock.allow.put(10**9)
    wait_for(lambda: ws._writer is None)
    assert bytes(sock.out) == frames.encode_frame(frames.OP_BINARY, b"m" * 20_000)
