"""The /ws/chat envelope: parse what clients send, encode what the server sends. No I/O.

JSON goes through the standard library: orjson is faster but turns integers wider
than 64 bits into floats, which would change a client's `data` on its way through.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from . import frames
from .errors import FRAME_ERRORS

MAX_ROOM_CHARS = 128
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)  # NaN/Infinity are not JSON


class FrameError(Exception):
    """A chat frame we answer with an `error` frame; the connection stays open."""

    def __init__(self, code: str, message: str | None = None, msg_id: Any = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or FRAME_ERRORS[code]
        self.msg_id = msg_id


@dataclass(frozen=True)
class Command:
    type: str  # broadcast | direct | join | leave | room
    id: str | int | None = None
    data: Any = None
    to: str = ""
    room: str = ""


_FIELDS = {
    "broadcast": ("data",),
    "direct": ("to", "data"),
    "join": ("room",),
    "leave": ("room",),
    "room": ("room", "data"),
}


def parse_command(text: str) -> Command:
    """Validate one client frame; raise `FrameError` saying what is wrong with it."""
    try:
        obj = _decoder.decode(text)
    except ValueError:
        raise FrameError("bad_json") from None
    if not isinstance(obj, dict):
        raise FrameError("bad_json")
    msg_id = obj.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int))):
        raise FrameError("missing_field", "'id' must be a string or an integer")
    kind = obj.get("type")
    if kind not in _FIELDS:
        raise FrameError("unknown_type", f"unknown frame type {kind!r}", msg_id)
    for name in _FIELDS[kind]:
        if name not in obj:
            raise FrameError("missing_field", f"a {kind!r} frame needs {name!r}", msg_id)
    for name in ("to", "room"):
        if name in _FIELDS[kind]:
            value = obj[name]
            if not isinstance(value, str) or not value:
                raise FrameError("missing_field", f"{name!r} must be a non-empty string", msg_id)
            if name == "room" and len(value) > MAX_ROOM_CHARS:
                raise FrameError("missing_field", f"'room' is longer than {MAX_ROOM_CHARS} characters", msg_id)
    return Command(kind, msg_id, obj.get("data"), obj.get("to", ""), obj.get("room", ""))


def frame_id(text: str) -> str | int | None:
    """The `id` of a client frame, or None; never raises (for frames we do not process)."""
    try:
        obj = _decoder.decode(text)
    except ValueError:
        return None
    msg_id = obj.get("id") if isinstance(obj, dict) else None
    return msg_id if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool) else None


def encode(obj: dict[str, Any]) -> str:
    return _encoder.encode(obj)


def text_frame(obj: dict[str, Any]) -> bytes:
    """Encode once to a complete WebSocket frame, ready to write to any number of peers."""
    return frames.encode_frame(frames.OP_TEXT, encode(obj).encode("utf-8"))


def now() -> float:
    return round(time.time(), 6)


def broadcast(sender: str, data: Any) -> dict[str, Any]:
    return {"type": "broadcast", "from": sender, "data": data, "ts": now()}


def direct(sender: str, to: str, data: Any) -> dict[str, Any]:
    return {"type": "direct", "from": sender, "to": to, "data": data, "ts": now()}


def room_message(room: str, sender: str, data: Any) -> dict[str, Any]:
    return {"type": "room", "room": room, "from": sender, "data": data, "ts": now()}


def joined(room: str, members: list[str]) -> dict[str, Any]:
    return {"type": "joined", "room": room, "members": members}


def presence(room: str, event: str, client_id: str) -> dict[str, Any]:
    return {"type": "presence", "room": room, "event": event, "client_id": client_id}


def ack(msg_id: str | int, delivered: int) -> dict[str, Any]:
    return {"type": "ack", "id": msg_id, "delivered": delivered}


def error(code: str, message: str, msg_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if msg_id is not None:
        out["id"] = msg_id
    return out


def welcome(client_id: str, conn_id: str) -> dict[str, Any]:
    return {"type": "welcome", "client_id": client_id, "conn_id": conn_id}
