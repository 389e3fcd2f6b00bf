"""The one server adapter: how a WebSocket leaves the WSGI server, and the graceful drain.

wsapp serves WebSockets under gunicorn's gevent worker (`gunicorn -k gevent myapp:app`).
Everything that knows about the server lives here:

* `cooperative_socket(environ)`: the connection's socket, if the server hands over a
  gevent socket (gunicorn's gevent worker: `gunicorn.socket`; Werkzeug's server in a
  gevent-patched process, or a test client given one: `werkzeug.socket`). Anything
  else (`flask run`'s threaded development server, gunicorn's sync worker) cannot carry
  a connection that lives on in a greenlet of its own: the handshake is refused with
  501 `unsupported_server` before any 101, and the app's log says why in one sentence.
* `take_over(sock, head)`: the socket's file descriptor is detached from the server's
  socket object (which the server closes, now harmlessly, when the WSGI request ends)
  and wrapped anew; the 101 is written on it.
* `after_upgrade(environ)`: the WSGI answer once the socket is ours: gunicorn is told
  the request was handled (`StopIteration`), Werkzeug's server that the connection is
  gone (`ConnectionError`, which it ignores quietly), so neither writes on it.
* The drain on SIGTERM/SIGINT (`post_worker_init`, `on_starting`): a user's own
  gunicorn config takes it with one line (see docs/extending.md):

      from wsapp.server import on_starting, post_worker_init  # noqa: F401

  Without it gunicorn's own stop applies: open WebSockets are cut (1006) when the
  worker exits.

gunicorn imports this module in the master (the hooks): nothing here imports Flask at
module level, since the gevent worker monkey-patches after the fork and modules
imported before that would stay unpatched.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
import weakref
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket

if TYPE_CHECKING:
    from flask import Response

    from .extension import WSApp

log = logging.getLogger("wsapp")

UNSUPPORTED_SERVER = (
    "wsapp: WebSockets need gunicorn's gevent worker; this server ({server}) cannot serve them, "
    "so the handshake was refused (501): run it as `gunicorn -k gevent {app}:app` instead"
)


class UnsupportedServer(Exception):
    """The WSGI server handed over no socket a greenlet can keep (see `cooperative_socket`)."""


GOING_AWAY = 1001  # wsapp.errors.CloseCode.GOING_AWAY (errors imports Flask)

# every live WSApp of this process, for the drain; weak: an app that is gone is not kept
_apps: weakref.WeakSet[WSApp] = weakref.WeakSet()


def register(ext: WSApp) -> None:
    _apps.add(ext)


def unregister(ext: WSApp) -> None:
    _apps.discard(ext)


# ---- taking the socket over ----------------------------------------------------------


def cooperative_socket(environ: dict[str, Any]) -> socket.socket | None:
    """The connection's socket if it can live on in a greenlet (a gevent socket), else None."""
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    return sock if isinstance(sock, gevent.socket.socket) else None


def server_name(environ: dict[str, Any]) -> str:
    if "gunicorn.socket" in environ:
        return "gunicorn without the gevent worker"
    return str(environ.get("SERVER_SOFTWARE") or "this WSGI server")


def take_over(server_sock: socket.socket, head: bytes, unread: int = 0) -> socket.socket:
    """Detach the socket from the server, consume the `unread` bytes of the request that
    were only peeked at (`wsapp.handshake.early`), write the 101 (`head`) and hand the
    socket back."""
    sock = type(server_sock)(fileno=server_sock.detach())
    try:
        sock.settimeout(None)
        while unread > 0:  # already in the kernel's buffer: no wait
            got = len(sock.recv(unread))
            if not got:
                raise ConnectionResetError("connection closed during the handshake")
            unread -= got
        sent = sock.send(head)  # a fresh socket's buffer takes the whole 101 at once
        if sent < len(head):
            sock.sendall(head[sent:])
    except OSError:
        sock.close()
        raise
    return sock


def _leave_the_socket(environ: dict[str, Any]) -> None:
    """Tell the server the socket is ours now: gunicorn and Werkzeug's server each have an
    exception for it; a test client has none (it gets an empty answer)."""
    if "gunicorn.socket" in environ:
        raise StopIteration()  # gunicorn's signal that the socket was handled
    if str(environ.get("SERVER_SOFTWARE", "")).startswith("Werkzeug/"):
        raise ConnectionError("the WebSocket session owns the socket")  # dropped quietly


