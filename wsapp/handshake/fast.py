"""WebSocket handshakes without a Flask request: the hot path of a reconnect storm.

A handshake through Flask pushes an app and a request context, builds a `Request`,
routes the path, runs the dispatch machinery and, for every header it asks for that
is absent (Origin, X-Forwarded-For, Sec-WebSocket-Protocol...), raises and catches a
`KeyError`; that was about a fifth of a worker's time per handshake (docs/performance.md).
`FastHandshakes` wraps the app's `wsgi_app` and, for an upgrade that `Shortcut` finds
indistinguishable from Flask's path (`wsapp.handshake.shortcut`), runs the one
`Upgrader.upgrade` on the WSGI environ directly: the same checks in the same order, the
same 101, the same session. A refusal is answered here too, exactly as Flask's view
answers it (`Upgrader.refused`: the log line, the metric, the JSON body; Flask would add
nothing, no hook being there to see it; but a request with a cookie goes to Flask, whose
answer may refresh a permanent session's cookie), so a refused handshake is checked once on this
path (twice if the early path looked at it first). A query or cookie header that does
not parse, or a server that hands over no gevent socket, goes to Flask.

Installed by `WSApp.init_app` unless `WSAPP_FAST_HANDSHAKES=off`, and only when the
app's `wsgi_app` is Flask's own then (a middleware wrapped in before would be skipped;
one wrapped in afterwards runs first, as it should).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from ..errors import WsappError
from .request import EnvironRequest, Fallback
from .shortcut import Shortcut
from .takeover import answer_upgraded, cooperative_socket

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastHandshakes:
    """The app's `wsgi_app`, with the handshakes `shortcut` allows served without a Flask
    request. No state of its own."""

    def __init__(self, wsgi_app: WSGIApp, shortcut: Shortcut) -> None:
        self.wsgi_app = wsgi_app
        self.shortcut = shortcut

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = self.shortcut.target(environ)
        if target is None or cooperative_socket(environ) is None:
            return self.wsgi_app(environ, start_response)
        req = EnvironRequest(environ)
        try:
            self.shortcut.upgrade(target, req, "fast")
        except Fallback:
            return self.wsgi_app(environ, start_response)
        except WsappError as err:
            if "HTTP_COOKIE" in environ:  # Flask's answer may refresh a session cookie: Flask's to give
                return self.wsgi_app(environ, start_response)
            response: Iterable[bytes] = self.shortcut.upgrader.refused(err, req)(environ, start_response)
            return response
        return answer_upgraded(environ, start_response)


def install(app: Flask, shortcut: Shortcut) -> None:
    """Wrap the app's `wsgi_app`, unless it is not Flask's own any more (a middleware of
    the app's wrapped in before `WSApp` would be skipped by the shortcut)."""
    if "wsgi_app" in vars(app) or type(app).wsgi_app is not Flask.wsgi_app:
        return
    app.wsgi_app = FastHandshakes(app.wsgi_app, shortcut)  # type: ignore[method-assign]
