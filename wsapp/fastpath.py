"""WebSocket handshakes without a Flask request: the hot path of a reconnect storm.

A handshake through Flask pushes an app and a request context, builds a `Request`,
routes the path, runs the dispatch machinery and, for every header it asks for that
is absent (Origin, X-Forwarded-For, Sec-WebSocket-Protocol...), raises and catches a
`KeyError`; that was about a fifth of a worker's time per handshake (issue 14).
`FastHandshakes` wraps the app's `wsgi_app` and, for a request that asks for an
upgrade on the exact path of a wsapp route, runs `WSApp.upgrade` on the WSGI environ
directly: the same checks in the same order (`wsapp.handshake.check_handshake`, Host,
Origin, token, draining, admission), the same 101, the same session.

It is taken only when nothing of the app's could tell the difference, else the request
goes through Flask as before:

- the route is a static path (no converters, no defaults, no host or subdomain rule)
  on the app's own `url_map` (no host matching);
- no request hook applies to it: `before_request`, `url_value_preprocessor`,
  `after_request`, `teardown_request` of the app or of the route's blueprints, and no
  receiver of Flask's request or app-context signals;
- the app's `wsgi_app` was Flask's own when `WSApp` was set up (a middleware wrapped
  in before would be skipped; one wrapped in afterwards runs first, as it should);
- the server hands over a gevent socket (gunicorn's gevent worker, a test client).

A refusal is never answered here: any `WsappError` (or a query or cookie header that
does not parse) sends the request through Flask, whose view runs the checks again and
answers, logs and counts the refusal exactly as before. So only accepted handshakes
take the shortcut, and an attacker's bad handshake costs at most one extra check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, signals
from werkzeug.datastructures import MultiDict
from werkzeug.http import parse_cookie

from .errors import WsappError
from .server import answer_upgraded, cooperative_socket

if TYPE_CHECKING:
    from .extension import WSApp
    from .session import Route

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# signals whose receivers would notice a request that Flask never saw
_SIGNALS = (
    signals.request_started,
    signals.request_finished,
    signals.request_tearing_down,
    signals.got_request_exception,
    signals.appcontext_pushed,
    signals.appcontext_popped,
    signals.appcontext_tearing_down,
)


class HandshakeRequest(Protocol):
    """What `WSApp.upgrade` reads of a request: Flask's `request` has it all."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Any: ...  # a case-insensitive Mapping[str, str]
    @property
    def args(self) -> Any: ...  # Mapping[str, str], first value per name
    @property
    def cookies(self) -> Any: ...
    @property
    def environ(self) -> dict[str, Any]: ...
    @property
    def remote_addr(self) -> str | None: ...


class Fallback(Exception):
    """Something the shortcut does not handle: let Flask take the request."""


_header_keys: dict[str, str] = {}


def environ_key(name: str) -> str:
    """The WSGI environ key of header `name` (any case), as Werkzeug reads it."""
    key = _header_keys.get(name)
    if key is None:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if len(_header_keys) < 256:  # names come from our code, never from the request
            _header_keys[name] = key
    return key


