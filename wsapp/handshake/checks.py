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

from .. import auth, origin
from ..errors import HandshakeRejected
from ..settings import Settings

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
    state is kept between messages: a few KiB per connection instead of ~300 KiB). An
    offer's `server_max_window_bits=N` (8-15) is accepted and answered with the same N
    (RFC 7692 §7.1.2.1): the server sends uncompressed frames, so any window it asks
    for is honoured; we inflate with the full 15-bit window, which reads any smaller
    one. Offers with unknown, repeated or malformed parameters are declined.
    """
    for offer in (header or "").split(","):
        name, *params = [p.strip() for p in offer.split(";")]
        if name.lower() != "permessage-deflate":
            continue
        values: dict[str, str | None] = {}
        for param in params:
            key, eq, value = (part.strip() for part in param.partition("="))
            values[key.lower()] = value.strip('"') if eq else None
        known = {
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        }
        if set(values) - known or len(values) != len(params):
            continue
        if any(values.get(flag) is not None for flag in known if flag.endswith("takeover")):
            continue
        server_bits = values.get("server_max_window_bits", "")
        if "server_max_window_bits" in values and not _window_bits(server_bits):
            continue
        if values.get("client_max_window_bits") is not None and not _window_bits(values["client_max_window_bits"]):
            continue
        response = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        if "server_max_window_bits" in values:
            response += f"; server_max_window_bits={server_bits}"
        return response
    return None


def _window_bits(value: str | None) -> bool:
    """A window size parameter: 8 to 15, decimal, no leading zero (RFC 7692 §7.1.2)."""
    return value is not None and value in {str(bits) for bits in range(8, 16)}


def check_handshake(
    *, method: str, headers: Mapping[str, str], query: Mapping[str, str], cookies: Mapping[str, str], settings: Settings
) -> Accepted:
    """Every check that needs only the request: shape, Host, Origin, token.

    Capacity (per client, per worker, draining) is the registry's to decide, since it
    must be reserved atomically with the count; see `Registry.reserve`.
    """
    key = check_websocket_request(method, headers)
    origin.check_host(headers.get("Host"))
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
