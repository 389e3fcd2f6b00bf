"""One greenlet per app (per worker) that keeps every connection honest, on a short tick.

For each connection: send a ping every `WSAPP_PING_INTERVAL` (each on its own phase,
from when it connected, so pings do not all fire at once); close one whose pong is
`WSAPP_PING_TIMEOUT` late; close 4401 one whose token's `exp` has passed. Then flush
the traffic counters and sample the send queues for /metrics. Every action only
queues frames, so one unresponsive socket never slows the loop over the others.
"""

from __future__ import annotations

import logging
import time

import gevent

from .errors import CloseCode
from .metrics import Metrics, Traffic
from .registry import Registry
from .settings import Settings

log = logging.getLogger("wsapp.heartbeat")


def tick_s(settings: Settings) -> float:
    """Often enough to honour the shortest interval within a fraction of it."""
    return min(1.0, max(0.02, min(settings.ping_interval_s, settings.ping_timeout_s) / 4))


def sweep(registry: Registry, settings: Settings, metrics: Metrics, now: float, wall: float) -> None:
    depth = deepest = 0
    for peer in registry.peers():
        ws = peer.ws
        if not ws.open:
            continue
        if wall >= peer.expires_at:
            ws.close(CloseCode.TOKEN_EXPIRED, "token expired")
            continue
        if ws.ping_sent_at is not None and now - ws.ping_sent_at >= settings.ping_timeout_s:
            # it does not answer pings, so it will not answer a close either: no waiting
            ws.close(CloseCode.POLICY_VIOLATION, "ping timeout", drop_queue=True)
            ws.abort()
            continue
        if now - ws.last_ping_at >= settings.ping_interval_s:
            ws.ping(now)
        queued = ws.queue_depth
        depth += queued
        deepest = max(deepest, queued)
    metrics.send_queue_depth.set(depth)
    metrics.send_queue_max.set(deepest)
    Traffic.flush()


def run(registry: Registry, settings: Settings, metrics: Metrics) -> None:
    interval = tick_s(settings)
    while True:
        gevent.sleep(interval)
        try:
            sweep(registry, settings, metrics, time.monotonic(), time.time())
        except Exception:  # the heartbeat must outlive any one bad connection
            log.exception("heartbeat sweep failed")


def start(registry: Registry, settings: Settings, metrics: Metrics) -> gevent.Greenlet:
    """One per app; the app's `WSApp.close()` kills it."""
    return gevent.spawn(run, registry, settings, metrics)
