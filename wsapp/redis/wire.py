"""The format of a message on a channel, shared by the nodes and `wsapp.emitter`, no I/O.

A message is one line of JSON (wire version, origin node, target) and then the encoded
WebSocket frame (`w1`, `encode_envelope`), or, for a kept message, its stream and offset
in the header and the JSON text after it (`w2`: the publish script completes the header
`kept_head` starts; each node encodes the frame once). `decode_envelope` reads either
header; `decode_kept` tells them apart and reads a `w2` one.
"""

from __future__ import annotations

import json

from ..registry import Target

WIRE_VERSION = "w1"
KEPT_VERSION = "w2"  # a message with a position in its stream's history (see `publish_kept.lua`)
KINDS = ("all", "client", "room", "close", "control")  # "control": a server join/leave (`RedisBackplane.control`)


def encode_envelope(origin: str, target: Target, frame: bytes) -> bytes:
    """What goes on a channel: a JSON header line (no raw newline in it), then the frame bytes."""
    header = json.dumps([WIRE_VERSION, origin, target.kind, target.key, target.exclude_client])
    return header.encode("ascii") + b"\n" + frame


def decode_envelope(payload: bytes) -> tuple[str, Target, bytes]:
    """A `w1` envelope (frame bytes), or a `w2` one (a kept message: see `decode_kept`)."""
    head, sep, frame = payload.partition(b"\n")
    version, origin, kind, key, exclude, *_rest = json.loads(head)
    if not sep or version not in (WIRE_VERSION, KEPT_VERSION) or kind not in KINDS:
        raise ValueError(f"not a {WIRE_VERSION} envelope")
    return str(origin), Target(kind, key, exclude), frame


def kept_head(origin: str, target: Target, stream: str) -> str:
    """The start of a `w2` header; the publish script appends the offset, `]` and a newline,
    then the message's JSON text (not a WebSocket frame: each node encodes it once)."""
    return json.dumps([KEPT_VERSION, origin, target.kind, target.key, target.exclude_client, stream])[:-1] + ","


def decode_kept(payload: bytes) -> tuple[Target, str, int, bytes] | None:
    """(target, stream, offset, JSON text) of a `w2` envelope; None for a `w1` one."""
    head, sep, body = payload.partition(b"\n")
    fields = json.loads(head)
    if not isinstance(fields, list) or len(fields) != 7 or fields[0] != KEPT_VERSION:
        return None  # a w1 envelope (or garbage, which `decode_envelope` refuses)
    _version, _origin, kind, key, exclude, stream, offset = fields
    if not sep or kind not in ("all", "client", "room"):
        raise ValueError(f"not a {KEPT_VERSION} envelope")
    return Target(kind, key, exclude), str(stream), int(offset), body
