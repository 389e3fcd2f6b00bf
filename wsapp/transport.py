"""flask-sock's extension surface over wsapp's own WebSocket transport.

flask-sock's `Sock.route` upgrades inside the view with simple-websocket, which picks
subprotocols from a fixed list, always accepts compression, lets any greenlet write to
the socket with a plain `send` (a partial write loses bytes; two writers interleave)
and buffers inbound messages without bound. We keep its surface and its handler shape:
`Sock(app)` or `Sock()` then `sock.init_app(app)`, `@sock.route(path)` (before
`init_app` too: the routes wait on the sock's blueprint, as in flask-sock), `bp=`, and
the handler `f(ws, **view_args)` where `ws` is a `wsapp.Connection` (`send`,
`receive(timeout=None)`, `close(code, reason)`, iteration). Behind it runs
`wsapp.connection.WebSocket`, and every handshake check of the app's `WSApp`
(`app.extensions["wsapp"]`), which must exist when a request comes.

Each route is two rules with one view: the WebSocket rule (`websocket=True`, as in
flask-sock) and a plain-HTTP one, so that a request that is not a handshake (no
Upgrade, a POST) reaches the view too and is answered 400 `not_websocket` as JSON,
without an error handler on the app. (A POST that asks for an upgrade fails routing
with 405; the shipped service's handlers answer it `not_websocket` too.)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import wraps
from typing import Any

import flask_sock
from flask import Blueprint, Response, current_app

from .session import Route

# the plain-HTTP rule's methods: the view answers them 400 not_websocket (Werkzeug allows
# a WebSocket rule GET only, so a POST that asks for an upgrade fails routing with 405)
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class Sock(flask_sock.Sock):  # type: ignore[misc]  # flask-sock ships no type hints
    bp: Blueprint | None

    def __init__(self, app: Any = None) -> None:
        self.routes: dict[str, Route] = {}  # path -> options, of every route of this sock
        super().__init__(app)

    def route(
        self, path: str, bp: Any = None, *, addressable: bool = False, resumable: bool = False, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register `f(conn, **view_args)` as a WebSocket route at `path`.

        After the 101, `f` runs in a greenlet of its own and the WSGI request returns at
        once: a connection holds no gunicorn greenlet and no Flask request context, and
        gunicorn's `worker_connections` caps HTTP requests in flight, not WebSockets
        (`WSAPP_MAX_CONNECTIONS` does that). `endpoint=` names the route (its metrics
        label and log name); the default is the function's name."""

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            endpoint = kwargs.pop("endpoint", None) or f.__name__
            options = Route(endpoint, addressable, resumable)

            @wraps(f)
            def websocket_view(*args: Any, **kw: Any) -> Response:
                ext = current_app.extensions.get("wsapp")
                if ext is None:
                    raise RuntimeError("a wsapp route needs the app's WSApp: WSApp(app) or ws.init_app(app)")
                return ext.handshake(f, options, args, kw)  # type: ignore[no-any-return]

            websocket_view.wsapp_route = True  # type: ignore[attr-defined]  # see `is_websocket_view`
            _registered[websocket_view] = (f, options)
            target = bp or self.app or self._blueprint()
            target.add_url_rule(path, endpoint, websocket_view, methods=["GET"], websocket=True, **kwargs)
            target.add_url_rule(path, endpoint, websocket_view, methods=HTTP_METHODS, **kwargs)
            self.routes[path] = options
            return f

        return decorator

    def _blueprint(self) -> Blueprint:
        """Where routes wait before `init_app` (flask-sock's pattern: no app context needed)."""
        bp: Blueprint | None = self.bp
        if bp is None:
            bp = self.bp = Blueprint(f"wsapp_sock_{id(self):x}", __name__)
        return bp


# the views this module made, each with its handler and route options: by identity, so a
# wrapper (`functools.wraps` copies attributes, not identity) or a replacement is not one of
# them, and `wsapp.fastpath` lets the app's own view run
_registered: weakref.WeakKeyDictionary[Callable[..., Any], tuple[Callable[..., Any], Route]] = (
    weakref.WeakKeyDictionary()
)


def registered_target(view: Any) -> tuple[Callable[..., Any], Route] | None:
    """`(handler, route)` if `view` is the very view function a wsapp `Sock` registered."""
    try:
        return _registered.get(view)
    except TypeError:  # not weakly referenceable: not one of ours
        return None


def is_websocket_view(view: Any) -> bool:
    """Is `view` (an app's view function) a WebSocket route of wsapp's?"""
    return bool(getattr(view, "wsapp_route", False))
