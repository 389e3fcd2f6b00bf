"""Prometheus metrics, correct across gunicorn's several worker processes.

Each app has its own `Metrics` (a registry of its own, made by `WSApp.init_app`); the
transport's process-wide counters are registered in each. Under the shipped
gunicorn.conf.py prometheus-client runs in multiprocess mode: `gunicorn.conf.py` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh folder before the workers fork, each worker
writes its own files, `/metrics` merges them, and a dead worker's live gauges are
dropped (`mark_dead`). Per-message traffic is counted in plain integers on the hot
path (`Traffic`) and added to the Prometheus counters by the heartbeat's sweep, so a
message costs an integer add, not a lock and an mmap write.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)

from .errors import CloseCode

# The transport's counters (`wsapp.connection` counts them) belong to the process, not
# to one app: they are registered in no registry of prometheus-client's (no process-wide
# registration) but in each app's `Metrics.registry`.
MESSAGES_IN = Counter("wsapp_messages_received", "Messages received from clients.", registry=None)
BYTES_IN = Counter(
    "wsapp_received_bytes", "Bytes received from clients on WebSockets (frames included).", registry=None
)
MESSAGES_OUT = Counter("wsapp_messages_sent", "Frames written to clients.", registry=None)
BYTES_OUT = Counter("wsapp_sent_bytes", "Bytes written to clients on WebSockets.", registry=None)
SLOW_CONSUMERS = Counter(
    "wsapp_slow_consumer_evictions", "Connections closed 1008 because their send queue was full.", registry=None
)
BACKPLANE_IN = Counter(
    "wsapp_backplane_received",
    "Messages this worker read from Redis pub/sub (it subscribes only to targets it holds connections for).",
    registry=None,
)
HISTORY_LOST = Counter(
    "wsapp_history_write_failures",
    "Messages Redis refused to keep (full: maxmemory): delivered, their stream's history forgotten.",
    registry=None,
)
HISTORY_OVER_BUDGET = Counter(
    "wsapp_history_over_budget",
    "Messages delivered but not kept: their sender was past WSAPP_HISTORY_BYTES_PER_CLIENT.",
    registry=None,
)
_PROCESS_COLLECTORS = (
    MESSAGES_IN, BYTES_IN, MESSAGES_OUT, BYTES_OUT, SLOW_CONSUMERS, BACKPLANE_IN, HISTORY_LOST, HISTORY_OVER_BUDGET,
)  # fmt: skip

# Close codes that get a label value of their own: the ones the service sends or names
# (wsapp.errors.CloseCode). A client picks its close code, so any other code would be a
# new time series per value (3000-4999 alone are 2,000): those all count as "other".
KNOWN_CLOSE_CODES = frozenset(v for k, v in vars(CloseCode).items() if k.isupper() and isinstance(v, int))


def close_code_label(code: int | None) -> str:
    """The `code` label value of `wsapp_connections_closed`: a bounded set of values."""
    if code is None:
        return "none"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


class Metrics:
    """One app's metrics, in a registry of its own (two apps in one process do not collide).

    The `route` label takes the names of the app's WebSocket routes, a set fixed by its
    code; each route's label children are looked up once (`.labels()` costs a lock and a
    dict lookup per call)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in _PROCESS_COLLECTORS:
            self.registry.register(collector)
        r = self.registry
        self.connections_open = Gauge(
            "wsapp_connections_open", "Open WebSocket connections.", ["route"], multiprocess_mode="livesum", registry=r
        )
        self.connections_opened = Counter(
            "wsapp_connections_opened", "WebSocket connections accepted.", ["route"], registry=r
        )
        self.connections_closed = Counter(
            "wsapp_connections_closed",
            'WebSocket connections closed, by close code (codes the service does not name count as "other").',
            ["route", "code"],
            registry=r,
        )
        self.handshakes_refused = Counter(
            "wsapp_handshakes_refused", "Handshakes refused before the upgrade, by error code.", ["error"], registry=r
        )
        upgrades = Counter(
            "wsapp_upgrades",
            "Accepted handshakes by the path that served them: early (before gunicorn's parser), "
            "fast (without a Flask request) or flask.",
            ["path"],
            registry=r,
        )
        self.upgrades = {path: upgrades.labels(path) for path in ("early", "fast", "flask")}
        self.connection_slots = Gauge(
            "wsapp_connection_slots",
            "Connection slots held (open connections plus handshakes in flight): what the connection limits count.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.send_queue_depth = Gauge(
            "wsapp_send_queue_depth",
            "Frames waiting in send queues (sum over connections).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.send_queue_max = Gauge(
            "wsapp_send_queue_depth_max",
            "Deepest send queue of any one connection.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.open_by_route: dict[str, Any] = {}
        self.opened_by_route: dict[str, Any] = {}

    def add_route(self, route: str) -> None:
        """Make the route's label children (at route registration, not per connection)."""
        self.open_by_route[route] = self.connections_open.labels(route)
        self.opened_by_route[route] = self.connections_opened.labels(route)

    def render(self) -> tuple[bytes, str]:
        """The /metrics body: this app's registry, or every worker's files in multiprocess mode."""
        Traffic.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Traffic:
    """Hot-path counters: plain integers, flushed to Prometheus by `flush()`."""

    messages_in = 0
    bytes_in = 0
    messages_out = 0
    bytes_out = 0

    @classmethod
    def flush(cls) -> None:
        for attr, counter in (
            ("messages_in", MESSAGES_IN),
            ("bytes_in", BYTES_IN),
            ("messages_out", MESSAGES_OUT),
            ("bytes_out", BYTES_OUT),
        ):
            value = getattr(cls, attr)
            if value:
                setattr(cls, attr, 0)
                counter.inc(value)


def mark_dead(pid: int) -> None:
    """gunicorn's child_exit hook: forget a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
