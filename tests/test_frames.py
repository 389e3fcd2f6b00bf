"""RFC 6455 framing rules (pure)."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from wsapp import frames
from wsapp.frames import Close, FrameReader, Message, Ping, Pong, ProtocolError


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, mbit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + frames.unmask(payload, key)


def feed(data: bytes, limit: int = 65536, inflate: bool = False) -> list[frames.Event]:
    return FrameReader(limit, frames.Inflater() if inflate else None).feed(data)


def error_code(data: bytes, limit: int = 65536, inflate: bool = False) -> int:
    with pytest.raises(ProtocolError) as info:
        feed(data, limit, inflate)
    return info.value.code


def test_text_binary_ping_pong_close() -> None:
    data = (
        client_frame(1, "héllo".encode())
        + client_frame(2, b"\x00\xff")
        + client_frame(9, b"p")
        + client_frame(10, b"q")
        + client_frame(8, struct.pack("!H", 1000) + b"bye")
    )
    assert feed(data) == [Message("héllo"), Message(b"\x00\xff"), Ping(b"p"), Pong(b"q"), Close(1000, "bye")]


def test_all_length_encodings_and_byte_by_byte_arrival() -> None:
    for n in (0, 125, 126, 65535, 65536, 100_000):
        payload = os.urandom(n)
        reader = FrameReader(200_000)
        raw = client_frame(2, payload)
        events: list[frames.Event] = []
        step = 1 if n < 200 else 4096
        for i in range(0, len(raw), step):
            events += reader.feed(raw[i : i + step])
        assert events == [Message(payload)]


def test_fragmented_message_with_interleaved_ping() -> None:
    data = client_frame(1, b"he", fin=False) + client_frame(9, b"") + client_frame(0, b"llo")
    assert feed(data) == [Ping(b""), Message("hello")]


def test_unmasked_client_frame_is_protocol_error() -> None:
    assert error_code(client_frame(1, b"x", mask=False)) == 1002


def test_reserved_bits_and_opcodes_are_protocol_errors() -> None:
    assert error_code(client_frame(1, b"x", rsv=0x20)) == 1002
    assert error_code(client_frame(3, b"x")) == 1002
    assert error_code(client_frame(1, b"x", rsv=0x40)) == 1002  # RSV1 without deflate


def test_control_frame_rules() -> None:
    assert error_code(client_frame(9, b"x" * 126)) == 1002
    assert error_code(client_frame(9, b"x", fin=False)) == 1002


def test_continuation_rules() -> None:
    assert error_code(client_frame(0, b"x")) == 1002
    assert error_code(client_frame(1, b"a", fin=False) + client_frame(1, b"b")) == 1002


def test_invalid_utf8_is_1007() -> None:
    assert error_code(client_frame(1, b"\xff\xfe")) == 1007
    # split inside a character across fragments is fine
    euro = "€".encode()
    assert feed(client_frame(1, euro[:1], fin=False) + client_frame(0, euro[1:])) == [Message("€")]


def test_message_over_limit_is_1009_before_the_payload_arrives() -> None:
    raw = client_frame(2, b"x" * 1001)
    with pytest.raises(ProtocolError) as info:
        FrameReader(1000).feed(raw[:8])  # only the header
    assert info.value.code == 1009
    assert error_code(client_frame(2, b"x" * 600, fin=False) + client_frame(0, b"x" * 600), limit=1000) == 1009


def test_close_frame_validation() -> None:
    assert feed(client_frame(8, b"")) == [Close(1005, "")]
    assert error_code(client_frame(8, b"\x03")) == 1002
    assert error_code(client_frame(8, struct.pack("!H", 1005))) == 1002
    assert error_code(client_frame(8, struct.pack("!H", 999))) == 1002
    assert feed(client_frame(8, struct.pack("!H", 4000))) == [Close(4000, "")]
    assert error_code(client_frame(8, struct.pack("!H", 1000) + b"\xff")) == 1007


def test_deflate_message_and_decompressed_limit() -> None:
    body = b"a" * 5000
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    compressed = (c.compress(body) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert feed(client_frame(2, compressed, rsv=0x40), inflate=True) == [Message(body)]
    # small on the wire, over the limit once inflated: 1009
    assert error_code(client_frame(2, compressed, rsv=0x40), limit=4000, inflate=True) == 1009


def test_server_frames_round_trip_and_encode_close_cuts_reason() -> None:
    frame = frames.encode_frame(frames.OP_TEXT, b"x" * 70000)
    assert frame[:2] == b"\x81\x7f" and len(frame) == 70010
    close = frames.encode_close(1000, "é" * 100)
    assert len(close) <= 127
    close[4:].decode("utf-8")
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    compressed = (c.compress(b"hello" * 100) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert frames.Inflater().inflate(compressed, 1000) == b"hello" * 100
