"""`WSApp`, the Flask extension: WebSocket routes, chat frame types, room rules, pushes.

    ws = WSApp(app)                 # or ws = WSApp(); ws.init_app(app) in a factory

`init_app` reads the settings (`app.config["WSAPP_*"]`, the environment filling the
rest; one `SettingsError` naming every bad one), builds the app's own service objects
(registry, backplane, hub, metrics, heartbeat: nothing shared with another app in the
process) and adds the built-in chat route unless `WSAPP_CHAT_PATH` is empty. It changes
nothing process-wide and nothing outside its routes: no error handler on the app, no
log handler (the `wsapp` logger has a `NullHandler`, as a library's should), no route
but the WebSocket ones. The HTTP API and demo page are a blueprint the app may
register (`wsapp.site`). `close()` stops the app's background tasks.

Every WebSocket route registered through the extension (`@ws.route`, or the sock in
`app.extensions["wsapp.sock"]`, or a `wsapp.Sock` of the app's own) runs `handshake`
in its view: every check before the 101, the slot reserved, then the session in a
greenlet of its own. Refusals are answered here, as JSON, so they need no app-wide
error handler.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import gevent
import gevent.event
from flask import Flask, Response, current_app, request

from . import demo_secret, devserver, heartbeat, protocol, server, startup
from .auth import Identity
from .backplane import Backplane, InProcessBackplane
from .chat import builtins as chat
from .errors import CloseCode, HandshakeRejected, WsappError, http_error_response
from .handshake import fast, takeover
from .handshake.request import HandshakeRequest
from .handshake.shortcut import Shortcut
from .handshake.upgrade import Upgrader
from .history import Position, Published, make_history
from .hooks import AppHooks
from .hub import Hub, Page, stream_of
from .metrics import Metrics
from .registry import Registry
from .service import Service
from .session import Route, run_session
from .settings import Settings, SettingsError
from .transport import Sock

if TYPE_CHECKING:
    from .testing import WebSocketTestClient

log = logging.getLogger("wsapp")
F = TypeVar("F", bound=Callable[..., Any])


class WSApp:
    """Real-time WebSockets for one Flask app. See docs/extending.md."""

    def __init__(self, app: Flask | None = None, *, settings: Settings | None = None) -> None:
        self.app: Flask | None = None
        self._settings_override = settings
        self.hooks = AppHooks()  # what the layers below read (through the Service)
        self.frame_handlers = self.hooks.frame_handlers
        self.connect_hooks = self.hooks.connect_hooks
        self.disconnect_hooks = self.hooks.disconnect_hooks
        self._heartbeat: gevent.Greenlet | None = None
        self._service: Service | None = None
        self.sock = Sock()
        chat.register_built_ins(self.hooks)
        if app is not None:
            self.init_app(app)

    # ---- set-up -----------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Settings, the app's service objects, the WebSocket routes. Raises `SettingsError`
        (under gunicorn or the `flask` command: one line per problem and an exit instead)."""
        try:
            self._init_app(app)
        except SettingsError as exc:
            startup.stop_on_bad_settings(exc)
            raise

    def _init_app(self, app: Flask) -> None:
        if self.app is not None:
            raise RuntimeError("this WSApp already serves an app: make one WSApp per app")
        settings = self._settings_override or Settings.from_config(app.config)
        if settings.demo_mode:  # raises SettingsError if the secret's folder is not private
            folder = settings.instance_path or app.instance_path
            secret = demo_secret.load_or_create_secret(folder)
            settings = settings.replace(jwt_secret=secret, generated_secret=True)
            log.warning(
                "DEMO MODE (WSAPP_DEMO=1): tokens are signed with a generated secret kept in %s, "
                "anyone may mint one at POST /api/demo/token, and only loopback Host values are "
                "served. Set WSAPP_JWT_SECRET for production.",
                os.path.join(folder, demo_secret.SECRET_FILE),
            )
        registry = Registry(settings.max_connections, settings.max_connections_per_client)
        backplane = _make_backplane(settings, registry)
        hub = Hub(registry, backplane, store_offline=settings.store_offline, max_rooms=settings.max_rooms,
                  members_limit=settings.members_limit, presence_info=bool(settings.presence_claims))  # fmt: skip
        self.hooks.rooms_claim = settings.rooms_claim
        self._service = Service(settings, registry, backplane, hub, Metrics(), self.hooks)
        # every handshake path (Flask's view, fast, early, the test client) asks the upgrader
        self.upgrader = _StartingUpgrader(
            self._service, functools.partial(run_session, self._service), self._start_background
        )
        self.app = app
        app.extensions["wsapp"] = self
        app.extensions["wsapp.sock"] = self.sock
        server.register(self)
        server.install_under_gunicorn()  # the drain, in a plain `gunicorn -k gevent` worker too
        app.cli.add_command(devserver.cli)  # `flask --app myapp wsapp run --reload`
        startup.raise_descriptor_limit_under_gunicorn()  # a no-op when wsapp's gunicorn hooks did it
        if settings.chat_path:
            self.route(settings.chat_path, endpoint="chat", addressable=True, resumable=True)(chat.serve_chat)
        self.sock.init_app(app)
        if settings.fast_handshakes != "off":  # accepted handshakes on static routes skip Flask's request
            fast.install(app, Shortcut(app, self.upgrader))
        self._start_on_first_request(app)  # after fast.install, which only wraps Flask's own wsgi_app

    @property
    def service(self) -> Service:
        """The app's registry, backplane, hub, metrics and settings (after `init_app`)."""
        if self._service is None:
            raise RuntimeError("this WSApp serves no app yet: call ws.init_app(app) first")
        return self._service

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def close(self) -> None:
        """Stop the app's background tasks (heartbeat, Redis backplane). Idempotent;
        open connections are the drain's (`wsapp.server.drain`). Nothing starts them again."""
        started = self._background == "started"
        self._background = "closed"
        if started:
            self._started.wait()  # a start in progress (Redis connecting) finishes first
            if self._heartbeat is not None:
                self._heartbeat.kill(block=False)
                self._heartbeat = None
            self.service.backplane.stop()
        server.unregister(self)

    # ---- the background tasks: started when the worker first serves -------------------

    def start(self) -> None:
        """Start the app's background tasks now (the heartbeat; with Redis, this process
        becomes a node: presence, subscriptions, liveness), as the first request, handshake
        or push would. A gunicorn gevent worker calls it for each app as it begins serving."""
        self._start_background()

    # "idle" after init_app (which starts nothing: `flask routes`, or importing the app in
    # a test, joins no cluster), "started" by the first handshake or HTTP request, "closed"
    _background = "idle"
    _started: gevent.event.Event  # set once a start has finished

    def _start_background(self) -> None:
        """The heartbeat and the backplane (Redis: connect, subscribe, the supervisor), once.
        Concurrent first requests wait for the start (Redis connecting) to finish."""
        if self._background != "idle":
            if self._background == "started":
                self._started.wait()
            return
        service = self.service  # raises before anything changes when no app is served yet
        self._background = "started"
        self._started = gevent.event.Event()
        try:
            self._heartbeat = heartbeat.start(service.registry, service.settings, service.metrics)
            service.backplane.start()  # catches Redis errors itself: the supervisor reconnects
        finally:
            self._started.set()

    def _start_on_first_request(self, app: Flask) -> None:
        """Every HTTP request (the API, /readyz, a handshake through Flask) starts them too."""
        outer = app.wsgi_app
        wrapped = outer if isinstance(outer, fast.FastHandshakes) else None
        inner = wrapped.wsgi_app if wrapped is not None else outer

        def starting(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if self._background != "started" or not self._started.is_set():
                self._start_background()
            return inner(environ, start_response)

        if wrapped is not None:
            wrapped.wsgi_app = starting
        else:
            app.wsgi_app = starting  # type: ignore[method-assign]

    # ---- routes and hooks -------------------------------------------------------------

    def route(
        self, path: str, *, addressable: bool = False, bp: Any = None, resumable: bool = False, **kwargs: Any
    ) -> Callable[[F], F]:
        """Register `f(conn, **view_args)` as a WebSocket route at `path` (flask-sock's
        shape). Every handshake check runs before the 101. `addressable=True`: `send`
        and `broadcast` (and the HTTP API, and chat's `direct`/`broadcast`) reach it."""
        return cast(
            Callable[[F], F], self.sock.route(path, bp=bp, addressable=addressable, resumable=resumable, **kwargs)
        )

    def on(self, frame_type: str) -> Callable[[F], F]:
        """Register `f(conn, frame) -> int | None` for chat frames of `frame_type`."""

        return cast(Callable[[F], F], self.hooks.on(frame_type))

    def authorize_join(self, f: Callable[[Identity, str], bool]) -> Callable[[Identity, str], bool]:
        """`f(identity, room) -> bool` decides every chat `join` (False: `forbidden`)."""
        self.hooks.join_rule = f
        return f

    def on_connect(self, f: F) -> F:
        """`f(conn)` after the 101, before the route's handler (raising ends it 1011)."""
        self.connect_hooks.append(f)
        return f

    def on_disconnect(self, f: F) -> F:
        """`f(conn)` once the connection has closed, before it leaves its rooms."""
        self.disconnect_hooks.append(f)
        return f

    def may_join(self, identity: Identity, room: str) -> bool:
        """The room rule: the `authorize_join` hook, else the `WSAPP_ROOMS_CLAIM` claim
        (room names or fnmatch patterns; admins may join any room), else any room."""
        return self.hooks.may_join(identity, room)

    # ---- pushes (any greenlet, any node) ----------------------------------------------

    def send(
        self, client_id: str, data: Any, *, sender: str = "server", key: str = "", type: str | None = None
    ) -> Published:
        """A `direct` frame to every addressable connection of `client_id`, on every node.

        Returns a `Published`: an int, the connections reached, with `.stream`, `.offset`,
        `.epoch` (`.stored`: kept for a client id nobody reached). `key`: an idempotency key;
        a repeat within `WSAPP_HISTORY_TTL` sends nothing and answers the first result
        (`.duplicate`). `type`: a frame type of the app's own instead of `direct` (live
        only: no position, no key). ValueError for a bad `key` or `type`."""
        self._start_background()  # a push from a CLI command or a job: this process is a node now
        return self.service.hub.send(sender, client_id, data, key, type)

    def broadcast(
        self, data: Any, room: str | None = None, *, sender: str = "server", key: str = "", type: str | None = None
    ) -> Published:
        """A `broadcast` frame to every addressable connection, or a `room` frame to `room`'s
        members. Returns a `Published`, takes `key` and `type` (see `send`)."""
        self._start_background()
        if room is None:
            return self.service.hub.broadcast(sender, data, key, type)
        return self.service.hub.send_to_room(sender, room, data, key, type)

    def history(
        self,
        *,
        room: str | None = None,
        to: str | None = None,
        broadcast: bool = False,
        since: tuple[int, str] | None = None,
        limit: int | None = None,
    ) -> Page:
        """What one stream (a `room`, the direct stream of client id `to`, or `broadcast`)
        published after `since` (a `Position`, or `(offset, epoch)`), at most `limit`
        messages (`WSAPP_HISTORY_READ_LIMIT` at most): a `Page` (`recovered`, `messages`,
        `offset`, `epoch`, `more`). Without `since`: the latest `limit` messages kept and
        the stream's position now, read at once (a page's first load). Cluster-wide with Redis."""
        self._start_background()
        cap = self.settings.history_read_limit
        n = cap if limit is None else max(0, min(int(limit), cap))
        position = None if since is None else Position(*since)
        return self.service.hub.history(stream_of(room, to, broadcast), position, n)

    def position(self, *, room: str | None = None, to: str | None = None, broadcast: bool = False) -> Position:
        """Where one stream stands now: `Position(offset, epoch)` ({0, ""}: no such stream)."""
        self._start_background()
        return self.service.hub.position(stream_of(room, to, broadcast))

    def clients(self) -> dict[str, int]:
        """Addressable client ids and their connection counts, cluster-wide."""
        return self.service.hub.clients()

    def members(self, room: str) -> list[str]:
        """The client ids in `room`, cluster-wide."""
        return self.service.hub.room_members(room)

    def member_info(self, room: str) -> dict[str, dict[str, Any]]:
        """The members of `room` and their presence entries (`WSAPP_PRESENCE_CLAIMS`: those
        claims of each member's token; `{}` when it had none or they were over
        `WSAPP_PRESENCE_INFO_BYTES`), cluster-wide, at most `WSAPP_MEMBERS_LIMIT` members
        (the first by client id). Empty when `WSAPP_PRESENCE_CLAIMS` is."""
        self._start_background()
        hub = self.service.hub
        return hub.member_info(room, hub.room_members(room)) or {}

    def join(self, client_id: str, room: str) -> int:
        """Put every open addressable connection of `client_id` (the chat route's, on every
        node) in `room`, as if each had sent `join`: it gets `joined` (members, position),
        the room's others `presence` when the client id is new in it. The server decides:
        the room rule (`authorize_join`, `WSAPP_ROOMS_CLAIM`) is not asked; `WSAPP_MAX_ROOMS`
        holds (a full connection gets the `too_many_rooms` error and is not counted).
        Connections opened later are not joined (`WSAPP_AUTOJOIN_CLAIM` is for that).
        Returns the connections reached: this node's, plus the client's addressable
        connections on the other nodes (as `disconnect` counts). ValueError for a bad name."""
        _check_name(client_id, "client id", 256)
        _check_name(room, "room", protocol.MAX_ROOM_CHARS)
        self._start_background()
        return self.service.hub.server_join(client_id, room)

    def leave(self, client_id: str, room: str) -> int:
        """Take every addressable connection of `client_id`, on every node, out of `room`:
        each gets a `left` frame (`code` "forbidden"), the room `presence` leave once its
        last connection has gone. Returns how many were in it. ValueError for a bad name."""
        _check_name(client_id, "client id", 256)
        _check_name(room, "room", protocol.MAX_ROOM_CHARS)
        self._start_background()
        return self.service.hub.server_leave(client_id, room)

    def disconnect(self, client_id: str, code: int = CloseCode.POLICY_VIOLATION, reason: str = "") -> int:
        """Close every connection of `client_id` (any route), on every node: revoking access."""
        return self.service.hub.disconnect_client(client_id, code, reason)

    def test_client(self, path: str = "/ws/chat", **kwargs: Any) -> WebSocketTestClient:
        """A connected in-process client of this app's route at `path`, for tests
        (`wsapp.testing.connect`: token, client_id, claims, headers, subprotocols)."""
        from .testing import connect

        return connect(self, path, **kwargs)

    # ---- the handshake (in the route's view) ------------------------------------------

    def handshake(
        self, handler: Callable[..., Any], route: Route, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Response:
        """Check, reserve, write the 101, start the session; or answer the refusal as JSON."""
        try:
            self.upgrade(handler, route, args, kwargs, request)
        except takeover.UnsupportedServer:  # never a 101 and a dead socket: say what to run instead
            name = takeover.server_name(request.environ)
            current_app.logger.error(takeover.UNSUPPORTED_SERVER.format(server=name, app=current_app.import_name))
            return http_error_response(HandshakeRejected("unsupported_server"))
        except WsappError as err:
            return self.refused(err)
        return takeover.after_upgrade()

    def upgrade(
        self,
        handler: Callable[..., Any],
        route: Route,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        req: HandshakeRequest,
        via: str = "flask",
    ) -> None:
        """The one upgrade of every handshake path (`wsapp.handshake.upgrade.Upgrader`)."""
        self.upgrader.upgrade(handler, route, args, kwargs, req, via=via)

    def refused(self, err: WsappError) -> Response:
        """The answer to a refusal in Flask's view: a log line, the metric, the JSON."""
        return self.upgrader.refused(err, request)


class _StartingUpgrader(Upgrader):
    """The app's upgrader: a handshake on any path starts the app's background tasks first."""

    def __init__(self, service: Service, run_session: Any, start: Callable[[], None]) -> None:
        super().__init__(service, run_session)
        self._start_app = start

    def upgrade(self, *args: Any, **kwargs: Any) -> None:
        self._start_app()
        super().upgrade(*args, **kwargs)


def _check_name(value: Any, what: str, most: int) -> None:
    """A client id or room name `WSApp.join`/`leave` take, or ValueError."""
    if not isinstance(value, str) or not 0 < len(value) <= most:
        raise ValueError(f"a {what} is a non-empty string of at most {most} characters")


def _make_backplane(settings: Settings, registry: Registry) -> Backplane:
    """Not started: `WSApp._start_background` does, once the worker serves."""
    if settings.redis_url:
        from .redis.backplane import RedisBackplane

        backplane: Backplane = RedisBackplane(registry, settings)
    else:
        backplane = InProcessBackplane(registry, make_history(settings))
    return backplane
