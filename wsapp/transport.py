"""flask-sock's extension surface over wsapp's own WebSocket transport.

flask-sock's `Sock.route` upgrades inside the view with simple-websocket, which picks
subprotocols from a fixed list, always accepts compression, lets any greenlet write to
the socket with a plain `send` (a partial write loses bytes; two writers interleave)
and buffers inbound messages without bound. We keep the surface (`Sock()`,
`sock.init_app(app)`, `@sock.route(path)`) and put
`wsapp.connection.WebSocket` behind it: the handshake's checks have already run in the
before-upgrade hook, which leaves what to answer in `g.wsapp_accepted`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import wraps
from typing import Any

import flask_sock
import gevent
from flask import Response, current_app, g, request

from .handshake import Accepted, switching_protocols


class _AfterUpgrade(Response):
    """The WSGI answer once the socket has been taken over: tell the server it is done."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration()  # gunicorn's signal that the socket was handled
        return super().__call__(environ, start_response)


def raw_socket(environ: dict[str, Any]) -> socket.socket:
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        raise RuntimeError("wsapp needs gunicorn (gevent worker) to serve WebSockets")
    return sock  # type: ignore[no-any-return]


def upgrade(accepted: Accepted) -> socket.socket:
    """Write the 101 and hand back the socket, now speaking WebSocket.

    The socket is taken from the server: its file descriptor is detached from the
    server's socket object (which gunicorn closes, now harmlessly, when the WSGI
    request ends right after the upgrade) and wrapped anew, to live on in a session
    greenlet of its own (see `Sock.route`)."""
    server_sock = raw_socket(request.environ)
    sock = type(server_sock)(fileno=server_sock.detach())
    try:
        sock.settimeout(None)
        sock.sendall(switching_protocols(accepted))
    except OSError:
        sock.close()
        raise
    return sock


class Sock(flask_sock.Sock):  # type: ignore[misc]  # flask-sock ships no type hints
    def __init__(self, app: Any = None) -> None:
        self.endpoints: set[str] = set()  # the before-upgrade hook guards these
        self.paths: set[str] = set()
        super().__init__(app)

    def route(self, path: str, bp: Any = None, **kwargs: Any) -> Callable[..., Any]:
        """Register `f(sock, accepted, *args)` as a WebSocket route at `path`.

        After the 101, `f` runs in a fresh greenlet and the WSGI request returns at
        once. A connection then holds no gunicorn greenlet, no Flask request context
        and only a shallow stack (what an idle connection costs is mostly that), and
        gunicorn's `worker_connections` caps HTTP requests in flight, not WebSockets
        (`WSAPP_MAX_CONNECTIONS` does that). `g.wsapp_upgraded` tells the request's
        teardown that the session now owns what the handshake reserved.

        The rule is a `websocket=True` one, as in flask-sock: a request with no upgrade
        fails routing with `WebsocketMismatch` and another method with
        `MethodNotAllowed`; the app answers both on these paths with `not_websocket`."""

        def decorator(f: Callable[..., None]) -> Callable[..., Response]:
            @wraps(f)
            def websocket_route(*args: Any, **kw: Any) -> Response:
                accepted: Accepted = g.wsapp_accepted
                sock = upgrade(accepted)
                g.wsapp_upgraded = True
                g.wsapp_session = gevent.spawn(f, sock, accepted, *args, **kw)  # the slot is released when it ends
                return _AfterUpgrade()

            kwargs["websocket"] = True
            target = bp or self.app or current_app
            target.route(path, **kwargs)(websocket_route)
            self.endpoints.add(f"{bp.name}.{f.__name__}" if bp else f.__name__)
            self.paths.add(path)
            return websocket_route

        return decorator
