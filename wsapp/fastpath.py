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

from flask import Flask, Request, signals
from flask.ctx import _AppCtxGlobals
from flask.sessions import SecureCookieSessionInterface
from werkzeug.datastructures import MultiDict
from werkzeug.http import parse_cookie

from . import transport
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
    __slots__ = ("endpoint", "handler", "route", "scopes", "view")

    def __init__(self, endpoint: str, view: Callable[..., Any], handler: Callable[..., Any], route: Route) -> None:
        self.endpoint = endpoint
        self.view = view  # the very view function wsapp registered: checked by identity per handshake
        self.handler = handler
        self.route = route
        # the hook scopes Flask would run for this endpoint: the app's, then each blueprint's
        parts = endpoint.split(".")[:-1]
        self.scopes: tuple[str | None, ...] = (None, *(".".join(parts[: i + 1]) for i in range(len(parts))))


# What Flask runs for a request, from `__call__` to the view and back (`wsgi_app` is
# checked apart: it is `FastHandshakes` itself). A subclass or an instance that overrides
# any of them, or a monkeypatch of Flask's own, could refuse or observe a request: such
# an app's handshakes all go through Flask.
_REQUEST_PATH = (
    "__call__",
    "request_context",
    "app_context",
    "create_url_adapter",
    "raise_routing_exception",
    "full_dispatch_request",
    "preprocess_request",
    "dispatch_request",
    "make_response",
    "process_response",
    "finalize_request",
    "handle_user_exception",
    "handle_http_exception",
    "handle_exception",
    "log_exception",
    "should_ignore_error",
    "do_teardown_request",
    "do_teardown_appcontext",
    "ensure_sync",
    "make_default_options_response",
)
_FLASK_OWN = {name: getattr(Flask, name) for name in _REQUEST_PATH}
_FLASK_WSGI_APP = Flask.wsgi_app
_OWN_NAMES = frozenset(_REQUEST_PATH) | {"request_class", "app_ctx_globals_class"}


def flask_as_shipped(app: Flask) -> bool:
    """Would Flask build, route and dispatch a request of `app` exactly as Flask 3 does
    out of the box? Only then can skipping it be unnoticeable. Cheap enough to ask per
    handshake (a subclass, an instance attribute or a setting may appear at run time)."""
    cls = type(app)
    for name, own in _FLASK_OWN.items():
        if getattr(cls, name) is not own:
            return False
    if cls.wsgi_app is not _FLASK_WSGI_APP or not _OWN_NAMES.isdisjoint(vars(app)):
        return False
    if app.request_class is not Request or Request.trusted_hosts is not None:
        return False
    if app.app_ctx_globals_class is not _AppCtxGlobals:
        return False
    if type(app.session_interface) is not SecureCookieSessionInterface:  # opened on every request
        return False
    # Flask refuses (400) a Host outside TRUSTED_HOSTS; with host or subdomain matching
    # the Host takes part in routing
    return app.config.get("TRUSTED_HOSTS") is None and not (app.url_map.host_matching or app.subdomain_matching)


class FastHandshakes:
    """The app's `wsgi_app`, with accepted WebSocket handshakes on wsapp's static routes
    served without a Flask request (see the module doc). One per app; no state but the
    route table, rebuilt when the app's view functions or rules change in number; every
    handshake checks again that the route's view is still the one wsapp registered."""

    def __init__(self, wsgi_app: WSGIApp, app: Flask, ext: WSApp) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.ext = ext
        self._targets: dict[str, _Target] = {}
        self._built_for: tuple[int, int] = (-1, -1)  # (view functions, rules) the table was built for

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.upgraded(environ):
            return answer_upgraded(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def upgraded(self, environ: dict[str, Any]) -> bool:
        """Upgrade the request of `environ` here if it may skip Flask and is accepted;
        False: nothing was reserved or written, the request is Flask's."""
        if str(environ.get("HTTP_UPGRADE", "")).lower() != "websocket":
            return False
        target = self.eligible(str(environ.get("PATH_INFO", "")))
        if target is None or cooperative_socket(environ) is None:
            return False
        try:
            self.ext.upgrade(target.handler, target.route, (), {}, EnvironRequest(environ), via="fast")
        except (WsappError, Fallback):
            return False  # Flask's view runs the checks again and answers the refusal
        return True

    def eligible(self, path: str) -> _Target | None:
        """The wsapp route at `path` if a handshake on it may skip Flask: the app is Flask
        as shipped, the path is a static rule whose view is the very one wsapp
        registered, and no hook or signal receiver would see the request. Else None."""
        app = self.app
        if not flask_as_shipped(app):
            return None
        shape = (len(app.view_functions), len(app.url_map._rules))
        if shape != self._built_for:
            self._targets = self._build()
            self._built_for = shape
        target = self._targets.get(path)
        if target is None or app.view_functions.get(target.endpoint) is not target.view:
            return None  # replaced or wrapped since: the app's own view must run
        return target if self.unobserved(target) else None

    def _build(self) -> dict[str, _Target]:
        """Static WebSocket rules whose view is wsapp's own, each confirmed by Werkzeug's
        own matcher to route a WebSocket GET of exactly that path to it."""
        url_map = self.app.url_map
        adapter = url_map.bind("localhost", subdomain=url_map.default_subdomain or "", url_scheme="ws")
        targets: dict[str, _Target] = {}
        for rule in url_map.iter_rules():
            view = self.app.view_functions.get(rule.endpoint)
            registered = transport.registered_target(view)
            if not rule.websocket or registered is None or rule.arguments or rule.defaults or rule.host:
                continue
            if rule.subdomain or rule.rule in targets:
                continue
            try:
                matched = adapter.match(rule.rule, method="GET", websocket=True)
            except Exception:  # noqa: BLE001 - a redirect, a 404/405: Flask's to answer
                continue
            if matched != (rule.endpoint, {}):
                continue
            assert view is not None
            handler, route = registered
            targets[rule.rule] = _Target(rule.endpoint, view, handler, route)
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
    if ext.settings.fast_handshakes == "off":
        return
    if "wsgi_app" in vars(app) or type(app).wsgi_app is not Flask.wsgi_app:
        return
    app.wsgi_app = FastHandshakes(app.wsgi_app, app, ext)  # type: ignore[method-assign]
