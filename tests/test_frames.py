"""RFC 6455 framing rules (pure), table-driven: every rule at and around its limit."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable

import pytest

from wsapp import frames
from wsapp.frames import FRAGMENT, FRAGMENT_COST, Close, FrameReader, Message, Ping, Pong, ProtocolError

RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
LIMIT = 1000


def client_frame(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True, length: int | None = None
) -> bytes:
    """A client frame; `length` forces the header's length field (with the 64-bit form)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if length is not None:
        head = struct.pack("!BBQ", first, mbit | 127, length)
    elif n < 126:
        head = bytes((first, mbit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + frames.unmask(payload, key)


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def feed(data: bytes, limit: int = LIMIT, inflate: bool = False) -> list[frames.Event]:
    return FrameReader(limit, frames.Inflater() if inflate else None).feed(data)


def failure(data: bytes, limit: int = LIMIT, inflate: bool = False) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        feed(data, limit, inflate)
    return info.value


Closing = tuple[int, str]  # the close code and reason the client gets


def outcome(data: bytes, limit: int = LIMIT, inflate: bool = False) -> Closing | list[frames.Event]:
    """The close (code, reason) the bytes earn, or the events when they are fine."""
    try:
        return feed(data, limit, inflate)
    except ProtocolError as exc:
        return exc.code, exc.reason


C = client_frame
CLOSE_1000 = struct.pack("!H", 1000)
# what a client is told (docs/protocol.md: 1002 says what was wrong)
RESERVED_BITS = (1002, "reserved bits set")
UNMASKED = (1002, "client frames must be masked")
LENGTH_RANGE = (1002, "frame length out of range")
BAD_CONTROL = (1002, "control frames must be final and at most 125 bytes")
RSV1_CONTROL = (1002, "RSV1 on a control frame")
ORPHAN = (1002, "continuation frame with no message to continue")
RSV1_CONT = (1002, "RSV1 on a continuation frame")
INTERLEAVED = (1002, "new message before the last one finished")
RSV1_PLAIN = (1002, "RSV1 set but no compression was negotiated")
CLOSE_1_BYTE = (1002, "close frame with a 1-byte payload")
TOO_BIG = (1009, "message too big")
BAD_UTF8 = (1007, "text message is not valid UTF-8")
BAD_REASON = (1007, "close reason is not valid UTF-8")
BAD_DEFLATE = (1007, "invalid compressed data")

# (name, bytes, limit, inflate, expected: close code or events)
HEADER_CASES = [
    ("text", C(1, b"hi"), LIMIT, False, [Message("hi")]),
    ("binary", C(2, b"\x00\xff"), LIMIT, False, [Message(b"\x00\xff")]),
    ("unmasked text", C(1, b"x", mask=False), LIMIT, False, UNMASKED),
    ("unmasked ping", C(9, b"", mask=False), LIMIT, False, UNMASKED),
    ("RSV1 text, no deflate", C(1, b"x", rsv=RSV1), LIMIT, False, RSV1_PLAIN),
    ("RSV2 text", C(1, b"x", rsv=RSV2), LIMIT, False, RESERVED_BITS),
    ("RSV3 text", C(1, b"x", rsv=RSV3), LIMIT, True, RESERVED_BITS),
    ("RSV2 with deflate", C(1, b"x", rsv=RSV2), LIMIT, True, RESERVED_BITS),
    ("RSV1 ping, deflate on", C(9, b"", rsv=RSV1), LIMIT, True, RSV1_CONTROL),
    ("RSV1 pong, deflate on", C(10, b"", rsv=RSV1), LIMIT, True, RSV1_CONTROL),
    ("RSV1 close, deflate on", C(8, b"", rsv=RSV1), LIMIT, True, RSV1_CONTROL),
    (
        "RSV1 continuation, deflate on",
        C(1, deflate(b"ab"), fin=False, rsv=RSV1) + C(0, b"", rsv=RSV1),
        LIMIT,
        True,
        RSV1_CONT,
    ),
    ("RSV1 continuation of plain text", C(1, b"a", fin=False) + C(0, b"b", rsv=RSV1), LIMIT, True, RSV1_CONT),
    *[
        (f"reserved opcode {op}", C(op, b""), LIMIT, False, (1002, f"reserved opcode {op}"))
        for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
    ],
    ("ping 125 bytes", C(9, b"p" * 125), LIMIT, False, [Ping(b"p" * 125)]),
    ("ping 126 bytes", C(9, b"p" * 126), LIMIT, False, BAD_CONTROL),
    ("pong 125 bytes", C(10, b"p" * 125), LIMIT, False, [Pong(b"p" * 125)]),
    ("pong 126 bytes", C(10, b"p" * 126), LIMIT, False, BAD_CONTROL),
    ("close 125 bytes", C(8, CLOSE_1000 + b"r" * 123), LIMIT, False, [Close(1000, "r" * 123)]),
    ("close 126 bytes", C(8, CLOSE_1000 + b"r" * 124), LIMIT, False, BAD_CONTROL),
    ("fragmented ping", C(9, b"", fin=False), LIMIT, False, BAD_CONTROL),
    ("fragmented pong", C(10, b"", fin=False), LIMIT, False, BAD_CONTROL),
    ("fragmented close", C(8, b"", fin=False), LIMIT, False, BAD_CONTROL),
    ("orphan continuation", C(0, b"x"), LIMIT, False, ORPHAN),
    ("new message inside a message", C(1, b"a", fin=False) + C(1, b"b"), LIMIT, False, INTERLEAVED),
    ("binary inside text", C(1, b"a", fin=False) + C(2, b"b"), LIMIT, False, INTERLEAVED),
    # the 63-bit length: the most significant bit must be 0 (even with a limit that large)
    ("length MSB set", C(2, b"", length=1 << 63), 1 << 64, False, LENGTH_RANGE),
    ("length MSB set, small limit", C(2, b"", length=(1 << 63) + 5), LIMIT, False, LENGTH_RANGE),
    ("length 2^63-1, small limit", C(2, b"", length=(1 << 63) - 1), LIMIT, False, TOO_BIG),
    # the size limit, a single frame: at the limit passes, one over is 1009
    ("binary at the limit", C(2, b"x" * LIMIT), LIMIT, False, [Message(b"x" * LIMIT)]),
    ("binary one over the limit", C(2, b"x" * (LIMIT + 1)), LIMIT, False, TOO_BIG),
    ("text at the limit", C(1, b"x" * LIMIT), LIMIT, False, [Message("x" * LIMIT)]),
    ("text one over the limit", C(1, b"x" * (LIMIT + 1)), LIMIT, False, TOO_BIG),
    # fragments: each continuation costs its payload, and at least FRAGMENT_COST
    (
        "two fragments at the limit",
        C(2, b"a" * 500, fin=False) + C(0, b"b" * (LIMIT - 500)),
        LIMIT,
        False,
        [FRAGMENT, Message(b"a" * 500 + b"b" * (LIMIT - 500))],
    ),
    (
        "two fragments one over the limit",
        C(2, b"a" * 500, fin=False) + C(0, b"b" * (LIMIT - 500 + 1)),
        LIMIT,
        False,
        TOO_BIG,
    ),
    (
        "text fragments one over the limit",
        C(1, b"a" * 500, fin=False) + C(0, b"b" * (LIMIT - 500 + 1)),
        LIMIT,
        False,
        TOO_BIG,
    ),
    (
        "a short last fragment counts FRAGMENT_COST: at the limit",
        C(2, b"a" * (LIMIT - FRAGMENT_COST), fin=False) + C(0, b"b"),
        LIMIT,
        False,
        [FRAGMENT, Message(b"a" * (LIMIT - FRAGMENT_COST) + b"b")],
    ),
    (
        "a short last fragment counts FRAGMENT_COST: one over",
        C(2, b"a" * (LIMIT - FRAGMENT_COST + 1), fin=False) + C(0, b"b"),
        LIMIT,
        False,
        TOO_BIG,
    ),
    (
        "empty fragments up to the limit",
        C(2, b"", fin=False) + C(0, b"", fin=False) * (LIMIT // FRAGMENT_COST - 1) + C(0, b""),
        LIMIT,
        False,
        [FRAGMENT] * (LIMIT // FRAGMENT_COST) + [Message(b"")],
    ),
    (
        "one empty fragment too many",
        C(2, b"", fin=False) + C(0, b"", fin=False) * (LIMIT // FRAGMENT_COST) + C(0, b""),
        LIMIT,
        False,
        TOO_BIG,
    ),
    # UTF-8
    ("invalid UTF-8", C(1, b"\xff\xfe"), LIMIT, False, BAD_UTF8),
    ("overlong UTF-8", C(1, b"\xc0\xaf"), LIMIT, False, BAD_UTF8),
    ("surrogate in UTF-8", C(1, b"\xed\xa0\x80"), LIMIT, False, BAD_UTF8),
    ("truncated UTF-8 at the end", C(1, "€".encode()[:2]), LIMIT, False, BAD_UTF8),
    ("invalid UTF-8 in binary is fine", C(2, b"\xff"), LIMIT, False, [Message(b"\xff")]),
    (
        "character split across fragments",
        C(1, "€".encode()[:1], fin=False) + C(0, "€".encode()[1:]),
        LIMIT,
        False,
        [FRAGMENT, Message("€")],
    ),
    ("truncated character at the last fragment", C(1, b"a", fin=False) + C(0, b"\xe2\x82"), LIMIT, False, BAD_UTF8),
    # close frames
    ("close, no payload", C(8, b""), LIMIT, False, [Close(1005, "")]),
    ("close, 1-byte payload", C(8, b"\x03"), LIMIT, False, CLOSE_1_BYTE),
    # the code is read unsigned: 32768 and 65535 are refused as themselves
    *[
        (f"close code {code}", C(8, struct.pack("!H", code)), LIMIT, False, (1002, f"invalid close code {code}"))
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 32768, 65535)
    ],
    *[
        (f"close code {code}", C(8, struct.pack("!H", code)), LIMIT, False, [Close(code, "")])
        for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999)
    ],
    ("close reason bad UTF-8", C(8, CLOSE_1000 + b"\xff"), LIMIT, False, BAD_REASON),
    ("data after close is left alone", C(8, CLOSE_1000) + C(1, b"\xff"), LIMIT, False, [Close(1000, "")]),
]


@pytest.mark.parametrize(
    ("data", "limit", "inflate", "expected"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES]
)
def test_frame_rules(data: bytes, limit: int, inflate: bool, expected: Closing | list[frames.Event]) -> None:
    assert outcome(data, limit, inflate) == expected


def test_all_length_encodings_and_byte_by_byte_arrival() -> None:
    for n in (0, 125, 126, 127, 65535, 65536, 100_000):
        for opcode, payload in ((2, os.urandom(n)), (1, ("é" * n).encode()[:n] if n % 2 == 0 else b"a" * n)):
            reader = FrameReader(200_000)
            raw = client_frame(opcode, payload)
            events: list[frames.Event] = []
            step = 1 if n < 200 else 4093
            for i in range(0, len(raw), step):
                events += reader.feed(raw[i : i + step])
            assert events == [Message(payload if opcode == 2 else payload.decode())]


def test_length_encodings_use_the_shortest_header_boundaries() -> None:
    # 125 fits the 7-bit field, 126..65535 the 16-bit one, 65536 the 64-bit one: each parses
    for n in (125, 126, 65535, 65536):
        assert feed(client_frame(2, b"z" * n), limit=70_000) == [Message(b"z" * n)]


def test_fragmented_message_with_interleaved_control_frames() -> None:
    data = client_frame(1, b"he", fin=False) + client_frame(9, b"") + client_frame(0, b"l", fin=False)
    data += client_frame(10, b"x") + client_frame(0, b"lo")
    assert feed(data) == [FRAGMENT, Ping(b""), FRAGMENT, Pong(b"x"), Message("hello")]


def test_one_event_per_frame_and_the_message_is_reset() -> None:
    reader = FrameReader(LIMIT)
    assert reader.feed(client_frame(2, b"a", fin=False)) == [FRAGMENT]
    assert reader.feed(client_frame(0, b"b")) == [Message(b"ab")]
    # a fresh message afterwards, and the size budget starts again from zero: all of it
    body = b"c" * LIMIT
    assert reader.feed(client_frame(2, b"", fin=False) + client_frame(0, body)) == [FRAGMENT, Message(body)]
    with pytest.raises(ProtocolError) as info:  # the message is over: nothing to continue
        reader.feed(client_frame(0, b"x"))
    assert (info.value.code, info.value.reason) == ORPHAN


def test_events_before_an_error_are_kept() -> None:
    # Autobahn 3.2-ish: a valid message, then a bad frame in the same read
    exc = failure(client_frame(1, b"Hello") + client_frame(1, b"x", rsv=RSV2) + client_frame(9, b"never"))
    assert (exc.code, exc.reason) == RESERVED_BITS and exc.events == [Message("Hello")]
    exc = failure(client_frame(9, b"p") + client_frame(1, b"\xff"))
    assert (exc.code, exc.reason) == BAD_UTF8 and exc.events == [Ping(b"p")]
    exc = failure(client_frame(1, b"a", fin=False) + client_frame(0, b"b", fin=False) + client_frame(2, b""))
    assert (exc.code, exc.reason) == INTERLEAVED and exc.events == [FRAGMENT, FRAGMENT]
    assert failure(client_frame(3, b"")).events == []


def test_invalid_utf8_fails_at_the_fragment_that_has_it() -> None:
    # Autobahn 6.4.1/6.4.2: the bad fragment fails at once, before the message ends
    reader = FrameReader(LIMIT)
    assert reader.feed(client_frame(1, "κόσμε".encode(), fin=False)) == [FRAGMENT]
    with pytest.raises(ProtocolError) as info:
        reader.feed(client_frame(0, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80", fin=False))
    assert (info.value.code, info.value.reason) == BAD_UTF8


def test_invalid_utf8_fails_inside_a_frame_still_arriving() -> None:
    # Autobahn 6.4.3/6.4.4: one frame in chops; the bad chop fails before the rest arrives
    for opcode_first, prefix in ((1, b""), (0, b"ok")):
        reader = FrameReader(LIMIT)
        if opcode_first == 0:
            assert reader.feed(client_frame(1, prefix, fin=False)) == [FRAGMENT]
        payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited" * 10
        raw = client_frame(opcode_first, payload)
        head = 6  # 2 + mask
        assert reader.feed(raw[: head + 5]) == []  # valid so far
        with pytest.raises(ProtocolError) as info:
            reader.feed(raw[head + 5 : head + 15])  # the invalid sequence arrives
        assert (info.value.code, info.value.reason) == BAD_UTF8


def test_a_valid_frame_arriving_in_chops_is_checked_once_and_whole() -> None:
    # every split point, including inside a character and inside the mask
    payload = "a€b𝄞c".encode() * 3
    raw = client_frame(1, payload)
    for cut in range(1, len(raw)):
        reader = FrameReader(LIMIT)
        assert reader.feed(raw[:cut]) + reader.feed(raw[cut:]) == [Message(payload.decode())]
    # and a binary frame in chops is never UTF-8 checked
    raw = client_frame(2, b"\xff" * 40)
    reader = FrameReader(LIMIT)
    assert reader.feed(raw[:20]) == [] and reader.feed(raw[20:]) == [Message(b"\xff" * 40)]


def test_partial_control_frame_is_not_utf8_checked() -> None:
    raw = client_frame(9, b"\xff\xfe\xfd")
    reader = FrameReader(LIMIT)
    assert reader.feed(raw[:7]) == [] and reader.feed(raw[7:]) == [Ping(b"\xff\xfe\xfd")]


def test_message_over_limit_is_1009_before_the_payload_arrives() -> None:
    raw = client_frame(2, b"x" * 1001)
    with pytest.raises(ProtocolError) as info:
        FrameReader(1000).feed(raw[:8])  # only the header
    assert (info.value.code, info.value.reason) == TOO_BIG
    cont = client_frame(0, b"x" * 701)
    reader = FrameReader(1000)
    reader.feed(client_frame(2, b"x" * 300, fin=False))
    with pytest.raises(ProtocolError) as info:
        reader.feed(cont[:8])
    assert (info.value.code, info.value.reason) == TOO_BIG


@pytest.mark.parametrize(("size", "header"), [(1001, 4), (70_000, 10)])
@pytest.mark.parametrize("after_a_message", [False, True])
def test_over_the_limit_is_refused_from_the_length_header_alone(size: int, header: int, after_a_message: bool) -> None:
    # the 16-bit length is in after 4 bytes, the 64-bit one after 10: no need to wait for the mask
    before = client_frame(1, b"ok") if after_a_message else b""
    reader = FrameReader(1000)
    raw = before + client_frame(2, b"x" * size)
    assert reader.feed(raw[: len(before) + header - 1]) == ([Message("ok")] if after_a_message else [])
    with pytest.raises(ProtocolError) as info:
        reader.feed(raw[len(before) + header - 1 : len(before) + header])
    assert (info.value.code, info.value.reason) == TOO_BIG


@pytest.mark.parametrize("step", [1, 2, 3, 7, 4093])
def test_a_stream_of_frames_of_every_length_form_in_any_chops(step: int) -> None:
    # several frames on one reader, each header split at every place against the one before
    payloads = [b"", b"a" * 125, b"b" * 126, "é".encode() * 40, b"c" * 65536, b"d", b"e" * 65535]
    raw = b"".join(client_frame(2 if i % 2 else 1, p) for i, p in enumerate(payloads))
    raw += client_frame(8, CLOSE_1000 + b"bye")
    reader = FrameReader(70_000)
    events: list[frames.Event] = []
    for i in range(0, len(raw), step):
        events += reader.feed(raw[i : i + step])
    expected: list[frames.Event] = [Message(p if i % 2 else p.decode()) for i, p in enumerate(payloads)]
    assert events == [*expected, Close(1000, "bye")]


def test_text_messages_arriving_in_chops_one_after_another_on_one_reader() -> None:
    # each cut inside a character: what was checked of one message never leaks into the next
    reader = FrameReader(LIMIT)
    for text in ("€", "ab", "𝄞x", "é"):
        raw = client_frame(1, text.encode())
        assert reader.feed(raw[:7]) == []  # header, mask and the first payload byte
        assert reader.feed(raw[7:]) == [Message(text)]
    raw = client_frame(1, b"a", fin=False) + client_frame(0, "€".encode())
    assert reader.feed(raw[:-2]) == [FRAGMENT] and reader.feed(raw[-2:]) == [Message("a€")]
    assert reader.feed(client_frame(1, b"z")) == [Message("z")]


def test_only_plain_text_is_utf8_checked_while_a_continuation_arrives() -> None:
    # a binary message's continuation, and a compressed text one (deflate bytes on the
    # wire), are not UTF-8 in flight: arriving in chops, they are no 1007
    reader = FrameReader(LIMIT)
    assert reader.feed(client_frame(2, b"\xff", fin=False)) == [FRAGMENT]
    raw = client_frame(0, b"\xfe\xff" * 20)
    assert reader.feed(raw[:20]) == [] and reader.feed(raw[20:]) == [Message(b"\xff" + b"\xfe\xff" * 20)]

    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = c.compress(b"hello ") + c.flush(zlib.Z_SYNC_FLUSH)
    rest = (c.compress("wörld ".encode() * 30) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    with pytest.raises(UnicodeDecodeError):
        rest.decode("utf-8")
    reader = FrameReader(LIMIT, frames.Inflater())
    assert reader.feed(client_frame(1, first, fin=False, rsv=RSV1)) == [FRAGMENT]
    raw = client_frame(0, rest)
    assert reader.feed(raw[:12]) == [] and reader.feed(raw[12:]) == [Message("hello " + "wörld " * 30)]


def test_parse_buffer_and_message_stay_bounded_under_an_endless_fragmented_message() -> None:
    # 1-byte and empty continuation frames forever: 1009 after at most limit/FRAGMENT_COST frames
    for piece in (b"", b"x"):
        reader = FrameReader(LIMIT)
        reader.feed(client_frame(2, piece, fin=False))
        count = 1
        with pytest.raises(ProtocolError) as info:
            while count < 10 * LIMIT:
                reader.feed(client_frame(0, piece, fin=False))
                count += 1
        assert (info.value.code, info.value.reason) == TOO_BIG
        assert count <= 1 + LIMIT // FRAGMENT_COST
        assert len(reader._msg_data) <= LIMIT


# ---- permessage-deflate ---------------------------------------------------------------


def test_deflate_one_frame_message_and_inflated_limit() -> None:
    body = b"a" * 5000
    assert feed(client_frame(2, deflate(body), rsv=RSV1), limit=5000, inflate=True) == [Message(body)]
    assert outcome(client_frame(2, deflate(body), rsv=RSV1), limit=4999, inflate=True) == TOO_BIG
    text = "é" * 2000
    assert feed(client_frame(1, deflate(text.encode()), rsv=RSV1), limit=4000, inflate=True) == [Message(text)]
    assert outcome(client_frame(1, deflate(b"\xff" * 10), rsv=RSV1), inflate=True) == BAD_UTF8


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001])
def test_inflater_limit_off_by_one(size: int) -> None:
    data = os.urandom(size).hex().encode()[:size]
    if size == 1001:
        with pytest.raises(ProtocolError) as info:
            frames.Inflater().inflate(deflate(data), 1000)
        assert (info.value.code, info.value.reason) == TOO_BIG
    else:
        assert frames.Inflater().inflate(deflate(data), 1000) == data


def test_deflate_fragmented_message_is_inflated_per_fragment() -> None:
    body = ("wsapp " * 800).encode()  # 4800 bytes
    compressed = deflate(body)
    parts = [compressed[:10], compressed[10:20], compressed[20:]]
    data = client_frame(1, parts[0], fin=False, rsv=RSV1) + client_frame(0, parts[1], fin=False)
    data += client_frame(0, parts[2])
    # what each fragment inflates to; a continuation counts at least FRAGMENT_COST
    z = zlib.decompressobj(-15)
    sizes = [
        len(z.decompress(parts[0])),
        len(z.decompress(parts[1])),
        len(z.decompress(parts[2] + b"\x00\x00\xff\xff")),
    ]
    limit = sizes[0] + max(sizes[1], FRAGMENT_COST) + max(sizes[2], FRAGMENT_COST)
    assert sizes[1] < FRAGMENT_COST  # the floor is what this case measures
    assert feed(data, limit=limit, inflate=True) == [FRAGMENT, FRAGMENT, Message(body.decode())]
    assert outcome(data, limit=limit - 1, inflate=True) == TOO_BIG
    # a bomb in fragments stops at the limit, mid-message
    bomb = deflate(b"a" * 100_000)
    data = client_frame(2, bomb[:5], fin=False, rsv=RSV1) + client_frame(0, bomb[5:], fin=False)
    assert outcome(data, limit=LIMIT, inflate=True) == TOO_BIG
    # invalid UTF-8 inside a compressed fragmented text message fails at its fragment
    bad = deflate(b"ok\xff")
    assert outcome(client_frame(1, bad, fin=False, rsv=RSV1), inflate=True) == BAD_UTF8
    assert outcome(client_frame(2, b"\x07\x07\x07", rsv=RSV1), inflate=True) == BAD_DEFLATE  # not deflate data


def test_deflate_fragments_that_each_inflate_count_toward_the_limit() -> None:
    # each fragment a flushed piece of its own: what every earlier one inflated to counts
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    parts = [c.compress(bytes([65 + i]) * 3000) + c.flush(zlib.Z_SYNC_FLUSH) for i in range(3)]
    parts[-1] = parts[-1][:-4]
    data = client_frame(2, parts[0], fin=False, rsv=RSV1) + client_frame(0, parts[1], fin=False)
    data += client_frame(0, parts[2])
    body = b"A" * 3000 + b"B" * 3000 + b"C" * 3000
    limit = len(body)  # fragments of 3,000 bytes each count what they inflate to
    assert feed(data, limit=limit, inflate=True) == [FRAGMENT, FRAGMENT, Message(body)]
    assert outcome(data, limit=limit - 1, inflate=True) == TOO_BIG


def test_deflate_wire_size_is_bounded_too() -> None:
    # incompressible data grows a little when deflated: over the limit on the wire is 1009
    body = os.urandom(LIMIT)
    compressed = deflate(body)
    assert len(compressed) > LIMIT
    assert outcome(client_frame(2, compressed, rsv=RSV1), inflate=True) == TOO_BIG


# ---- server frames ----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "header"), [(0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e")])
def test_encode_frame_short_headers(n: int, header: bytes) -> None:
    assert frames.encode_frame(frames.OP_TEXT, b"x" * n) == header + b"x" * n


def test_encode_frame_long_headers_and_rsv1() -> None:
    assert frames.encode_frame(frames.OP_BINARY, b"x" * 65535)[:4] == b"\x82\x7e\xff\xff"
    frame = frames.encode_frame(frames.OP_TEXT, b"x" * 65536)
    assert frame[:10] == b"\x81\x7f" + struct.pack("!Q", 65536) and len(frame) == 65546
    assert frames.encode_frame(frames.OP_TEXT, b"", rsv1=True) == b"\xc1\x00"
    assert frames.encode_frame(frames.OP_BINARY, b"", rsv1=True) == b"\xc2\x00"  # a compressed binary message


def test_encode_close_cuts_the_reason_on_a_character_boundary() -> None:
    assert frames.encode_close(1000) == b"\x88\x02\x03\xe8"
    assert frames.encode_close(1008, "slow consumer") == b"\x88\x0f\x03\xf0slow consumer"
    close = frames.encode_close(1000, "ab" + "é" * 100)  # cut after "ab" and 60 × é
    assert close[1] == 2 + 122 and close[4:].decode("utf-8") == "ab" + "é" * 60
    close = frames.encode_close(1000, "é" * 100)  # 200 bytes of reason: cut to 122 (61 × é)
    assert close[1] == 2 + 122 and close[4:].decode("utf-8") == "é" * 61
    close = frames.encode_close(1000, "a" * 200)
    assert close[1] == 125 and close[4:] == b"a" * 123


# the C helper (python websockets) and the pure-Python fallback used without it
@pytest.mark.parametrize("unmask", [frames.unmask, frames._unmask_py], ids=["unmask", "fallback"])
def test_unmask_round_trips_any_length_from_any_buffer(unmask: Callable[[bytes, bytes], bytes]) -> None:
    key = b"\x01\x02\x03\x04"
    for n in (0, 1, 3, 4, 5, 7, 1000):
        data = os.urandom(n)
        masked = unmask(data, key)
        assert isinstance(masked, bytes) and len(masked) == n and unmask(masked, key) == data
        assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(data))
        assert unmask(bytearray(data), key) == masked and unmask(memoryview(b"xx" + data)[2:], key) == masked


def test_the_reader_works_the_same_with_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "_apply_mask", frames._unmask_py)
    payload = "a€b".encode() * 50
    raw = client_frame(1, payload, fin=False) + client_frame(9, b"p") + client_frame(0, b"\x00" * 3)
    reader = FrameReader(LIMIT)
    assert reader.feed(raw[:9]) + reader.feed(raw[9:]) == [FRAGMENT, Ping(b"p"), Message(payload.decode() + "\0" * 3)]


@pytest.mark.parametrize(("count", "batch"), [(600, 256), (256, 256), (257, 256), (5, 1)])
def test_feed_hands_out_at_most_a_batch_and_keeps_the_rest(count: int, batch: int) -> None:
    reader = FrameReader(LIMIT, batch_frames=batch)
    assert reader.backlog is False  # nothing read yet: nothing waiting
    assert reader.feed(client_frame(9, b"q")) == [Ping(b"q")] and reader.backlog is False
    events = reader.feed(client_frame(9, b"p") * count)
    sizes = [len(events)]
    while reader.backlog:
        more = reader.feed(b"")
        sizes.append(len(more))
        events += more
    assert events == [Ping(b"p")] * count
    assert sizes == [batch] * (count // batch) + ([count % batch] if count % batch else [])
    assert frames.BATCH_FRAMES == 256


class SpyDecompress:
    """Stands in for a zlib decompressor: produces as much as it is allowed to."""

    def __init__(self) -> None:
        self.limits: list[int] = []

    def decompress(self, data: bytes, max_length: int) -> bytes:
        self.limits.append(max_length)
        return b"x" * (max_length or 10**6)  # 0 would mean "no limit" to zlib


@pytest.mark.parametrize("room", [0, 1, 100])
def test_inflate_asks_zlib_for_one_byte_past_the_room_at_most(room: int) -> None:
    spy = SpyDecompress()
    with pytest.raises(ProtocolError) as info:
        frames._inflate_chunk(spy, b"data", room)  # type: ignore[arg-type]
    assert (info.value.code, info.value.reason) == TOO_BIG and spy.limits == [room + 1]


def test_no_room_left_is_1009_without_inflating_at_all() -> None:
    spy = SpyDecompress()  # asked with max_length 0, zlib would inflate without a limit
    with pytest.raises(ProtocolError) as info:
        frames._inflate_chunk(spy, b"data", -1)  # type: ignore[arg-type]
    assert (info.value.code, info.value.reason) == TOO_BIG and spy.limits == []


def test_a_message_in_ordinary_chunks_costs_its_payload() -> None:
    # gorilla/websocket's default 4 KiB write buffer: 65,000 bytes in 16 frames fits 65,536
    body = os.urandom(65_000)
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    data = b"".join(client_frame(2 if i == 0 else 0, c, fin=i == len(chunks) - 1) for i, c in enumerate(chunks))
    assert FrameReader(65_536).feed(data) == [FRAGMENT] * (len(chunks) - 1) + [Message(body)]


def test_a_compressed_fragment_counts_fragment_cost_even_when_it_inflates_to_nothing() -> None:
    # the first fragment inflates to all but FRAGMENT_COST (or one byte less) of the limit
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = c.compress(b"z" * (LIMIT - FRAGMENT_COST)) + c.flush(zlib.Z_SYNC_FLUSH)
    data = client_frame(2, first, fin=False, rsv=RSV1) + client_frame(0, b"\x00")  # an empty stored block
    assert feed(data, inflate=True) == [FRAGMENT, Message(b"z" * (LIMIT - FRAGMENT_COST))]
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = c.compress(b"z" * (LIMIT - FRAGMENT_COST + 1)) + c.flush(zlib.Z_SYNC_FLUSH)
    data = client_frame(2, first, fin=False, rsv=RSV1) + client_frame(0, b"\x00")
    assert outcome(data, inflate=True) == TOO_BIG


def test_every_continuation_adds_to_what_the_header_check_counts() -> None:
    # three frames: the third is refused from its header alone, before its payload
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(2, b"a" * 500, fin=False) + client_frame(0, b"b" * 500, fin=False))
    third = client_frame(0, b"c" * (LIMIT - 1000 + 1))
    with pytest.raises(ProtocolError) as info:
        reader.feed(third[:8])
    assert (info.value.code, info.value.reason) == TOO_BIG


# ---- the read path: a read parsed in place, the rest kept (issue 22) -------------------------

# every kind of frame, each length encoding, a fragmented text message with a ping inside
MIXED = [
    client_frame(9, b"p"),
    client_frame(1, "héllo".encode()),
    client_frame(2, bytes(range(256)) * 2),  # 512 bytes: the 16-bit length
    client_frame(1, "κό".encode(), fin=False),
    client_frame(9, b""),
    client_frame(0, "σμε".encode()),
    client_frame(2, b""),
    client_frame(8, struct.pack("!H", 1000) + b"bye"),
]
MIXED_EVENTS = [
    Ping(b"p"),
    Message("héllo"),
    Message(bytes(range(256)) * 2),
    FRAGMENT,
    Ping(b""),
    Message("κόσμε"),
    Message(b""),
    Close(1000, "bye"),
]


def test_a_stream_split_at_every_byte_boundary_gives_the_same_events() -> None:
    raw = b"".join(MIXED)
    assert FrameReader(LIMIT).feed(raw) == MIXED_EVENTS
    for cut in range(1, len(raw)):
        reader = FrameReader(LIMIT)
        assert reader.feed(raw[:cut]) + reader.feed(raw[cut:]) == MIXED_EVENTS, cut
    # and in three pieces: the middle one starts and ends anywhere
    for a in range(1, len(raw), 7):
        for b in range(a + 1, len(raw), 11):
            reader = FrameReader(LIMIT)
            assert reader.feed(raw[:a]) + reader.feed(raw[a:b]) + reader.feed(raw[b:]) == MIXED_EVENTS, (a, b)


def test_a_stream_fed_byte_by_byte_gives_the_same_events() -> None:
    raw = b"".join(MIXED)
    reader = FrameReader(LIMIT)
    events: list[frames.Event] = []
    for i in range(len(raw)):
        events += reader.feed(raw[i : i + 1])
    assert events == MIXED_EVENTS


def test_a_read_that_is_not_kept_is_not_copied_and_its_rest_is() -> None:
    # whole frames only: nothing is held afterwards; a read ending inside a frame keeps
    # exactly that frame's bytes, and the next read completes it
    reader = FrameReader(LIMIT)
    whole = client_frame(1, b"one") + client_frame(2, b"two")
    assert reader.feed(whole) == [Message("one"), Message(b"two")]
    assert reader._buf == b""
    third = client_frame(2, b"x" * 300)
    assert reader.feed(whole + third[:100]) == [Message("one"), Message(b"two")]
    assert reader._buf == third[:100]
    assert reader.feed(third[100:]) == [Message(b"x" * 300)] and reader._buf == b""


def test_the_reader_keeps_a_read_it_was_given_as_a_bytearray_safe() -> None:
    # a mutable read: what the reader keeps is its own copy, not a view of the caller's buffer
    frame = client_frame(2, b"abcdef")
    data = bytearray(frame[:5])
    reader = FrameReader(LIMIT)
    assert reader.feed(data) == []
    data[:] = b"\x00" * 5
    assert reader.feed(frame[5:]) == [Message(b"abcdef")]


@pytest.mark.parametrize("n", [0, 1, 125, 126, 300, 65_535, 65_536, 100_000])
def test_wanted_is_what_the_frame_at_the_head_still_lacks(n: int) -> None:
    raw = client_frame(2, b"w" * n)
    head = len(raw) - n
    for got in sorted({1, head - 1, head, head + 1, head + n // 2, len(raw) - 1} & set(range(1, len(raw)))):
        reader = FrameReader(200_000)
        assert reader.feed(raw[:got]) == []
        # 0 until the length field is in (the header without its 4-byte mask)
        assert reader.wanted == (len(raw) - got if got >= head - 4 else 0), got
        assert reader.feed(raw[got:]) == [Message(b"w" * n)] and reader.wanted == 0


def test_wanted_counts_only_the_frame_at_the_head_and_resets_on_errors() -> None:
    reader = FrameReader(LIMIT)
    big = client_frame(2, b"b" * 500)
    assert reader.feed(client_frame(1, b"first") + big[:200]) == [Message("first")]
    assert reader.wanted == len(big) - 200
    with pytest.raises(ProtocolError):
        reader.feed(big[200:] + client_frame(3, b""))  # a reserved opcode after it
    assert reader.wanted == 0
    # a frame refused from its header never asks for its payload
    reader = FrameReader(LIMIT)
    with pytest.raises(ProtocolError):
        reader.feed(client_frame(2, b"z" * (LIMIT + 1))[:8])
    assert reader.wanted == 0


def test_a_text_frame_checked_in_pieces_leaves_no_decoder_behind() -> None:
    # the prefix checked as it arrived ends inside a character (the decoder holds part of
    # it); once the frame is whole it is decoded whole, and the next text message starts
    # with a fresh check
    payload = "a€".encode()  # 61 e2 82 ac
    raw = client_frame(1, payload)
    for cut in range(7, len(raw)):  # 6 header bytes, then 1 to 3 payload bytes
        reader = FrameReader(LIMIT)
        assert reader.feed(raw[:cut]) == []
        assert reader.feed(raw[cut:]) == [Message("a€")]
        nxt = client_frame(1, b"he", fin=False) + client_frame(0, b"llo")
        assert reader.feed(nxt) == [FRAGMENT, Message("hello")], cut
        assert reader.feed(raw) == [Message("a€")]


def test_a_text_frame_checked_in_pieces_still_fails_on_a_cut_character_at_its_end() -> None:
    raw = client_frame(1, b"abc" + "€".encode()[:2])  # the last character is incomplete
    for cut in range(1, len(raw)):
        reader = FrameReader(LIMIT)
        with pytest.raises(ProtocolError) as info:
            reader.feed(raw[:cut])
            reader.feed(raw[cut:])
        assert (info.value.code, info.value.reason) == BAD_UTF8, cut