class EnvironHeaders(Mapping[str, str]):
    """Request headers read straight from the environ: `get` is one dict lookup (Werkzeug's
    raises and catches a KeyError for a header that is absent)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        return str(self._environ[environ_key(name)])

    def get(self, name: str, default: Any = None) -> Any:
        return self._environ.get(environ_key(name), default)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].replace("_", "-").title()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.replace("_", "-").title()

    def __len__(self) -> int:
        return sum(1 for _ in self)


class EnvironRequest:
    """`HandshakeRequest` over a WSGI environ; query and cookies parsed only if asked for,
    the way Werkzeug parses them."""

    __slots__ = ("_args", "_cookies", "environ", "headers", "method")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        self.headers = EnvironHeaders(environ)
        self._args: MultiDict[str, str] | None = None
        self._cookies: Mapping[str, str] | None = None

    @property
    def remote_addr(self) -> str | None:
        return self.environ.get("REMOTE_ADDR")

    @property
    def args(self) -> MultiDict[str, str]:
        if self._args is None:
            from urllib.parse import parse_qsl

            qs = str(self.environ.get("QUERY_STRING", ""))
            if not qs:
                self._args = MultiDict()
                return self._args
            try:  # as werkzeug.sansio.request.Request.args
                pairs = parse_qsl(qs.encode("latin1").decode(), keep_blank_values=True, errors="werkzeug.url_quote")
            except Exception:  # noqa: BLE001 - Flask's path decides what such a query is worth
                raise Fallback from None
            self._args = MultiDict(pairs)
        return self._args

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            raw = self.environ.get("HTTP_COOKIE")
            try:
                self._cookies = parse_cookie(raw) if raw else {}
            except Exception:  # noqa: BLE001
                raise Fallback from None
        return self._cookies


class _Target:
    __slots__ = ("args", "endpoint", "handler", "route", "scopes")

    def __init__(self, endpoint: str, handler: Callable[..., Any], route: Route) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.route = route
        # the hook scopes Flask would run for this endpoint: the app's, then each blueprint's
        parts = endpoint.split(".")[:-1]
        self.scopes: tuple[str | None, ...] = (None, *(".".join(parts[: i + 1]) for i in range(len(parts))))


class FastHandshakes:
    """The app's `wsgi_app`, with accepted WebSocket handshakes on wsapp's static routes
    served without a Flask request (see the module doc). One per app; no state but the
    route table, rebuilt when the app's view functions change."""

    def __init__(self, wsgi_app: WSGIApp, app: Flask, ext: WSApp) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.ext = ext
        self._targets: dict[str, _Target] = {}
        self._views = -1  # len(app.view_functions) the table was built for

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.upgraded(environ):
            return answer_upgraded(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def upgraded(self, environ: dict[str, Any]) -> bool:
        """Upgrade the request of `environ` here if it may skip Flask and is accepted;
        False: nothing was reserved or written, the request is Flask's."""
        if str(environ.get("HTTP_UPGRADE", "")).lower() != "websocket":
            return False
        target = self.target(str(environ.get("PATH_INFO", "")))
        if target is None or not self.unobserved(target) or cooperative_socket(environ) is None:
            return False
        try:
            self.ext.upgrade(target.handler, target.route, (), {}, EnvironRequest(environ))
        except (WsappError, Fallback):
            return False  # Flask's view runs the checks again and answers the refusal
        return True

    def target(self, path: str) -> _Target | None:
        if len(self.app.view_functions) != self._views:
            self._targets = self._build()
            self._views = len(self.app.view_functions)
        return self._targets.get(path)

    def _build(self) -> dict[str, _Target]:
        url_map = self.app.url_map
        if url_map.host_matching or self.app.subdomain_matching:
            return {}
        targets: dict[str, _Target] = {}
        for rule in url_map.iter_rules():
            view = self.app.view_functions.get(rule.endpoint)
            wsapp_target = getattr(view, "wsapp_target", None)
            if (
                not rule.websocket
                or wsapp_target is None
                or rule.arguments
                or rule.defaults
                or rule.host
                or rule.subdomain
                or rule.rule in targets
            ):
                continue
            handler, route = wsapp_target
            targets[rule.rule] = _Target(rule.endpoint, handler, route)
        return targets

    def unobserved(self, target: _Target) -> bool:
        """No hook or signal receiver of the app's would see this request."""
        app = self.app
        for hooks in (
            app.before_request_funcs,
            app.url_value_preprocessors,
            app.after_request_funcs,
            app.teardown_request_funcs,
        ):
            for scope in target.scopes:
                if hooks.get(scope):
                    return False
        if app.teardown_appcontext_funcs:
            return False
        return not any(sig.receivers for sig in _SIGNALS)


def install(app: Flask, ext: WSApp) -> None:
    """Wrap the app's `wsgi_app`, unless it is not Flask's own any more (a middleware of
    the app's wrapped in before `WSApp` would be skipped by the shortcut)."""
    if "wsgi_app" in vars(app) or type(app).wsgi_app is not Flask.wsgi_app:
        return
    app.wsgi_app = FastHandshakes(app.wsgi_app, app, ext)  # type: ignore[method-assign]
