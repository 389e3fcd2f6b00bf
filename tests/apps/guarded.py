"""Flask apps that guard their WebSocket views in the ways real apps do, for the
differential handshake test (tests/test_handshake_paths.py): `GUARD` picks one.

Each guard refuses a request without `X-Staff: yes`; the guarded apps differ only in
where the guard sits (a hook, a wrapped or replaced view, a Flask subclass, an instance
attribute, a setting, a blueprint hook, a middleware). Served by gunicorn with wsapp's
hooks: `gunicorn -c gunicorn.conf.py --pythonpath tests/apps guarded:app`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from flask import Blueprint, Flask, abort, jsonify, request

from wsapp import WSApp
from wsapp.transport import is_websocket_view

GUARD = os.environ.get("GUARD", "plain")


OPEN_PATHS = ("/paths", "/lockdown")  # the test's own controls: never guarded


def staff() -> bool:
    return request.path in OPEN_PATHS or request.headers.get("X-Staff") == "yes"


def refuse_unless_staff() -> None:
    if not staff():
        abort(403, "staff only")


class PreprocessGuarded(Flask):
    def preprocess_request(self) -> Any:
        refuse_unless_staff()
        return super().preprocess_request()


class DispatchGuarded(Flask):
    def full_dispatch_request(self) -> Any:
        if not staff():
            return self.make_response((jsonify(error="staff_only"), 403))
        return super().full_dispatch_request()


class StaffOnlyMiddleware:
    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") not in OPEN_PATHS and environ.get("HTTP_X_STAFF") != "yes":
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"staff only"]
        return self.wsgi_app(environ, start_response)


app = {"subclass": PreprocessGuarded, "subclass_dispatch": DispatchGuarded}.get(GUARD, Flask)(__name__)
if GUARD == "trusted_hosts":
    app.config["TRUSTED_HOSTS"] = ["127.0.0.1"]
if GUARD == "middleware_before":
    app.wsgi_app = StaffOnlyMiddleware(app.wsgi_app)  # type: ignore[method-assign]
if GUARD == "before_request":
    app.before_request(refuse_unless_staff)
if GUARD == "instance_override":
    flask_preprocess = app.preprocess_request

    def preprocess_request() -> Any:
        refuse_unless_staff()
        return flask_preprocess()

    app.preprocess_request = preprocess_request  # type: ignore[method-assign]

ws = WSApp(app)

bp = Blueprint("staff", __name__)
if GUARD == "blueprint_hook":
    bp.before_request(refuse_unless_staff)


@ws.route("/ws/echo", bp=bp)
def echo(conn: Any) -> None:
    for message in conn:
        conn.send(message)


app.register_blueprint(bp)

if GUARD == "wrapped":

    def staff_only(view: Any) -> Any:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            refuse_unless_staff()
            return view(*args, **kwargs)

        return guarded

    for endpoint in list(app.view_functions):
        app.view_functions[endpoint] = staff_only(app.view_functions[endpoint])


@app.post("/lockdown")
def lockdown() -> Any:
    """The `replaced` app's switch: from now on its WebSocket views answer 423 (without
    `functools.wraps`, so the new view shares nothing with wsapp's)."""

    def locked(*args: Any, **kwargs: Any) -> Any:
        if staff():
            return app.config["wsapp.views"][request.endpoint](*args, **kwargs)
        return jsonify(error="locked"), 423

    views = {ep: view for ep, view in app.view_functions.items() if is_websocket_view(view)}
    app.config["wsapp.views"] = views
    for endpoint in views:
        app.view_functions[endpoint] = locked
    return jsonify(locked=True)


@app.get("/paths")
def paths() -> Any:
    """How many accepted handshakes each path served (wsapp_upgrades, this worker)."""
    return jsonify({path: child._value.get() for path, child in ws.service.metrics.upgrades.items()})


if GUARD == "middleware_after":
    app.wsgi_app = StaffOnlyMiddleware(app.wsgi_app)  # type: ignore[method-assign]
