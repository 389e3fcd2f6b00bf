"""RFC 6455 framing (and RFC 7692 permessage-deflate), free of I/O.

`FrameReader.feed(bytes)` turns what a client sent into events, enforcing the rules a
server must: client frames masked, control frames short and unfragmented, no reserved
bits or opcodes, continuation frames in order, text valid UTF-8 (close 1007), and no
message over the size limit, counted after decompression (close 1009). Anything else
wrong is a protocol error (close 1002). `encode_frame` builds server frames (unmasked),
so one message can be encoded once and the same bytes written to every subscriber.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
# close codes a peer may send (RFC 6455 §7.4); 1005/1006/1015 must never be on the wire
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


class ProtocolError(Exception):
    """The peer broke the protocol; close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    data: str | bytes  # str for text, bytes for binary


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


Event = Message | Ping | Pong | Close


def encode_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """One final, unmasked frame (servers never mask)."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    raw = reason.encode("utf-8")[:123]  # control payloads are at most 125 bytes
    while raw:
        try:
            raw.decode("utf-8")
            break
        except UnicodeDecodeError:  # cut in the middle of a character
            raw = raw[:-1]
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + raw)


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, done as one big-integer operation (fast in CPython)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Inflater:
    """Decompresses permessage-deflate messages, stopping at the size limit.

    We negotiate `client_no_context_takeover`, so every message starts a fresh
    window: no 32 KiB zlib context is kept per idle connection.
    """

    def inflate(self, data: bytes, limit: int) -> bytes:
        d = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            out = d.decompress(data + _DEFLATE_TAIL, limit + 1)
        except zlib.error:
            raise ProtocolError(1007, "invalid compressed data") from None
        if len(out) > limit:
            raise ProtocolError(1009, "message too big")
        return out


class FrameReader:
    """Parses client-to-server bytes. One per connection, used by its reader only."""

    def __init__(self, max_message_bytes: int, inflater: Inflater | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.inflater = inflater
        self._buf = bytearray()
        self._msg_op: int | None = None  # opcode of the message being reassembled
        self._msg_compressed = False
        self._msg_parts: list[bytes] = []
        self._msg_len = 0

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes from the socket; return the complete events they finish."""
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
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
            end = pos + head + 4 + length
            if n < end:
                break
            mask = bytes(buf[pos + head : pos + head + 4])
            payload = unmask(bytes(buf[pos + head + 4 : end]), mask)
            pos = end
            event = self._on_frame(opcode, bool(fin), bool(rsv1), payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Close):
                    break
        del buf[:pos]
        return events

    def _check_header(self, opcode: int, fin: bool, rsv1: bool, length: int) -> None:
        """Refuse a bad frame as soon as its header is in, before buffering its payload."""
        if opcode in _CONTROL_OPS:
            if not fin or length > 125:
                raise ProtocolError(1002, "control frames must be final and at most 125 bytes")
            if rsv1:
                raise ProtocolError(1002, "RSV1 on a control frame")
            return
        if opcode == OP_CONT:
            if self._msg_op is None:
                raise ProtocolError(1002, "continuation frame with no message to continue")
            if rsv1:
                raise ProtocolError(1002, "RSV1 on a continuation frame")
        elif opcode in _DATA_OPS:
            if self._msg_op is not None:
                raise ProtocolError(1002, "new message before the last one finished")
            if rsv1 and self.inflater is None:
                raise ProtocolError(1002, "RSV1 set but no compression was negotiated")
        else:
            raise ProtocolError(1002, f"reserved opcode {opcode}")
        # compressed data can only grow when inflated; the inflater checks the rest
        if self._msg_len + length > self.max_message_bytes:
            raise ProtocolError(1009, "message too big")

    def _on_frame(self, opcode: int, fin: bool, rsv1: bool, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _parse_close(payload)
        if opcode != OP_CONT:
            self._msg_op = opcode
            self._msg_compressed = rsv1
        self._msg_parts.append(payload)
        self._msg_len += len(payload)
        if not fin:
            return None
        op, compressed = self._msg_op, self._msg_compressed
        data = self._msg_parts[0] if len(self._msg_parts) == 1 else b"".join(self._msg_parts)
        self._msg_op, self._msg_compressed, self._msg_parts, self._msg_len = None, False, [], 0
        if compressed:
            assert self.inflater is not None
            data = self.inflater.inflate(data, self.max_message_bytes)
        if op == OP_TEXT:
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
