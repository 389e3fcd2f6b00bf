"""What a Redis URL names, read without redis-py (the settings use it in gunicorn's
master, which imports nothing heavy)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS to the primary


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def sentinel_target(url: str) -> SentinelTarget:
    """Parse `redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`;
    raise ValueError saying what is wrong. The credentials are the primary's (sentinels
    are asked without them)."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError("must start with redis+sentinel:// or rediss+sentinel://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":")
        if not colon or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{host!r} is not host:port (a sentinel, port 26379 by default)")
        sentinels.append((name.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /<service name>[/<db>], e.g. /mymaster/0")
    return SentinelTarget(
        tuple(sentinels),
        path[0],
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
        SENTINEL_SCHEMES[parts.scheme],
    )
