"""WebSocket handshakes before gunicorn's HTTP parser: the rest of a reconnect storm's cost.

With the fast path an accepted handshake already skips Flask's request; what was left
of gunicorn's request path (its Python HTTP parser, the environ it builds, the
`Response` it prepares) was about a third of a worker's time per handshake
(docs/performance.md). `EarlyHandshakes` replaces the gevent worker's per-connection
`handle`: it peeks (`MSG_PEEK`) at the connection's first bytes and, when they are one
whole upgrade request in the plainest HTTP/1.1 (`wsapp.handshake.head`) on a route the
`Shortcut` allows (`wsapp.handshake.shortcut`), runs the one `Upgrader.upgrade` on an
environ of its own: the same checks, the same 101, the same session.

Anything else goes to gunicorn's own `handle` untouched, the peeked bytes still
unread in the kernel: no upgrade, a head not whole in the first read, bytes after the
head (pipelining), anything `head` finds unusual, and every refusal (the fast path or
Flask then answers, logs and counts it, with gunicorn's own response headers and access
log line). So this path only ever accepts, and only what gunicorn would have parsed the
same way. The peeked bytes are consumed by `takeover.take_over` before the 101 (the
socket's owner from then on is the session greenlet).

It is installed (`install`, from `wsapp.server.post_worker_init`) when
`WSAPP_FAST_HANDSHAKES=early` (the default) and gunicorn does nothing per request that
the app could notice: the plain gevent worker, no TLS, no PROXY protocol, no HTTP/2
cleartext, the default `pre_request`/`post_request` hooks, no `SCRIPT_NAME`, and the app
gunicorn serves is a Flask app whose `wsgi_app` is the fast path's (no middleware around
it), checked again per connection. gunicorn writes no access-log line for a 101 either
way (its WSGI call ends with the `StopIteration` that says the socket was taken).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from flask import Flask

from ..errors import WsappError
from . import head as httphead
from .fast import FastHandshakes
from .request import EnvironRequest, Fallback

Handle = Callable[[Any, socket.socket, Any], None]


class EarlyHandshakes:
    """The gevent worker's `handle(listener, client, addr)`, one per worker. Runs in the
    connection's greenlet (gunicorn's pool spawns one per accepted socket); owns the
    client socket until it either hands it to gunicorn's `handle` or to
    `takeover.take_over` (through `WSApp.upgrade`)."""

    def __init__(self, worker: Any, fast: FastHandshakes, original: Handle) -> None:
        cfg = worker.cfg
        self.worker = worker
        self.fast = fast
        self.original = original
        self.limits = httphead.Limits.from_gunicorn(
            cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )
        # gunicorn refuses (400) a request whose scheme headers contradict each other
        # (from a peer in `forwarded_allow_ips`): more than one of them goes to gunicorn
        self.scheme_keys = tuple(httphead.environ_key(name) for name in (cfg.secure_scheme_headers or {}))
        # gunicorn gives a connection `keepalive` seconds to send a request, then closes it
        self.wait_s: float | None = cfg.keepalive or None

    def __call__(self, listener: Any, client: socket.socket, addr: Any) -> None:
        try:
            client.settimeout(self.wait_s)
            data = client.recv(httphead.MAX_HEAD, socket.MSG_PEEK)
        except TimeoutError:
            return  # nothing within keep-alive: gunicorn closes such a connection too
        except OSError:
            data = None  # gunicorn's own read meets the same error and handles it
        if data == b"":
            return  # closed before a request: nothing to answer
        if data is None or not self.upgraded(data, client, addr):
            self.original(listener, client, addr)

    def upgraded(self, data: bytes, client: socket.socket, addr: Any) -> bool:
        """Serve `data` (peeked) here if it is an accepted upgrade; False: untouched."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data) or not isinstance(addr, tuple):
            return False
        if self.fast.shortcut.app.wsgi_app is not self.fast:  # a middleware wrapped in since
            return False
        head = httphead.parse(data[:end], self.limits)
        if head is None:
            return False
        if sum(key in head.headers for key in self.scheme_keys) > 1:
            return False
        environ: dict[str, Any] = head.headers
        environ.update(
            REQUEST_METHOD="GET",
            PATH_INFO=head.path,
            QUERY_STRING=head.query,
            REMOTE_ADDR=addr[0],
            REMOTE_PORT=str(addr[1]),
        )
        environ["gunicorn.socket"] = client
        shortcut = self.fast.shortcut
        target = shortcut.target(environ)
        if target is None:
            return False
        try:
            shortcut.upgrade(target, EnvironRequest(environ), "early", peeked=len(data))
        except (WsappError, Fallback):
            return False  # gunicorn reads the request; the fast path or Flask answers the refusal
        self._count_request()
        return True

    def _count_request(self) -> None:
        """gunicorn's `max_requests` bookkeeping, as its `handle_request` does it."""
        worker = self.worker
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            worker.log.info("Autorestarting worker after current request.")
            worker.alive = False


def _served_app(worker: Any) -> FastHandshakes | None:
    app = getattr(worker, "wsgi", None)
    if not isinstance(app, Flask) or type(app).__call__ is not Flask.__call__:
        return None
    fast = app.wsgi_app
    return fast if isinstance(fast, FastHandshakes) else None


def eligible(worker: Any) -> bool:
    """Nothing gunicorn does per request for this worker could be noticed if skipped."""
    from gunicorn.config import PostRequest, PreRequest
    from gunicorn.workers.ggevent import GeventWorker

    cfg = worker.cfg
    return (
        type(worker).handle is GeventWorker.handle
        and getattr(worker, "server_class", None) is None  # not the pywsgi flavour
        and not cfg.is_ssl
        and str(getattr(cfg, "proxy_protocol", "off")) in ("off", "False", "None")
        and str(getattr(cfg, "http2_cleartext", "off")) == "off"
        and cfg.pre_request is PreRequest.default
        and cfg.post_request is PostRequest.default
        and not (cfg.env or {}).get("SCRIPT_NAME")
        and not os.environ.get("SCRIPT_NAME")
    )


def install(worker: Any) -> bool:
    """Put `EarlyHandshakes` in front of the worker's `handle` (its `run` binds
    `self.handle` when it starts serving, after `post_worker_init`). True if installed."""
    fast = _served_app(worker)
    if fast is None or fast.shortcut.upgrader.service.settings.fast_handshakes != "early" or not eligible(worker):
        return False
    worker.handle = EarlyHandshakes(worker, fast, worker.handle)
    worker.log.info("wsapp: WebSocket upgrades are read before gunicorn's HTTP parser (wsapp.handshake.early)")
    return True
