"""The head of an HTTP/1.1 request, read from the bytes of one `recv`: a strict subset.

`wsapp.handshake.early` peeks at a new connection's first bytes and, when they are one whole
WebSocket upgrade request in the plainest form, serves it without gunicorn's HTTP
parser. This module decides what "the plainest form" is. It never refuses anything:
`parse` returns a `Head` only for a head that gunicorn would parse into exactly the
same environ, and `None` for everything else, which then goes to gunicorn untouched
(the bytes were only peeked at) and is accepted or refused there. So a rule
missing here can only cost speed; a rule too loose here could let through what gunicorn
would refuse or read differently, hence the rules below, each stricter than gunicorn's:

- the request line is exactly `GET <target> HTTP/1.1`; the target is origin-form
  (starts with `/`), visible ASCII only, no `#`, no `%` in the path (gunicorn
  percent-decodes the path; the query string is passed on raw by both);
- every line ends with CRLF (a bare CR or LF anywhere: `None`), no line folding (obs-fold),
  no whitespace between a field name and its colon;
- field names are RFC 9110 tokens without `_` (gunicorn drops those by default: they
  could pose as another header in the environ); values are visible ASCII, spaces and
  tabs (no obs-text, no control characters);
- no field appears twice (gunicorn joins repeats with commas: not worth matching);
- no body and no framing to misread: `Content-Length`, `Transfer-Encoding` and
  `Expect` send the request to gunicorn;
- gunicorn's own bounds (`limit_request_line`, `limit_request_fields`,
  `limit_request_field_size`, normalised as its parser does) apply, and the caller
  reads at most `MAX_HEAD` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 8192  # bytes peeked at; a longer head is gunicorn's to read

_REQUEST_LINE = re.compile(rb"GET (/[!\"$-~]*) HTTP/1\.1")  # visible ASCII but '#'
# what may be left of a field name / value once the allowed bytes are deleted: nothing.
# Names: RFC 9110 token characters minus '_'; values: visible ASCII, space and tab.
_TOKEN = b"!#$%&'*+-.^`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE = bytes(range(0x20, 0x7F)) + b"\t"
_NO_BODY = frozenset({"HTTP_TRANSFER_ENCODING", "CONTENT_LENGTH", "HTTP_EXPECT"})

# field name as sent -> environ key; bounded, since the names come from the network
_keys: dict[bytes, str] = {}
_KEYS_MAX = 256


@dataclass(frozen=True)
class Limits:
    """gunicorn's request bounds as its parser applies them (`from_gunicorn`): a request
    line longer than `request_line` (0: no bound), more than `fields` fields, or a field
    line longer than `field_size` counting its CRLF is refused there, so left to it."""

    request_line: int = 4094
    fields: int = 100
    field_size: int = 8190

    @classmethod
    def from_gunicorn(cls, request_line: int, fields: int, field_size: int) -> Limits:
        """gunicorn's settings normalised as `gunicorn.http.message` does (27.0)."""
        return cls(
            request_line=_MAX_REQUEST_LINE if request_line < 0 else min(request_line, _MAX_REQUEST_LINE),
            fields=fields if 0 < fields <= _MAX_HEADERS else _MAX_HEADERS,
            field_size=field_size if field_size > 0 else _MAX_FIELD_SIZE,
        )


_MAX_REQUEST_LINE, _MAX_HEADERS, _MAX_FIELD_SIZE = 8190, 32768, 8190  # gunicorn's caps


@dataclass(frozen=True)
class Head:
    path: str
    query: str
    headers: dict[str, str]  # WSGI environ keys (`HTTP_HOST`, `CONTENT_TYPE`) to values


def environ_key(name: str) -> str:
    """The WSGI environ key of field `name` (any case), as gunicorn writes it and Werkzeug
    reads it. Names asked for by wsapp's code are cached (a bounded few)."""
    key = _names.get(name)
    if key is None:
        key = _key_of(name)
        if len(_names) < _KEYS_MAX:
            _names[name] = key
    return key


_names: dict[str, str] = {}  # environ_key's cache


def _key_of(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def parse(head: bytes, limits: Limits) -> Head | None:
    """`head` is everything before the blank line (the final CRLF CRLF excluded), at
    most `MAX_HEAD` bytes: the caller's read is that long."""
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if limits.request_line and len(request_line) > limits.request_line:
        return None
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        return None
    target = match.group(1).decode("ascii")
    path, _, query = target.partition("?")
    if "%" in path:
        return None
    if len(lines) - 1 > limits.fields:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if len(line) + 2 > limits.field_size:  # gunicorn counts the CRLF
            return None
        name, colon, value = line.partition(b":")
        # a leading space or tab (obs-fold), or one before the colon, is not a token byte
        if not colon or not name or name.translate(None, _TOKEN) or value.translate(None, _VALUE):
            return None
        key = _keys.get(name)
        if key is None:
            key = _key_of(name.decode("ascii"))
            if len(_keys) < _KEYS_MAX:
                _keys[name] = key
        if key in headers or key in _NO_BODY:
            return None
        headers[key] = value.decode("ascii").strip(" \t")
    return Head(path, query, headers)
