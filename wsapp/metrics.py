"""Prometheus metrics, correct across gunicorn's several worker processes.

prometheus-client runs in multiprocess mode: `gunicorn.conf.py` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh folder before the workers fork, each worker
writes its own files, `/metrics` merges them, and a dead worker's live gauges are
dropped (`mark_dead`). Per-message traffic is counted in plain integers on the hot
path (`Traffic`) and added to the Prometheus counters by the heartbeat's sweep, so a
message costs an integer add, not a lock and an mmap write.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)

from .errors import CloseCode

CONNECTIONS_OPEN = Gauge(
    "wsapp_connections_open", "Open WebSocket connections.", ["route"], multiprocess_mode="livesum"
)
CONNECTIONS_OPENED = Counter("wsapp_connections_opened", "WebSocket connections accepted.", ["route"])
CONNECTIONS_CLOSED = Counter(
    "wsapp_connections_closed",
    'WebSocket connections closed, by close code (codes the service does not name count as "other").',
    ["route", "code"],
)
HANDSHAKES_REFUSED = Counter(
    "wsapp_handshakes_refused", "Handshakes refused before the upgrade, by error code.", ["error"]
)
CONNECTION_SLOTS = Gauge(
    "wsapp_connection_slots",
    "Connection slots held (open connections plus handshakes in flight): what the connection limits count.",
    multiprocess_mode="livesum",
)
MESSAGES_IN = Counter("wsapp_messages_received", "Messages received from clients.")
BYTES_IN = Counter("wsapp_received_bytes", "Bytes received from clients on WebSockets (frames included).")
MESSAGES_OUT = Counter("wsapp_messages_sent", "Frames written to clients.")
BYTES_OUT = Counter("wsapp_sent_bytes", "Bytes written to clients on WebSockets.")
SLOW_CONSUMERS = Counter("wsapp_slow_consumer_evictions", "Connections closed 1008 because their send queue was full.")
SEND_QUEUE_DEPTH = Gauge(
    "wsapp_send_queue_depth", "Frames waiting in send queues (sum over connections).", multiprocess_mode="livesum"
)
SEND_QUEUE_MAX = Gauge(
    "wsapp_send_queue_depth_max", "Deepest send queue of any one connection.", multiprocess_mode="livemax"
)


ROUTES = ("chat", "echo")
# Close codes that get a label value of their own: the ones the service sends or names
# (wsapp.errors.CloseCode). A client picks its close code, so any other code would be a
# new time series per value (3000-4999 alone are 2,000): those all count as "other".
KNOWN_CLOSE_CODES = frozenset(v for k, v in vars(CloseCode).items() if k.isupper() and isinstance(v, int))


def close_code_label(code: int | None) -> str:
    """The `code` label value of `wsapp_connections_closed`: a bounded set of values."""
    if code is None:
        return "none"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


# label children looked up once: `.labels()` costs a lock and a dict lookup per call
OPEN_BY_ROUTE = {route: CONNECTIONS_OPEN.labels(route) for route in ROUTES}
OPENED_BY_ROUTE = {route: CONNECTIONS_OPENED.labels(route) for route in ROUTES}


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


def render() -> tuple[bytes, str]:
    Traffic.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def mark_dead(pid: int) -> None:
    """gunicorn's child_exit hook: forget a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
