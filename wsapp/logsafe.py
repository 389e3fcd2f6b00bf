"""Log lines a client cannot forge or read tokens from: escaping and redaction in one place.

Client-chosen values (a token's `sub`, a room name, an Origin, a path, a forwarded
address, a user agent) reach log lines through `%s`. Written raw, a CR/LF forges a whole
line, ANSI escapes repaint an operator's terminal and bidi controls reorder what is
shown. `SafeLogFilter`, installed on a *handler*, rewrites every record it sees, whoever
logged it (wsapp's loggers and gunicorn's error and access logs alike):

- every character that is not printable (`str.isprintable`: control characters C0/C1
  and DEL, hence ESC and ANSI sequences; bidi and other format controls; line and
  paragraph separators; lone surrogates) becomes a `\\xNN`/`\\uNNNN` escape, so one
  record is always one line;
- token values are replaced by `[redacted]`: anything shaped like a JWT, the value of a
  `token=`/`access_token=` parameter or cookie, and what follows `Bearer`/`Basic`.

A traceback keeps its line breaks, but every line of it is indented, so none of them
can pass for a record of its own.

Ownership: the filter keeps no state; it changes the record in place (the message is
formatted once, here, and its arguments dropped), so every handler after it sees the
safe text.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

# A JWS compact serialisation: base64url header (always starts with `eyJ`, the encoding
# of `{"`), payload and signature; the signature may be empty (`alg: none`) or cut off.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?")
# `token=...`, `access_token=...` (any `*token=`) in a query string or cookie.
_PARAM = re.compile(r"(?i)\b([a-z_]*token=)[^\s&;,'\"]*")
# the credentials after `Bearer`/`Basic` (an Authorization header, however quoted);
# 12 characters at least, so that prose such as "a bearer subprotocol" stays readable
_AUTH = re.compile(r"(?i)\b(bearer|basic)(?:\s+|%20)[A-Za-z0-9._~+/=-]{12,}")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with every non-printable character written as an escape (one line, no ANSI)."""
    if text.isprintable():  # the common case costs one C-level scan
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def redact(text: str) -> str:
    """`text` with token values replaced by `[redacted]`."""
    text = _JWT.sub(REDACTED, text)
    text = _PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    return _AUTH.sub(lambda m: m.group(1) + " " + REDACTED, text)


def safe(value: Any) -> str:
    """What a log line may show of `value`: redacted, then escaped."""
    return escape(redact(str(value)))


def _safe_traceback(text: str) -> str:
    lines = text.split("\n")
    return "\n".join("    " + escape(redact(line)) for line in lines)


class SafeLogFilter(logging.Filter):
    """Rewrite a record so it shows no token and no non-printable character (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_wsapp_safe", False):  # several handlers may share a record
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: show it rather than lose the record  # noqa: BLE001
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = safe(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _safe_traceback(record.exc_text)
        if record.stack_info:
            record.stack_info = _safe_traceback(record.stack_info)
        record._wsapp_safe = True
        return True


def install(logger: logging.Logger) -> None:
    """Put a `SafeLogFilter` on each of `logger`'s handlers (once)."""
    for handler in logger.handlers:
        if not any(isinstance(f, SafeLogFilter) for f in handler.filters):
            handler.addFilter(SafeLogFilter())
