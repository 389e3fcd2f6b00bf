"""RFC 6455 framing (and RFC 7692 permessage-deflate), free of I/O.

`FrameReader.feed(bytes)` turns what a client sent into events, enforcing the rules a
server must: client frames masked, control frames short and unfragmented, no reserved
bits or opcodes, continuation frames in order, text valid UTF-8 (close 1007), and no
message over the size limit (close 1009). Anything else wrong is a protocol error
(close 1002). `encode_frame` builds server frames (unmasked), so one message can be
encoded once and the same bytes written to every subscriber.

Memory is bounded by `max_message_bytes` whatever the client sends:

- a message's *size* is its payload bytes, where every continuation frame counts at
  least `FRAGMENT_COST` bytes, so a message may have at most
  `1 + max_message_bytes // FRAGMENT_COST` frames: zero-length or one-byte fragments
  cannot pile up, while a client that splits a message into ordinary chunks (gorilla's
  4 KiB write buffer) is charged exactly its payload. A compressed message must
  fit both before (wire bytes) and after inflation, and is inflated fragment by
  fragment, so the compressed form is never kept;
- a frame is refused from its header, before its payload is buffered, if it would take
  the message over the limit; the parse buffer therefore holds at most one frame of at
  most `max_message_bytes` plus one read;
- text is validated as it arrives, fragment by fragment and even inside a frame that
  is still arriving, so invalid UTF-8 fails the connection at once (Autobahn 6.4.*).

Errors never lose what came before them: `feed` raises `ProtocolError` with the events
parsed before the bad frame in `error.events`, to be delivered first.
"""

from __future__ import annotations

import codecs
import struct
import zlib
from dataclasses import dataclass


