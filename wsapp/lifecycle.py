"""Graceful shutdown of a worker: refuse new handshakes, close every client 1001, exit in time.

gunicorn's gevent worker handles SIGTERM by stopping its accept loop and waiting for
its greenlets; `install(worker)` (called from gunicorn.conf.py's `post_worker_init`)
adds our part in front: `drain()` marks the registry draining (handshakes get 503
`shutting_down`, /readyz 503), sends every client close 1001, and cuts whoever has not
finished the close handshake before `WSAPP_SHUTDOWN_TIMEOUT` is up.
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


def drain(service: Service) -> None:
    registry = service.registry
    if registry.draining:
        return
    registry.draining = True
    deadline = time.monotonic() + max(0.1, service.settings.shutdown_timeout_s - 1.0)
    peers = registry.peers()
    log.info("shutting down: closing %d connections (1001)", len(peers))
    for peer in peers:
        peer.ws.close(CloseCode.GOING_AWAY, "server shutting down")
    while len(registry) and time.monotonic() < deadline:
        gevent.sleep(0.05)
    for peer in registry.peers():  # those that did not answer in time
        peer.ws.abort()
    service.backplane.stop()


def install(worker: Any) -> None:
    """Chain our drain onto the worker's SIGTERM handler."""
    service: Service = worker.wsgi.extensions["wsapp"]
    original = worker.handle_exit

    def on_sigterm(sig: int, frame: Any) -> None:
        original(sig, frame)  # the worker stops accepting and waits for its greenlets
        gevent.spawn(drain, service)

    signal.signal(signal.SIGTERM, on_sigterm)
