"""A worker's start and graceful shutdown: descriptor limit; refuse new handshakes, close
every client 1001, exit in time.

gunicorn's gevent worker handles SIGTERM by closing its listener and waiting for the
HTTP requests in flight (WebSocket sessions are greenlets of our own, which it does
not know of). `install(worker)` (called from gunicorn.conf.py's `post_worker_init`)
puts our drain first: the registry is marked draining, so handshakes still reaching
the listener get 503 `shutting_down` and /readyz 503; every client gets close 1001;
whoever has not finished the close handshake in time is cut; only then is the worker
told to stop, leaving it gunicorn's keep-alive time to finish HTTP requests, so that
the whole exit fits in `WSAPP_SHUTDOWN_TIMEOUT`.

SIGINT (Ctrl+C on `scripts/run.sh`, which reaches the master and the workers alike)
drains the same way: gunicorn's own SIGINT is a quick exit that cuts every client
(1006). The master's side is `startup.graceful_sigint` (gunicorn.conf.py's `on_starting`).
SIGQUIT stays gunicorn's quick shutdown, and a second Ctrl+C asks the master for it.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import gevent

from .errors import CloseCode
from .service import Service

log = logging.getLogger("wsapp")


def drain(service: Service, budget_s: float) -> None:
    """Close every connection 1001 and wait up to `budget_s` for them to finish."""
    registry = service.registry
    if registry.draining:
        return
    registry.draining = True
    deadline = time.monotonic() + budget_s
    log.info("shutting down: closing %d connections (1001)", len(registry.peers()))
    while True:
        # again on every pass: a session upgraded just before `draining` was set
        # registers after the first pass, and must get its 1001 too (close is idempotent)
        for peer in registry.peers():
            peer.ws.close(CloseCode.GOING_AWAY, "server shutting down")
        if not registry.held or time.monotonic() >= deadline:  # every session has finished
            break
        gevent.sleep(0.05)
    for peer in registry.peers():  # those that did not answer in time
        peer.ws.abort()
    service.backplane.stop()


def install(worker: Any) -> None:
    """Put our drain in front of the worker's SIGTERM and SIGINT handling."""
    service: Service = worker.wsgi.extensions["wsapp"]
    # leave room for gunicorn's 1 s loop tick and an idle keep-alive request to end
    budget_s = max(0.5, service.settings.shutdown_timeout_s - worker.cfg.keepalive - 1.5)
    started: list[gevent.Greenlet] = []

    def drain_then_stop() -> None:
        try:
            drain(service, budget_s)
        finally:
            worker.alive = False  # now gunicorn closes its listener and exits

    def on_stop_signal(sig: int, frame: Any) -> None:
        # Ctrl+C brings SIGINT from the terminal and then SIGTERM from the master: one
        # drain, and no second signal may tell the worker to stop before it has finished
        if not started:
            started.append(gevent.spawn(drain_then_stop))

    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)
