"""What to believe of X-Forwarded-For: only what trusted proxies appended.

X-Forwarded-Proto is gunicorn's business (its `forwarded_allow_ips` sets the request
scheme); the Origin rule compares host:port only, so wsapp itself never needs it.
"""

from __future__ import annotations

import ipaddress

from .settings import Network


def _trusted(addr: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer_addr: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: walk X-Forwarded-For from the right while hops are trusted.

    A client can write anything into the header, so only the entries appended by our
    own proxies count; the first untrusted hop from the right is the client.
    """
    addr = peer_addr
    if not forwarded_for or not _trusted(addr, trusted):
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        addr = hop
        if not _trusted(hop, trusted):
            break
    return addr


def address_allowed(addr: str, allowed: tuple[Network, ...]) -> bool:
    return _trusted(addr, allowed)
