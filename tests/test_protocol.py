"""The chat envelope and the JSON rules shared with the HTTP API (pure), rule by rule."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from wsapp import frames, protocol
from wsapp.protocol import MAX_DEPTH, MAX_ROOM_CHARS, BadJson, Command, FrameError


def error_of(text: str) -> tuple[str, object]:
    with pytest.raises(FrameError) as info:
        protocol.parse_command(text)
    return info.value.code, info.value.msg_id


def nested(depth: int) -> str:
    """`depth` arrays inside each other."""
    return "[" * depth + "]" * depth


# ---- what parses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ('{"type":"broadcast","data":[1,2],"id":"a"}', Command("broadcast", "a", [1, 2])),
        ('{"type":"broadcast","data":null}', Command("broadcast")),
        ('{"type":"direct","to":"bob","data":null}', Command("direct", None, None, to="bob")),
        ('{"type":"join","room":"r","id":7}', Command("join", 7, room="r")),
        ('{"type":"join","room":"r","id":0}', Command("join", 0, room="r")),
        ('{"type":"join","room":"r","id":""}', Command("join", "", room="r")),
        ('{"type":"leave","room":"r"}', Command("leave", room="r")),
        ('{"type":"room","room":"r","data":{}}', Command("room", data={}, room="r")),
        ('{"type":"join","room":"' + "r" * MAX_ROOM_CHARS + '"}', Command("join", room="r" * MAX_ROOM_CHARS)),
        ('{"type":"broadcast","data":"\\ud83d\\ude00"}', Command("broadcast", data="\U0001f600")),  # a valid pair
        ('{"type":"broadcast","data":"\\\\ud800"}', Command("broadcast", data="\\ud800")),  # an escaped backslash
        ('{"type":"broadcast","data":1e308}', Command("broadcast", data=1e308)),
        ('{"type":"broadcast","data":-1e308}', Command("broadcast", data=-1e308)),
        (
            '{"type":"broadcast","data":' + nested(MAX_DEPTH - 1) + "}",
            Command("broadcast", data=json.loads(nested(MAX_DEPTH - 1))),
        ),
    ],
)
def test_valid_frames_parse(text: str, command: Command) -> None:
    assert protocol.parse_command(text) == command


def test_big_integers_and_unicode_pass_through_unchanged() -> None:
    data = {"n": 2**70, "s": "héllo ✓ \U0001f600", "f": 0.1, "neg": -(2**64)}
    cmd = protocol.parse_command(json.dumps({"type": "broadcast", "data": data}))
    out = json.loads(protocol.encode(protocol.broadcast("me", cmd.data)))
    assert out["data"] == data and out["from"] == "me" and out["type"] == "broadcast"


# ---- what is refused, and how -----------------------------------------------------------

SURROGATE = '"\\ud800"'  # JSON for a lone surrogate: valid JSON, not Unicode text


@pytest.mark.parametrize(
    ("text", "code", "msg_id"),
    [
        # not a JSON object
        ("not json", "bad_json", None),
        ("", "bad_json", None),
        ("[1,2]", "bad_json", None),
        ('"just a string"', "bad_json", None),
        ("42", "bad_json", None),
        ("null", "bad_json", None),
        ("true", "bad_json", None),
        # JSON the server could not encode again
        ('{"type":"broadcast","data":NaN}', "bad_json", None),
        ('{"type":"broadcast","data":Infinity}', "bad_json", None),
        ('{"type":"broadcast","data":-Infinity}', "bad_json", None),
        ('{"type":"broadcast","data":1e400}', "bad_json", None),
        ('{"type":"broadcast","data":-1e400}', "bad_json", None),
        ('{"type":"broadcast","data":' + "9" * 5000 + "}", "bad_json", None),
        ('{"type":"join","room":' + SURROGATE + "}", "bad_json", None),
        ('{"type":"join","room":"\\uDFFF"}', "bad_json", None),
        ('{"type":"direct","to":' + SURROGATE + ',"data":1}', "bad_json", None),
        ('{"type":"broadcast","data":{"deep":[1,{"x":' + SURROGATE + "}]}}", "bad_json", None),
        ('{"type":"broadcast","data":{' + SURROGATE + ":1}}", "bad_json", None),
        ('{"type":"broadcast","data":1,"id":' + SURROGATE + "}", "bad_json", None),
        ('{"type":' + SURROGATE + "}", "bad_json", None),
        ('{"type":"broadcast","data":' + nested(MAX_DEPTH) + "}", "bad_json", None),
        ("[" * 100_000, "bad_json", None),
        ('{"type":"broadcast","data":' + "[" * 100_000, "bad_json", None),
        ('{"type":"broadcast","data":' + '{"a":' * 100_000, "bad_json", None),
        # type
        ('{"type":"dance"}', "unknown_type", None),
        ('{"type":"dance","id":"d"}', "unknown_type", "d"),
        ('{"data":1,"id":"q"}', "unknown_type", "q"),
        ('{"type":["broadcast"],"data":1,"id":"l"}', "unknown_type", "l"),
        ('{"type":{"a":1},"data":1}', "unknown_type", None),
        ('{"type":5,"data":1}', "unknown_type", None),
        ('{"type":true,"data":1}', "unknown_type", None),
        ('{"type":null,"data":1}', "unknown_type", None),
        ('{"type":"Broadcast","data":1}', "unknown_type", None),
        # id
        ('{"type":"broadcast","data":1,"id":{"x":1}}', "missing_field", None),
        ('{"type":"broadcast","data":1,"id":[1]}', "missing_field", None),
        ('{"type":"broadcast","data":1,"id":true}', "missing_field", None),
        ('{"type":"broadcast","data":1,"id":1.5}', "missing_field", None),
        # required fields, per type
        ('{"type":"broadcast"}', "missing_field", None),
        ('{"type":"direct","data":1,"id":"i"}', "missing_field", "i"),
        ('{"type":"direct","to":"bob"}', "missing_field", None),
        ('{"type":"join"}', "missing_field", None),
        ('{"type":"leave","id":2}', "missing_field", 2),
        ('{"type":"room","room":"r"}', "missing_field", None),
        ('{"type":"room","data":1}', "missing_field", None),
        # to / room: non-empty strings, room at most MAX_ROOM_CHARS
        ('{"type":"direct","to":"","data":1}', "missing_field", None),
        ('{"type":"direct","to":5,"data":1}', "missing_field", None),
        ('{"type":"direct","to":null,"data":1,"id":"n"}', "missing_field", "n"),
        ('{"type":"join","room":5}', "missing_field", None),
        ('{"type":"join","room":""}', "missing_field", None),
        ('{"type":"leave","room":["r"]}', "missing_field", None),
        ('{"type":"room","room":{},"data":1}', "missing_field", None),
        ('{"type":"join","room":"' + "r" * (MAX_ROOM_CHARS + 1) + '","id":3}', "missing_field", 3),
        ('{"type":"room","room":"' + "r" * (MAX_ROOM_CHARS + 1) + '","data":1}', "missing_field", None),
    ],
)
def test_bad_frames_name_their_problem_and_keep_the_id(text: str, code: str, msg_id: object) -> None:
    assert error_of(text) == (code, msg_id)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{nope", "the frame is not a JSON object: not valid JSON"),
        ("[1]", "the frame is not a JSON object"),
        ('{"type":"broadcast","data":1e400}', "the frame is not a JSON object: the number 1e400 is out of range"),
        ("[1" + "0" * 400 + "e9]", "the frame is not a JSON object: the number 1" + "0" * 31 + " is out of range"),
        ('{"type":"broadcast","data":NaN}', "the frame is not a JSON object: NaN is not JSON"),
        (
            '{"type":"join","room":' + SURROGATE + "}",
            "the frame is not a JSON object: a string holds a lone surrogate (\\ud800-\\udfff), "
            "which is not Unicode text",
        ),
        ("[" * 100_000, f"the frame is not a JSON object: nested deeper than {MAX_DEPTH} levels"),
        (nested(MAX_DEPTH + 1), f"the frame is not a JSON object: nested deeper than {MAX_DEPTH} levels"),
        ('{"type":[1]}', "'type' must be a string"),
        ('{"type":"dance"}', "unknown frame type 'dance'"),
        ('{"type":"direct","data":1}', "a 'direct' frame needs 'to'"),
        ('{"type":"direct","to":"","data":1}', "'to' must be a non-empty string"),
        ('{"type":"join","room":""}', "'room' must be a non-empty string"),
        ('{"type":"join","room":"' + "r" * 129 + '"}', "'room' is longer than 128 characters"),
        ('{"type":"join","room":"r","id":false}', "'id' must be a string or an integer"),
    ],
)
def test_error_messages_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FrameError) as info:
        protocol.parse_command(text)
    assert info.value.message == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"\xff{}", "the body is not UTF-8"), (b"{", "not valid JSON"), (b'"\\udc00"', "a string holds a lone surrogate")],
)
def test_loads_says_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(BadJson) as info:
        protocol.loads(raw)
    assert str(info.value).startswith(message)


def test_frame_error_carries_its_code() -> None:
    assert str(FrameError("bad_json")) == "bad_json" and FrameError("bad_json").code == "bad_json"


def test_timestamps_have_microseconds_at_most() -> None:
    ts = protocol.now()
    assert round(ts, 6) == ts and abs(ts - time.time()) < 60


def test_an_unknown_type_is_quoted_briefly() -> None:
    with pytest.raises(FrameError) as info:
        protocol.parse_command(json.dumps({"type": "x" * 10_000}))
    assert len(info.value.message) < 200


# ---- loads: the rules on their own (the HTTP API uses them too) --------------------------


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH),
        '{"a":' * (MAX_DEPTH - 1) + "{}" + "}" * (MAX_DEPTH - 1),
        "[" + ",".join([nested(MAX_DEPTH - 1)] * 3) + "]",  # wide, not deep
        '{"a":' * MAX_DEPTH + '"\\u0041"' + "}" * MAX_DEPTH,  # a scalar at the bottom is no level
        '["\\ud83d\\ude00", "\\\\ud800", "\\\\udfff"]',
        '["\\ud7ff", "\\ue000"]',  # just outside the surrogate range
        "1e308",
        "0",
    ],
)
def test_loads_accepts(text: str) -> None:
    assert protocol.loads(text) == json.loads(text)
    assert protocol.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH + 1),
        '{"a":' * MAX_DEPTH + "{}" + "}" * MAX_DEPTH,
        '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
        "[" + ",".join(["1"] * 100) + "," + nested(MAX_DEPTH) + "]",  # many brackets, one too deep
        "[" * 2000 + "]" * 2000,
        '"\\ud800"',
        '"\\udbff"',
        '"\\udc00"',
        '"ok \\ud800 ok"',
        '["\\ude00\\ud83d"]',  # a pair in the wrong order is two lone surrogates
        '{"\\udfff":1}',
        '[[[[["\\ud800"]]]]]',
        '["\\ud800", "after"]',
        '[["\\ud800"], "after", {"k": "v"}]',
        '{"a": "\\ud800", "b": "after"}',
        "1e400",
        "-1e400",
        "1E999",
        "NaN",
        "-Infinity",
        "",
        "{",
        "[1,]",
    ],
)
def test_loads_refuses(text: str) -> None:
    with pytest.raises(BadJson):
        protocol.loads(text)
    with pytest.raises(BadJson):
        protocol.loads(text.encode())


def test_loads_counts_depth_exactly() -> None:
    assert protocol.loads('{"a":' * 62 + "[[]]" + "}" * 62) is not None  # 64 levels
    with pytest.raises(BadJson):
        protocol.loads('{"a":' * 63 + "[[]]" + "}" * 63)  # 65 levels


@pytest.mark.parametrize("raw", [b"\xff{}", b'"\xed\xa0\x80"', b'{"a":"\xc3"}'])
def test_loads_refuses_bytes_that_are_not_utf8(raw: bytes) -> None:
    """Encoded surrogates (ED A0 80) included: the json module would let them through."""
    with pytest.raises(BadJson, match="not UTF-8"):
        protocol.loads(raw)


def test_bad_json_is_a_value_error() -> None:
    assert issubclass(BadJson, ValueError)


ACCEPTED_DATA = [
    "\U0001f600",
    {"k": ["é", 2**80, -0.0, None, True]},
    json.loads(nested(MAX_DEPTH - 1)),
    "\\ud800",
    1e308,
]


@pytest.mark.parametrize("data", ACCEPTED_DATA)
def test_whatever_parses_can_be_sent_in_every_server_frame(data: Any) -> None:
    cmd = protocol.parse_command(json.dumps({"type": "room", "room": "r\u00e9", "data": data}))
    for obj in (
        protocol.broadcast("me", cmd.data),
        protocol.direct("me", "you", cmd.data),
        protocol.room_message(cmd.room, "me", cmd.data),
        protocol.presence(cmd.room, "leave", "me"),
        protocol.joined(cmd.room, ["me"]),
    ):
        frame = protocol.text_frame(obj)
        assert frame[0] == 0x80 | frames.OP_TEXT
        header = {126: 4, 127: 10}.get(frame[1], 2)
        assert json.loads(frame[header:]) == json.loads(protocol.encode(obj))


# ---- server frames ----------------------------------------------------------------------


def test_error_frame_carries_id_only_when_given() -> None:
    assert protocol.error("bad_json", "m") == {"type": "error", "code": "bad_json", "message": "m"}
    assert protocol.error("not_connected", "m", "x")["id"] == "x"
    assert protocol.error("not_connected", "m", 0)["id"] == 0


def test_joined_without_members_on_a_repeated_join() -> None:
    assert protocol.joined("r", ["a", "b"]) == {"type": "joined", "room": "r", "members": ["a", "b"]}
    assert protocol.joined("r", []) == {"type": "joined", "room": "r", "members": []}
    assert protocol.joined("r", None) == {"type": "joined", "room": "r"}
    # history on: the room stream's position, with or without the member list
    pos = {"offset": 7, "epoch": "e1"}
    assert protocol.joined("r", ["a"], pos) == {"type": "joined", "room": "r", "members": ["a"], **pos}
    assert protocol.joined("r", None, pos) == {"type": "joined", "room": "r", "offset": 7, "epoch": "e1"}


def test_frames_with_history_positions_and_stored_acks() -> None:
    streams = {"broadcast": {"offset": 3, "epoch": "e"}}
    assert protocol.welcome("a", "c", streams) == {
        "type": "welcome",
        "client_id": "a",
        "conn_id": "c",
        "streams": streams,
    }
    assert protocol.ack("i", 0, stored=True) == {"type": "ack", "id": "i", "delivered": 0, "stored": True}
    assert protocol.ack(5, 2, stored=False) == {"type": "ack", "id": 5, "delivered": 2}


def test_timestamps_go_out_with_six_decimals_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol.time, "time", lambda: 1764525123.1234567)
    assert protocol.encode(protocol.broadcast("a", 1)).endswith('"ts":1764525123.123457}')


def test_server_frames() -> None:
    assert protocol.welcome("a", "c") == {"type": "welcome", "client_id": "a", "conn_id": "c"}
    assert protocol.ack("i", 3) == {"type": "ack", "id": "i", "delivered": 3}
    assert protocol.presence("r", "join", "a") == {"type": "presence", "room": "r", "event": "join", "client_id": "a"}
    msg = protocol.direct("a", "b", [1])
    assert msg == {"type": "direct", "from": "a", "to": "b", "data": [1], "ts": msg["ts"]}
    msg = protocol.room_message("r", "a", 1)
    assert msg == {"type": "room", "room": "r", "from": "a", "data": 1, "ts": msg["ts"]}
    msg = protocol.broadcast("a", None)
    assert msg == {"type": "broadcast", "from": "a", "data": None, "ts": msg["ts"]} and isinstance(msg["ts"], float)


def test_encode_is_compact_and_keeps_unicode() -> None:
    assert protocol.encode({"a": [1, "é"]}) == '{"a":[1,"é"]}'


def test_frame_error_defaults_to_the_catalogue_message() -> None:
    err = FrameError("not_in_room")
    assert err.message == "join the room before sending to it" and err.msg_id is None
    assert FrameError("too_many_rooms").message.startswith("this connection is in the most rooms")


def test_an_app_code_outside_the_catalogue_is_its_own_message() -> None:
    # a handler's `raise FrameError("out_of_stock")`: the client's error frame still says something
    err = FrameError("out_of_stock", msg_id=7)
    assert protocol.error(err.code, err.message, err.msg_id) == {
        "type": "error",
        "code": "out_of_stock",
        "message": "out_of_stock",
        "id": 7,
    }


# ---- frame_id: for frames that are not processed (rate limited) --------------------------


@pytest.mark.parametrize(
    ("text", "msg_id"),
    [
        ('{"type":"x","id":"a"}', "a"),
        ('{"id":7}', 7),
        ('{"id":0}', 0),
        ('{"id":true}', None),
        ('{"id":1.5}', None),
        ('{"id":[1]}', None),
        ('{"id":null}', None),
        ("{}", None),
        ("not json", None),
        ("[1]", None),
        ('{"id":' + SURROGATE + "}", None),
        ('{"id":"a","data":1e400}', None),
        ("[" * 100_000, None),
        ('{"id":"deep","d":' + nested(MAX_DEPTH) + "}", None),
    ],
)
def test_frame_id_never_raises(text: str, msg_id: object) -> None:
    assert protocol.frame_id(text) == msg_id