def _unmask_py(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """XOR with the 4-byte mask as one big-integer operation: the fallback where python
    websockets was installed without its C extension (0.2 to 0.5 GB/s)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - websockets' wheels ship the extension
    _apply_mask = _unmask_py

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
MAX_CONTROL_PAYLOAD = 125
# What a continuation frame costs against the message limit at least: about what
# keeping it costs us (a list slot and an object header, or the parser's per-frame work).
FRAGMENT_COST = 64
# Frames parsed per `feed` call at most: the rest waits in the buffer (`backlog`), so a
# read of 64 KiB of tiny frames is handled in slices, with other greenlets run between.
BATCH_FRAMES = 256
# close codes a peer may send (RFC 6455 §7.4); 1005/1006/1015 must never be on the wire
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class ProtocolError(Exception):
    """The peer broke the protocol; close the connection with `code`.

    `events` holds what the same `feed` call parsed before the bad frame: deliver
    those first (a valid message followed by a bad frame is still echoed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.events: list[Event] = []


@dataclass(frozen=True, slots=True)
class Message:
    data: str | bytes  # str for text, bytes for binary


@dataclass(frozen=True, slots=True)
class Fragment:
    """A data frame that does not finish its message (no payload: the reader keeps it).

    Reported so that every frame is one event, and a caller can charge each frame."""


FRAGMENT = Fragment()


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int  # 1005 when the peer sent no code
    reason: str


Event = Message | Fragment | Ping | Pong | Close


def encode_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """One final, unmasked frame (servers never mask)."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def frame_header(opcode: int, n: int) -> bytes:
    """The header of a final, unmasked frame of `n` payload bytes: `encode_frame` without
    the payload, for a writer that sends header and payload together (`sendmsg`)."""
    first = 0x80 | opcode
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return struct.pack("!BBH", first, 126, n)
    return struct.pack("!BBQ", first, 127, n)


def encode_close(code: int, reason: str = "") -> bytes:
    raw = reason.encode("utf-8")[:123]  # control payloads are at most 125 bytes
    while raw:
        try:
            raw.decode("utf-8")
            break
        except UnicodeDecodeError:  # cut in the middle of a character
            raw = raw[:-1]
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + raw)


def unmask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR with the 4-byte mask: python websockets' C helper (about 20 GB/s here; the
    pure-Python big-integer XOR, `_unmask_py`, does 0.2 to 0.5 GB/s and made 64 KiB
    messages CPU-bound). It reads any buffer, so a frame is unmasked straight out of
    the parse buffer without a copy first."""
    return _apply_mask(data, mask)


class Inflater:
    """Decompresses permessage-deflate messages, stopping at the size limit.

    We negotiate `client_no_context_takeover`, so every message starts a fresh
    window: no 32 KiB zlib context is kept per idle connection, only while a
    fragmented compressed message is arriving (`stream()`).
    """

    def inflate(self, data: bytes, limit: int) -> bytes:
        """A whole one-frame message; over `limit` bytes inflated: 1009."""
        return _inflate_chunk(zlib.decompressobj(-zlib.MAX_WBITS), data + _DEFLATE_TAIL, limit)

    def stream(self) -> zlib._Decompress:
        """A decompressor for one fragmented message, fed with `_inflate_chunk`."""
        return zlib.decompressobj(-zlib.MAX_WBITS)


def _inflate_chunk(d: zlib._Decompress, data: bytes, room: int) -> bytes:
    """Inflate `data`; more than `room` bytes out is 1009 (never inflates further)."""
    if room < 0:
        raise ProtocolError(1009, "message too big")
    try:
        out = d.decompress(data, room + 1)  # room + 1 >= 1: 0 would mean "no limit"
    except zlib.error:
        raise ProtocolError(1007, "invalid compressed data") from None
    if len(out) > room:
        raise ProtocolError(1009, "message too big")
    return out


class FrameReader:
    """Parses client-to-server bytes. One per connection, used by its reader only."""

    def __init__(
        self, max_message_bytes: int, inflater: Inflater | None = None, batch_frames: int = BATCH_FRAMES
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.inflater = inflater
        self.batch_frames = batch_frames
        self.backlog = False  # the last feed stopped at batch_frames: call feed(b"") for more
        self._buf = bytearray()
        # the message being reassembled (between its first and its final frame)
        self._msg_op: int | None = None
        self._msg_data = bytearray()  # payload so far (inflated if compressed)
        self._msg_size = 0  # len(_msg_data), each continuation counted as at least FRAGMENT_COST
        self._msg_wire = 0  # the same on the wire (differs when compressed)
        self._msg_zlib: zlib._Decompress | None = None  # set: the message is compressed
        # UTF-8 check of the text arriving: the current text message (or one-frame text
        # message still arriving), fed every byte once; `_checked` payload bytes of the
        # frame at the head of `_buf` have been fed already.
        self._utf8: codecs.IncrementalDecoder | None = None
        self._checked = 0
        self._wanted = 0  # see `wanted`

    @property
    def wanted(self) -> int:
        """Bytes still missing from the frame at the head of the buffer (0: none begun, or
        its length field is not in yet). The next read may be this large: it is part of a
        frame already admitted from its header under `max_message_bytes`, so memory stays
        bounded by the limit."""
        return self._wanted

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes from the socket; return the events (one per frame) they complete,
        at most `batch_frames` of them (then `backlog` is set: `feed(b"")` goes on).

        Raises `ProtocolError` (with the events parsed before the bad frame)."""
        held = self._buf
        # Nothing held back from the last read (the common case): parse the read itself and
        # keep only what it leaves unparsed, instead of copying every read into the buffer.
        buf: bytes | bytearray = data
        if held:
            held += data
            buf = held
        self._wanted = 0
        events: list[Event] = []
        pos = 0
        n = len(buf)
        self.backlog = False
        try:
            while n - pos >= 2:
                if len(events) >= self.batch_frames:
                    self.backlog = True
                    break
                b0, b1 = buf[pos], buf[pos + 1]
                fin, rsv1, opcode = b0 & 0x80, b0 & 0x40, b0 & 0x0F
                if b0 & 0x30:
                    raise ProtocolError(1002, "reserved bits set")
                if not b1 & 0x80:
                    raise ProtocolError(1002, "client frames must be masked")
                length = b1 & 0x7F
                head = 2
                if length == 126:
                    if n - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    head = 4
                elif length == 127:
                    if n - pos < 10:
                        break
                    (length,) = struct.unpack_from("!Q", buf, pos + 2)
                    head = 10
                    if length >> 63:
                        raise ProtocolError(1002, "frame length out of range")
                self._check_header(opcode, bool(fin), bool(rsv1), length)
                start = pos + head + 4
                end = start + length
                if n < end:
                    if n > start and not rsv1 and opcode in (OP_TEXT, OP_CONT):
                        self._check_partial(opcode, buf, start, n)
                    self._wanted = end - n
                    break
                with memoryview(buf) as view:  # released before `buf` is resized
                    payload = unmask(view[start:end], bytes(view[start - 4 : start]))
                pos = end
                event = self._on_frame(opcode, bool(fin), bool(rsv1), payload)
                events.append(event)
                if isinstance(event, Close):
                    break
        except ProtocolError as exc:
            held.clear()
            self._wanted = 0
            exc.events = events
            raise
        if buf is held:
            del held[:pos]
        elif pos < n:  # keep the unparsed rest of this read (one copy, as before)
            held += memoryview(data)[pos:]
        return events

    def _check_header(self, opcode: int, fin: bool, rsv1: bool, length: int) -> None:
        """Refuse a bad frame as soon as its header is in, before buffering its payload."""
        if opcode in _CONTROL_OPS:
            if not fin or length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(1002, "control frames must be final and at most 125 bytes")
            if rsv1:
                raise ProtocolError(1002, "RSV1 on a control frame")
            return
        if opcode == OP_CONT:
            if self._msg_op is None:
                raise ProtocolError(1002, "continuation frame with no message to continue")
            if rsv1:
                raise ProtocolError(1002, "RSV1 on a continuation frame")
            # compressed data can only grow when inflated; the inflater checks the rest
            if self._msg_wire + max(length, FRAGMENT_COST) > self.max_message_bytes:
                raise ProtocolError(1009, "message too big")
            return
        if opcode in _DATA_OPS:
            if self._msg_op is not None:
                raise ProtocolError(1002, "new message before the last one finished")
            if rsv1 and self.inflater is None:
                raise ProtocolError(1002, "RSV1 set but no compression was negotiated")
            if length > self.max_message_bytes:
                raise ProtocolError(1009, "message too big")
            return
        raise ProtocolError(1002, f"reserved opcode {opcode}")

    def _check_partial(self, opcode: int, buf: bytes | bytearray, start: int, n: int) -> None:
        """Check the UTF-8 of the part of a text frame that has arrived (fail fast)."""
        if opcode == OP_CONT and (self._msg_op != OP_TEXT or self._msg_zlib is not None):
            return
        if self._utf8 is None:  # a one-frame text message arriving in pieces
            self._utf8 = _Utf8Decoder()
        got = n - start
        if got <= self._checked:
            return
        off = self._checked
        mask = bytes(buf[start - 4 : start])
        rotated = mask[off % 4 :] + mask[: off % 4]
        with memoryview(buf) as view:  # released before `buf` is resized
            self._feed_utf8(unmask(view[start + off : n], rotated), final=False)
        self._checked = got

    def _feed_utf8(self, chunk: bytes, final: bool) -> None:
        assert self._utf8 is not None
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError:
            raise ProtocolError(1007, "text message is not valid UTF-8") from None

    def _on_frame(self, opcode: int, fin: bool, rsv1: bool, payload: bytes) -> Event:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _parse_close(payload)
        checked, self._checked = self._checked, 0
        if opcode != OP_CONT:
            if fin:  # the common case: a whole message in one frame
                # A text frame that arrived in pieces had its prefix checked as it came
                # (to fail fast); decoding it whole checks every byte again, so the
                # incremental decoder is dropped instead of being fed the rest and the
                # payload copied into a message buffer first.
                self._utf8 = None
                return self._one_frame_message(opcode, rsv1, payload)
            self._msg_op = opcode
            if rsv1:
                assert self.inflater is not None
                self._msg_zlib = self.inflater.stream()
            elif opcode == OP_TEXT and self._utf8 is None:
                self._utf8 = _Utf8Decoder()
        floor = FRAGMENT_COST if opcode == OP_CONT else 0
        self._msg_wire += max(len(payload), floor)
        chunk = payload
        if self._msg_zlib is not None:
            room = self.max_message_bytes - self._msg_size
            if room < floor:  # even a fragment that inflates to nothing counts FRAGMENT_COST
                raise ProtocolError(1009, "message too big")
            tail = _DEFLATE_TAIL if fin else b""
            chunk = _inflate_chunk(self._msg_zlib, payload + tail, room)
            if self._msg_op == OP_TEXT:
                if self._utf8 is None:
                    self._utf8 = _Utf8Decoder()
                self._feed_utf8(chunk, fin)
        elif self._utf8 is not None:
            self._feed_utf8(payload[checked:], fin)
        self._msg_size += max(len(chunk), floor)  # within the limit: checked above or from the header
        self._msg_data += chunk
        if not fin:
            return FRAGMENT
        op, data = self._msg_op, self._msg_data
        self._msg_op, self._msg_data, self._msg_zlib, self._utf8 = None, bytearray(), None, None
        self._msg_size = self._msg_wire = 0
        if op == OP_TEXT:
            return Message(data.decode("utf-8"))  # checked above
        return Message(bytes(data))

    def _one_frame_message(self, opcode: int, rsv1: bool, payload: bytes) -> Message:
        data = payload
        if rsv1:
            assert self.inflater is not None
            data = self.inflater.inflate(payload, self.max_message_bytes)
        if opcode == OP_TEXT:
            try:
                return Message(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(1007, "text message is not valid UTF-8") from None
        return Message(data)


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not valid UTF-8") from None
    return Close(code, reason)
