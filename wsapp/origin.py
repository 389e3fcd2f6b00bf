"""The Origin rule, gorilla/websocket's safe default unless origins are configured.

Unset `WSAPP_ALLOWED_ORIGINS`: no `Origin` header is allowed (not a browser), and an
Origin whose host:port equals the request's Host is allowed; anything else is refused.
Configured: exact origins (scheme, host and port) or `*`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import HandshakeRejected

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, scheme: str) -> str:
    """`host:port` in lower case, with the scheme's default port filled in."""
    parts = urlsplit(f"//{netloc}")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        return ""
    if port is None:
        port = DEFAULT_PORTS.get(scheme, 0)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


def normalise_origin(origin: str) -> str:
    parts = urlsplit(origin.strip())
    scheme = parts.scheme.lower()
    return f"{scheme}://{_host_port(parts.netloc, scheme)}"


def check_origin(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> None:
    """Raise `HandshakeRejected(403, origin_not_allowed)` unless the Origin may connect.

    `host` is the request's Host header (nginx must pass it through unchanged).
    No Origin header at all is a non-browser client, which the Origin rule cannot
    protect against anyway: it is allowed in every mode, as in gorilla.
    """
    if origin is None or "*" in allowed:
        return
    if not origin or origin == "null":
        raise HandshakeRejected("origin_not_allowed", "an opaque Origin ('null') is not allowed")
    if allowed:
        if normalise_origin(origin) in {normalise_origin(a) for a in allowed}:
            return
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} is not in WSAPP_ALLOWED_ORIGINS")
    parts = urlsplit(origin)
    origin_scheme = parts.scheme.lower()
    if origin_scheme not in ("http", "https") or not parts.netloc:
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} is not a web origin")
    # The Host header carries no scheme: a port left out means the Origin scheme's default.
    if host and _host_port(parts.netloc, origin_scheme) == _host_port(host, origin_scheme):
        return
    raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} does not match Host {host!r}")
