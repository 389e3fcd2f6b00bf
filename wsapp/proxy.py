"""What to believe of X-Forwarded-For: only IP addresses that trusted proxies appended.

X-Forwarded-Proto is gunicorn's business (its `forwarded_allow_ips` sets the request
scheme); the Origin rule compares host:port only, so wsapp itself never needs it.
"""

from __future__ import annotations

import ipaddress

from .settings import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """`text` as an IP address, or None when it is anything else (a name, garbage).

    An IPv6 zone (`fe80::1%eth0`) is refused: Python accepts any text after the `%`."""
    text = text.strip()
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _in(ip: IPAddress | None, networks: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip in net for net in networks)


def client_address(peer_addr: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: walk X-Forwarded-For from the right while hops are trusted.

    A client can write anything into the header, so only the entries appended by our
    own proxies count; the first untrusted hop from the right is the client. A hop
    that is not an IP address is not believed either: the walk stops there and the
    last address believed (the proxy that passed it on) is the answer, so what a
    client wrote never reaches a log line or an allow-list check. An answer is always
    an IP address written the canonical way (or the peer address as the server gave it).
    """
    addr = peer_addr
    if not forwarded_for or not _in(parse_ip(addr), trusted):
        return addr
    for hop in reversed([h for h in forwarded_for.split(",") if h.strip()]):
        ip = parse_ip(hop)
        if ip is None:
            break
        addr = str(ip)
        if not _in(ip, trusted):
            break
    return addr


def address_allowed(addr: str, allowed: tuple[Network, ...]) -> bool:
    return _in(parse_ip(addr), allowed)
