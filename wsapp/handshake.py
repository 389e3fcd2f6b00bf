"""What a WebSocket request must pass before its `101 Switching Protocols`.

The checks are pure functions of the request's values; `check_handshake` runs them in
order (cheapest and most protective first) and returns what the upgrade needs, or
raises `HandshakeRejected`, which the app turns into the JSON refusal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from . import auth, origin
from .errors import HandshakeRejected
from .settings import Settings

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True)
class Accepted:
    identity: auth.Identity
    key: str  # Sec-WebSocket-Key
    subprotocol: str | None  # selected back in Sec-WebSocket-Protocol
    extensions: str | None  # Sec-WebSocket-Extensions of the response
    token_source: str
    remote_addr: str = ""  # the client's address, X-Forwarded-For believed from trusted proxies


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def check_websocket_request(method: str, headers: Mapping[str, str]) -> str:
    """Refuse anything that is not a WebSocket opening handshake; return its key."""
    if method != "GET":
        raise HandshakeRejected("not_websocket", f"a WebSocket handshake is a GET, not {method}")
    upgrade = headers.get("Upgrade", "").strip().lower()
    connection = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    if upgrade != "websocket" or "upgrade" not in connection:
        raise HandshakeRejected(
            "not_websocket", "this route only speaks WebSocket: send Upgrade: websocket and Connection: Upgrade"
        )
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise HandshakeRejected(
            "not_websocket",
            "only WebSocket version 13 is supported",
            status=426,
            headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
        )
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HandshakeRejected("not_websocket", "Sec-WebSocket-Key must be 16 bytes in base64") from None
    return key


def negotiate_deflate(header: str | None) -> str | None:
    """The response's Sec-WebSocket-Extensions for the first acceptable offer, if any.

    We accept permessage-deflate with no context takeover in either direction (no zlib
    state is kept between messages: a few KiB per connection instead of ~300 KiB) and
    decline offers that restrict our window below the default.
    """
    for offer in (header or "").split(","):
        name, *params = [p.strip() for p in offer.split(";")]
        if name.lower() != "permessage-deflate":
            continue
        names = {p.split("=", 1)[0].strip().lower(): p for p in params if p}
        known = {
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        }
        if set(names) - known:
            continue
        if "server_max_window_bits" in names:
            value = names["server_max_window_bits"].partition("=")[2].strip().strip('"')
            if value != "15":
                continue
        return "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    return None


def check_handshake(
    *, method: str, headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str], settings: Settings
) -> Accepted:
    """Every check that needs only the request: shape, Origin, token.

    Capacity (per client, per worker, draining) is the registry's to decide, since it
    must be reserved atomically with the count; see `Registry.reserve`.
    """
    key = check_websocket_request(method, headers)
    origin.check_origin(headers.get("Origin"), headers.get("Host"), settings.allowed_origins)
    found = auth.find_token(headers, query, cookies)
    if found is None:
        raise HandshakeRejected("missing_token")
    identity = auth.verify_token(found.token, settings)
    extensions = negotiate_deflate(headers.get("Sec-WebSocket-Extensions")) if settings.compression else None
    return Accepted(identity, key, found.subprotocol, extensions, found.source)


def switching_protocols(accepted: Accepted) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(accepted.key)}",
    ]
    if accepted.subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {accepted.subprotocol}")
    if accepted.extensions:
        lines.append(f"Sec-WebSocket-Extensions: {accepted.extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
