"""The connection factory: one Redis, a Redis Cluster or the primary Redis Sentinel names,
from a URL (`connect`), with short timeouts, no retries and bounded blocking pools, and
the errors a caller catches (`REDIS_ERRORS`). Shared by the nodes, the subscriber and
`wsapp.emitter`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from .url import SENTINEL_SCHEMES, SentinelTarget, sentinel_target

# a cluster client also raises RedisClusterException (no node reachable, a slot not
# covered while the cluster comes back), which is not a RedisError
REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)
COMMAND_TIMEOUT_S = 1.0  # a hung Redis stalls one caller this long, then the node serves local-only
POOL_SIZE = 64  # connections per worker (per cluster node); callers wait for one beyond it
# How long a caller waits for a free pooled connection: longer than a command's timeout, so a
# reconnect storm that keeps all 64 busy queues instead of looking like Redis being down
# (a Redis that hangs still fails each command after COMMAND_TIMEOUT_S, freeing them).
POOL_WAIT_S = 10.0
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def connect(url: str, timeout_s: float = COMMAND_TIMEOUT_S, name: str = "wsapp") -> Any:
    """A client that fails fast: short timeouts and no retries (the callers decide).

    `redis+cluster://host:port` (or `rediss+cluster://`) is a Redis Cluster reached
    through any of its nodes; `redis+sentinel://host:port,host:port/service[/db]` (or
    `rediss+sentinel://`) the primary that Redis Sentinel names for `service`, asked
    again on every new connection (so a failover is followed by reconnecting); anything
    else is one Redis."""
    parts = urlsplit(url)
    common = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 0),
        "client_name": name,
    }  # fmt: skip
    if parts.scheme in CLUSTER_SCHEMES:
        plain = urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme]))
        return RedisCluster.from_url(
            plain, max_connections=POOL_SIZE, connection_pool_class=redis.BlockingConnectionPool,
            timeout=max(timeout_s, POOL_WAIT_S), **common,
        )  # fmt: skip
    if parts.scheme in SENTINEL_SCHEMES:
        return _sentinel_primary(sentinel_target(url), timeout_s, common)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=max(timeout_s, POOL_WAIT_S), protocol=2, **common
    )
    return redis.Redis(connection_pool=pool)


class _SentinelBlockingPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (the primary asked for on every new connection) that, like the
    other pools here, makes a caller wait for a free connection instead of failing."""


def _sentinel_primary(target: SentinelTarget, timeout_s: float, common: dict[str, Any]) -> Any:
    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=timeouts,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        protocol=2,
        **common,
    )
    return sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service,
        connection_pool_class=_SentinelBlockingPool,
        max_connections=POOL_SIZE,
        timeout=max(timeout_s, POOL_WAIT_S),
    )


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)
