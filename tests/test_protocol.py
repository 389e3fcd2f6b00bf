"""The chat envelope (pure)."""

from __future__ import annotations

import json

import pytest

from wsapp import protocol
from wsapp.protocol import Command, FrameError


def error_of(text: str) -> tuple[str, object]:
    with pytest.raises(FrameError) as info:
        protocol.parse_command(text)
    return info.value.code, info.value.msg_id


def test_each_type_parses() -> None:
    assert protocol.parse_command('{"type":"broadcast","data":[1,2],"id":"a"}') == Command("broadcast", "a", [1, 2])
    assert protocol.parse_command('{"type":"direct","to":"bob","data":null}') == Command("direct", None, None, to="bob")
    assert protocol.parse_command('{"type":"join","room":"r","id":7}') == Command("join", 7, room="r")
    assert protocol.parse_command('{"type":"leave","room":"r"}') == Command("leave", room="r")
    assert protocol.parse_command('{"type":"room","room":"r","data":{}}') == Command("room", data={}, room="r")


def test_bad_frames_name_their_problem_and_keep_the_id() -> None:
    assert error_of("not json") == ("bad_json", None)
    assert error_of("[1,2]") == ("bad_json", None)
    assert error_of('{"type":"x","data":1}') == ("unknown_type", None)
    assert error_of('{"data":1,"id":"q"}') == ("unknown_type", "q")
    assert error_of('{"type":"direct","data":1,"id":"i"}') == ("missing_field", "i")
    assert error_of('{"type":"direct","to":"","data":1}') == ("missing_field", None)
    assert error_of('{"type":"join","room":5}') == ("missing_field", None)
    assert error_of('{"type":"broadcast"}') == ("missing_field", None)
    assert error_of('{"type":"broadcast","data":1,"id":{"x":1}}')[0] == "missing_field"
    assert error_of('{"type":"broadcast","data":NaN}') == ("bad_json", None)
    assert error_of('{"type":"join","room":"' + "r" * 129 + '"}')[0] == "missing_field"


def test_big_integers_and_unicode_pass_through_unchanged() -> None:
    data = {"n": 2**70, "s": "héllo ✓", "f": 0.1}
    cmd = protocol.parse_command(json.dumps({"type": "broadcast", "data": data}))
    out = json.loads(protocol.encode(protocol.broadcast("me", cmd.data)))
    assert out["data"] == data and out["from"] == "me" and out["type"] == "broadcast"


def test_error_frame_carries_id_only_when_given() -> None:
    assert "id" not in protocol.error("bad_json", "m")
    assert protocol.error("not_connected", "m", "x")["id"] == "x"


def test_frame_id_never_raises() -> None:
    assert protocol.frame_id('{"type":"x","id":"a"}') == "a"
    assert protocol.frame_id('{"id":7}') == 7
    assert protocol.frame_id('{"id":true}') is None
    assert protocol.frame_id("not json") is None
    assert protocol.frame_id("[1]") is None
