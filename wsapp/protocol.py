"""The /ws/chat envelope: parse what clients send, encode what the server sends. No I/O.

JSON goes through the standard library: orjson is faster but turns integers wider
than 64 bits into floats, which would change a client's `data` on its way through.

What `loads` accepts the server can always encode again, so a bad value is refused
where it comes in (an `error` frame, a 400) and never fails later, in a broadcast or
in cleanup: no lone surrogates (valid JSON, `"\\ud800"`, but not Unicode text: UTF-8
cannot carry them), no number that overflows to infinity (`1e400`), no NaN/Infinity,
and no nesting deeper than `MAX_DEPTH` (the C decoder and encoder recurse, so a deep
value could pass one and fail the other).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import frames
from .errors import FRAME_ERRORS

MAX_ROOM_CHARS = 128
MAX_DEPTH = 64  # arrays/objects inside each other, the frame's own object included
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_SURROGATE = re.compile("[\ud800-\udfff]")
# only a \u escape can put a surrogate into a str decoded from valid UTF-8
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadJson(ValueError):
    """Text that is not JSON the server can carry; the message says why."""


def _refuse_constant(name: str) -> Any:
    raise BadJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"the number {text[:32]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)


def loads(text: str | bytes) -> Any:
    """Decode one JSON document under the rules above; raise `BadJson` saying what is wrong."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")  # strict: encoded surrogates are refused too
        except UnicodeDecodeError:
            raise BadJson("the body is not UTF-8") from None
    try:
        value = _decoder.decode(text)
    except BadJson:
        raise
    except RecursionError:
        raise BadJson(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise BadJson("not valid JSON") from None
    # the walk costs a pass over the value, so only when a problem is possible at all
    if text.count("[") + text.count("{") > MAX_DEPTH or _SURROGATE_ESCAPE.search(text):
        _check(value)
    return value


def _check(value: Any) -> None:
    """Refuse lone surrogates (in keys too) and nesting deeper than MAX_DEPTH; iterative."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadJson("a string holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
            continue
        if isinstance(item, dict):
            children: list[Any] = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadJson(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


class FrameError(Exception):
    """A chat frame we answer with an `error` frame; the connection stays open.

    Public (`wsapp.FrameError`): a frame handler (`@ws.on`) raises it to refuse a frame;
    the error frame carries the frame's `id` when the handler gave none. An app may use
    codes of its own; their default message is the code."""

    def __init__(self, code: str, message: str | None = None, msg_id: Any = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or FRAME_ERRORS.get(code, code)
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


def parse_frame(text: str) -> tuple[dict[str, Any], str | int | None, str]:
    """The envelope every chat frame shares: a JSON object, an optional `id` (string or
    integer), a string `type`. Returns (frame, id, type); raises `FrameError`."""
    try:
        obj = loads(text)
    except BadJson as err:
        raise FrameError("bad_json", f"the frame is not a JSON object: {err}") from None
    if not isinstance(obj, dict):
        raise FrameError("bad_json")
    msg_id = obj.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int))):
        raise FrameError("missing_field", "'id' must be a string or an integer")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError("unknown_type", "'type' must be a string", msg_id)
    return obj, msg_id, kind


def unknown_type(kind: str, msg_id: str | int | None) -> FrameError:
    return FrameError("unknown_type", f"unknown frame type {kind[:MAX_ROOM_CHARS]!r}", msg_id)


def command(obj: dict[str, Any], msg_id: str | int | None, kind: str) -> Command:
    """Check a built-in frame's fields (`_FIELDS`); raise `FrameError` naming the first wrong one."""
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


def parse_command(text: str) -> Command:
    """Validate one built-in client frame; raise `FrameError` saying what is wrong with it."""
    obj, msg_id, kind = parse_frame(text)
    if kind not in _FIELDS:
        raise unknown_type(kind, msg_id)
    return command(obj, msg_id, kind)


def frame_id(text: str) -> str | int | None:
    """The `id` of a client frame, or None; never raises (for frames we do not process)."""
    try:
        obj = loads(text)
    except BadJson:
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


def joined(
    room: str,
    members: list[str] | None,
    position: dict[str, Any] | None = None,
    info: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`members` None: the connection was in the room already and has the list (no resend).
    `position` (history on): the room stream's `offset` and `epoch`. `info`
    (`WSAPP_PRESENCE_CLAIMS`): client id -> its presence claims, beside `members`."""
    out: dict[str, Any] = {"type": "joined", "room": room}
    if members is not None:
        out["members"] = members
        if info is not None:
            out["info"] = info
    if position is not None:
        out.update(position)
    return out


def presence(room: str, event: str, client_id: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """`info`: the joining member's presence claims (`WSAPP_PRESENCE_CLAIMS`; join events only)."""
    out: dict[str, Any] = {"type": "presence", "room": room, "event": event, "client_id": client_id}
    if info is not None:
        out["info"] = info
    return out


def presence_info(claims: Any, names: tuple[str, ...], max_bytes: int) -> dict[str, Any] | None:
    """A member's presence entry: the claims `names` that the token has (`WSAPP_PRESENCE_CLAIMS`).
    None when no claim is configured; `{}` when the entry's JSON would be longer than
    `max_bytes` (`WSAPP_PRESENCE_INFO_BYTES`: the claims are left out, never cut) or a claim
    holds a value the server could not carry."""
    if not names:
        return None
    if not isinstance(claims, Mapping):
        return {}
    info = {name: claims[name] for name in names if name in claims}
    try:
        text = encode(info)
    except (TypeError, ValueError):
        return {}
    if len(text.encode("utf-8", "surrogatepass")) > max_bytes or _SURROGATE.search(text):
        return {}
    return info


class Stored(int):
    """What a frame handler returns for a direct message kept for a client that is away:
    counts 0 delivered, and the ack says `"stored": true`."""


def ack(msg_id: str | int, delivered: int, stored: bool = False) -> dict[str, Any]:
    if stored:
        return {"type": "ack", "id": msg_id, "delivered": delivered, "stored": True}
    return {"type": "ack", "id": msg_id, "delivered": delivered}


def error(code: str, message: str, msg_id: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if msg_id is not None:
        out["id"] = msg_id
    return out


def welcome(client_id: str, conn_id: str, streams: dict[str, Any] | None = None) -> dict[str, Any]:
    """`streams` (history on): the positions of the connection's broadcast and direct streams."""
    if streams is None:
        return {"type": "welcome", "client_id": client_id, "conn_id": conn_id}
    return {"type": "welcome", "client_id": client_id, "conn_id": conn_id, "streams": streams}
