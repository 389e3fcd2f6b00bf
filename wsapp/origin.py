"""The Origin and Host rules, gorilla/websocket's safe default unless origins are configured.

Unset `WSAPP_ALLOWED_ORIGINS`: no `Origin` header is allowed (not a browser), and an
Origin whose host:port equals the request's Host is allowed; anything else is refused.
Configured: exact origins (scheme, host and port) or `*`.

Both headers are parsed strictly, by hand, rather than with `urlsplit` (which raises on
`http://[::1`, takes `http://evil@host` for host `host` and reads ports leniently):
a value that is not `scheme://host[:port]` (Origin) or `host[:port]` (Host) is refused
403, whatever the configuration. Host names are compared in lower case, ports with the
scheme's default filled in, IPv6 literals in their canonical form. A path, query or
fragment after an Origin's authority is ignored (browsers never send one).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import HandshakeRejected

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_HOST_CHARS = 253

_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(?:[/?#].*)?", re.DOTALL)
# a DNS name or IPv4 address: dot-separated labels of letters, digits, `-` and `_`,
# with an optional trailing dot (a fully qualified name)
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
_PORT = re.compile(r"[0-9]{1,5}")
_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class HostPort:
    host: str  # lower case; an IPv6 literal canonical and in brackets
    port: int  # 0: none given and the scheme has no default

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host(text: str, default_port: int) -> HostPort:
    """`host[:port]` as a `HostPort`; `ValueError` for anything else.

    Refused: an empty host, userinfo (`user@host`), characters outside a DNS name,
    an unbracketed or invalid IPv6 literal, an IPv6 zone, a port that is empty, not
    all digits or outside 1-65535, and non-ASCII (browsers send IDNs as punycode)."""
    if text.startswith("["):
        literal, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("unterminated IPv6 literal")
        if "%" in literal:  # Python reads any text after the % as a zone
            raise ValueError("an IPv6 zone is not a host")
        try:
            host = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            raise ValueError("invalid IPv6 literal") from None
    else:
        host, colon, port_text = text.partition(":")
        host = host.lower()
        if not _NAME.fullmatch(host) or len(host) > MAX_HOST_CHARS:
            raise ValueError("not a host name")
        rest = colon + port_text
    if not rest:
        return HostPort(host, default_port)
    if rest[0] != ":" or not _PORT.fullmatch(rest[1:]):
        raise ValueError("the port is not a number")
    port = int(rest[1:])
    if not 1 <= port <= 65535:
        raise ValueError("the port is out of range")
    return HostPort(host, port)


def parse_origin(origin: str) -> tuple[str, HostPort]:
    """`scheme://host[:port]` (anything after the authority ignored) as (scheme, HostPort);
    `ValueError` if it is not one."""
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        raise ValueError("not scheme://host")
    scheme, authority = match.group(1).lower(), match.group(2)
    return scheme, parse_host(authority, DEFAULT_PORTS.get(scheme, 0))  # `user@` fails as a name


def normalise_origin(origin: str) -> str | None:
    """`scheme://host:port` in canonical form, or None when `origin` is malformed."""
    try:
        scheme, where = parse_origin(origin.strip())
    except ValueError:
        return None
    return f"{scheme}://{where}"


def is_loopback(where: HostPort) -> bool:
    """`localhost`, an address in 127.0.0.0/8 or `[::1]`: names that always mean this machine."""
    if where.host == "localhost":
        return True
    if where.host == "[::1]":  # parse_host made it canonical
        return True
    try:
        return ipaddress.IPv4Address(where.host) in _LOOPBACK_V4
    except ValueError:
        return False


def check_host(host: str | None) -> HostPort:
    """The request's Host header, parsed; `HandshakeRejected(403, host_not_allowed)` if it is
    missing or malformed (the port defaults to 0: the Host header names no scheme)."""
    if not host:
        raise HandshakeRejected("host_not_allowed", "the request has no Host header")
    try:
        return parse_host(host, default_port=0)
    except ValueError as exc:
        raise HandshakeRejected("host_not_allowed", f"the Host header {host!r} is malformed: {exc}") from None


def check_origin(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> None:
    """Raise `HandshakeRejected(403, origin_not_allowed)` unless the Origin may connect.

    `host` is the request's Host header (nginx must pass it through unchanged).
    No Origin header at all is a non-browser client, which the Origin rule cannot
    protect against anyway: it is allowed in every mode, as in gorilla. `null` (an
    opaque origin: sandboxed frame, file: page) passes only `*`.
    """
    if origin is None:
        return
    if origin == "null":
        if "*" in allowed:
            return
        raise HandshakeRejected("origin_not_allowed", "an opaque Origin ('null') is not allowed")
    try:
        scheme, where = parse_origin(origin)
    except ValueError as exc:
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} is malformed: {exc}") from None
    if "*" in allowed:
        return
    if allowed:
        if f"{scheme}://{where}" in _allowed_set(allowed):
            return
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} is not in WSAPP_ALLOWED_ORIGINS")
    if scheme not in ("http", "https"):
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} is not a web origin")
    if not host:
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} cannot match a missing Host")
    # The Host header carries no scheme: a port left out means the Origin scheme's default.
    try:
        request_host = parse_host(host, DEFAULT_PORTS[scheme])
    except ValueError:
        raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} cannot match Host {host!r}") from None
    if where == request_host:
        return
    raise HandshakeRejected("origin_not_allowed", f"Origin {origin!r} does not match Host {host!r}")


def _allowed_set(allowed: tuple[str, ...]) -> frozenset[str]:
    """The configured origins in canonical form (malformed entries match nothing); a few
    microseconds per handshake for a short list, and nothing cached to go stale."""
    return frozenset(n for n in (normalise_origin(a) for a in allowed) if n is not None)
