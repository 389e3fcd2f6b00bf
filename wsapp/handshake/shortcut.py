"""When a handshake may skip Flask's request: only where Flask's path could not be told
apart. Both shortcuts (`wsapp.handshake.fast`, `wsapp.handshake.early`) ask `Shortcut`
the same questions, per handshake:

- the app is Flask as shipped (`flask_as_shipped`): no subclass or instance attribute
  overrides a method Flask runs for a request, Flask's own `Request`, app-context
  globals and session interface, no `TRUSTED_HOSTS` (Flask refuses an untrusted Host
  with 400), no host or subdomain matching;
- the path is a static WebSocket rule on the app's own `url_map` (no converters, no
  defaults, no host or subdomain rule), confirmed by Werkzeug's own matcher, whose
  registered view is *the very object* a wsapp `Sock` registered (identity, checked
  on every handshake: a `functools.wraps` wrapper or a replaced view is not it);
- no request hook applies to it (`before_request`, `url_value_preprocessor`,
  `after_request`, `teardown_request` of the app or of the route's blueprints, any
  `teardown_appcontext`), and no receiver of Flask's request or app-context signals.

Anything else, or anything unknown, is Flask's: a rule missing here costs speed, never
a guard. `tests/test_handshake_paths.py` runs guarded apps through every path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, Request, signals
from flask.ctx import _AppCtxGlobals
from flask.sessions import SecureCookieSessionInterface

from .. import transport
from .request import EnvironRequest
from .upgrade import Upgrader

if TYPE_CHECKING:
    from ..session import Route

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


class Target:
    """A wsapp route a handshake may take without Flask."""

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


class Shortcut:
    """One per app: the table of wsapp's static WebSocket routes, rebuilt when the app's
    view functions or rules change in number, and the per-handshake questions above."""

    def __init__(self, app: Flask, upgrader: Upgrader) -> None:
        self.app = app
        self.upgrader = upgrader
        self._targets: dict[str, Target] = {}
        self._built_for: tuple[int, int] = (-1, -1)  # (view functions, rules) the table was built for

    def target(self, environ: dict[str, Any]) -> Target | None:
        """The route a WebSocket upgrade in `environ` may take without Flask, or None."""
        if str(environ.get("HTTP_UPGRADE", "")).lower() != "websocket":
            return None
        return self.eligible(str(environ.get("PATH_INFO", "")))

    def upgrade(self, target: Target, req: EnvironRequest, via: str, peeked: int = 0) -> None:
        """`Upgrader.upgrade` for `target`; raises a refusal or `request.Fallback`."""
        self.upgrader.upgrade(target.handler, target.route, (), {}, req, via=via, peeked=peeked)

    def eligible(self, path: str) -> Target | None:
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

    def _build(self) -> dict[str, Target]:
        """Static WebSocket rules whose view is wsapp's own, each confirmed by Werkzeug's
        own matcher to route a WebSocket GET of exactly that path to it."""
        url_map = self.app.url_map
        adapter = url_map.bind("localhost", subdomain=url_map.default_subdomain or "", url_scheme="ws")
        targets: dict[str, Target] = {}
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
            targets[rule.rule] = Target(rule.endpoint, view, handler, route)
        return targets

    def unobserved(self, target: Target) -> bool:
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
