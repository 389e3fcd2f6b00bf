"""gunicorn's side of wsapp: the graceful drain on SIGTERM/SIGINT and the gunicorn hooks.

wsapp serves WebSockets under gunicorn's gevent worker (`gunicorn -k gevent myapp:app`);
how a socket leaves the server is `wsapp.handshake.takeover`'s. The drain on
SIGTERM/SIGINT (`post_worker_init`, `on_starting`): a user's own gunicorn config takes
it with one line (see docs/extending.md):

    from wsapp.server import on_starting, post_worker_init  # noqa: F401

Without it (a plain `gunicorn -k gevent myapp:app`), `WSApp.init_app` installs the same
drain from inside the gevent worker as it loads the app (`install_under_gunicorn`);
the line adds the master's side (descriptor limit, Ctrl+C) and the worker's early
handshakes and descriptor shedding.

gunicorn imports this module in the master (the hooks): nothing here imports Flask at
module level, since the gevent worker monkey-patches after the fork and modules
imported before that would stay unpatched.
"""

from __future__ import annotations

import logging
import signal
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import gevent

if TYPE_CHECKING:
    from .service import Service
    from .settings import Settings

log = logging.getLogger("wsapp")

GOING_AWAY = 1001  # wsapp.errors.CloseCode.GOING_AWAY (errors imports Flask)


class Drainable(Protocol):
    """What the drain needs of an app's extension (`WSApp` is one): this module is below it."""

    @property
    def service(self) -> Service: ...
    @property
    def settings(self) -> Settings: ...
    def close(self) -> None: ...
    def start(self) -> None: ...


# every live WSApp of this process, for the drain; weak: an app that is gone is not kept
_apps: weakref.WeakSet[Drainable] = weakref.WeakSet()


def register(ext: Drainable) -> None:
    _apps.add(ext)


def unregister(ext: Drainable) -> None:
    _apps.discard(ext)


# ---- the drain -------------------------------------------------------------------------


def drain(ext: Drainable, budget_s: float) -> None:
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
    if getattr(worker, "_wsapp_drain", False):  # installed already (`init_app`, then the hook)
        return
    worker._wsapp_drain = True
    for ext in list(_apps):  # the worker serves from now on: each app is a node (Redis) at once
        gevent.spawn(ext.start)
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


NO_DRAIN = (
    "wsapp: gunicorn --preload without wsapp's hooks: SIGTERM will cut WebSockets (1006) instead of "
    "closing them 1001; add `from wsapp.server import on_starting, post_worker_init` to the gunicorn config"
)


def install_under_gunicorn() -> bool:
    """For `WSApp.init_app`: in a gunicorn gevent worker loading the app (a plain
    `gunicorn -k gevent myapp:app`, no wsapp hooks line), install the drain from here.
    gunicorn has set its own signal handlers before it loads the app, and wsapp's
    `post_worker_init` (if the config has the line) finds the drain in place. True if
    installed (or already there)."""
    from . import startup

    worker = startup.gunicorn_worker()
    if worker is None:
        arbiter = startup.gunicorn_arbiter()  # `--preload`: the master loads the app, no worker yet
        if arbiter is not None and arbiter.cfg.post_worker_init is not post_worker_init:
            arbiter.log.warning(NO_DRAIN)  # gunicorn's error log: the app's may have no handler yet
        return False
    from gunicorn.workers.ggevent import GeventWorker

    if not isinstance(worker, GeventWorker):  # the sync worker cannot serve WebSockets at all
        return False
    install(worker)
    return True


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

    descriptors.install(worker, _apps)  # last, so outermost: sockets without a handshake are shed