def answer_upgraded(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """`after_upgrade()`'s answer as a plain WSGI call, for a request Flask never saw
    (`wsapp.fastpath`): no Response object to build per handshake."""
    _leave_the_socket(environ)
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", "0")])
    return []


_after_upgrade: type[Response] | None = None


def after_upgrade() -> Response:
    """The WSGI answer once the socket has been taken over: the server must not touch it."""
    global _after_upgrade
    if _after_upgrade is None:
        from flask import Response

        class AfterUpgrade(Response):
            def __call__(self, environ: Any, start_response: Any) -> Any:
                _leave_the_socket(environ)
                return super().__call__(environ, start_response)  # a test client: an empty answer

        _after_upgrade = AfterUpgrade
    return _after_upgrade()  # one per request: after_request hooks may change it


# ---- the drain -------------------------------------------------------------------------


def drain(ext: WSApp, budget_s: float) -> None:
    """Refuse new handshakes, close every connection 1001, wait up to `budget_s` for them
    to finish, cut the rest, stop the app's background tasks."""
    registry = ext.service.registry
    if registry.draining:
        return
    registry.draining = True
    deadline = time.monotonic() + budget_s
    log.info("shutting down: closing %d connections (1001)", len(registry.peers()))
    while True:
        # again on every pass: a session upgraded just before `draining` was set
        # registers after the first pass, and must get its 1001 too (close is idempotent)
        for peer in registry.peers():
            peer.ws.close(GOING_AWAY, "server shutting down")
        if not registry.held or time.monotonic() >= deadline:  # every session has finished
            break
        gevent.sleep(0.05)
    for peer in registry.peers():  # those that did not answer in time
        peer.ws.abort()
    ext.close()


def drain_all(budget_s: float) -> None:
    """Drain every WSApp of this process, together."""
    jobs = [gevent.spawn(drain, ext, budget_s) for ext in list(_apps)]
    gevent.joinall(jobs)


def gunicorn_timeouts(shutdown_timeout_s: float) -> tuple[int, int]:
    """gunicorn's (`graceful_timeout`, `keepalive`) for a drain of `shutdown_timeout_s`.

    The drain closes the clients within the budget; gunicorn waits a little longer
    before it kills the worker. An idle keep-alive connection holds a stopping worker
    for `keepalive` seconds: keep it inside the budget (5 s at the default 10 s; nginx's
    upstream keepalive_timeout is 4 s)."""
    return int(shutdown_timeout_s) + 2, max(1, min(5, int(shutdown_timeout_s) - 3))


def install(worker: Any) -> None:
    """Put the drain in front of the gevent worker's SIGTERM and SIGINT handling.

    gunicorn's gevent worker handles SIGTERM by closing its listener and waiting for the
    HTTP requests in flight (WebSocket sessions are greenlets of our own, which it does
    not know of). Here the apps drain first (handshakes still reaching the listener get
    503 `shutting_down`, /readyz 503); only then is the worker told to stop, leaving it
    gunicorn's keep-alive time to finish HTTP requests, so that the whole exit fits in
    `WSAPP_SHUTDOWN_TIMEOUT` (that of the first app; gunicorn's `graceful_timeout` must
    be longer, see docs/extending.md)."""
    apps = list(_apps)
    shutdown_s = apps[0].settings.shutdown_timeout_s if apps else 10.0
    # leave room for gunicorn's 1 s loop tick and an idle keep-alive request to end
    budget_s = max(0.5, shutdown_s - worker.cfg.keepalive - 1.5)
    started: list[gevent.Greenlet] = []

    def drain_then_stop() -> None:
        try:
            drain_all(budget_s)
        finally:
            worker.alive = False  # now gunicorn closes its listener and exits

    def on_stop_signal(sig: int, frame: Any) -> None:
        # Ctrl+C brings SIGINT from the terminal and then SIGTERM from the master: one
        # drain, and no second signal may tell the worker to stop before it has finished
        if not started:
            started.append(gevent.spawn(drain_then_stop))

    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)


# ---- gunicorn hooks: `from wsapp.server import on_starting, post_worker_init` -----------


def on_starting(server: Any) -> None:
    """gunicorn hook, in the master before any worker: descriptor limit, Ctrl+C as a graceful stop."""
    from . import startup

    raised = startup.raise_descriptor_limit()
    if raised is not None:
        server.log.info(startup.RAISED, *raised)
    startup.graceful_sigint(server)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook, in each worker once the app is loaded: SIGTERM or SIGINT drains;
    accepted upgrades are served before gunicorn's HTTP parser where nothing could
    tell (`wsapp.handshake.early`); out of descriptors, sockets that have not completed a
    handshake are shed, oldest first (`wsapp.descriptors`)."""
    from . import startup

    raised = startup.raise_descriptor_limit()  # inherited from the master: normally a no-op
    if raised is not None:
        worker.log.info(startup.RAISED, *raised)
    install(worker)
    from .handshake import early  # imports Flask: the worker is patched by now

    early.install(worker)  # accepted upgrades read before gunicorn's HTTP parser
    from . import descriptors

    descriptors.install(worker)  # last, so outermost: sockets without a handshake are shed
