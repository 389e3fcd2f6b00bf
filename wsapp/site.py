"""The service's HTTP side as one blueprint an app may register or leave out, and the
shipped service's own process set-up.

`blueprint(ws, static_folder=...)`: the HTTP API (`/api/*`), `/healthz`, `/readyz`,
`/metrics`, `/wsapp.js` (the JavaScript client), the `token` command, in demo mode
`/api/demo/token`, and, given a folder, the demo page (`/` and `/static/*`; the page
lives in the checkout's `static/`, not in the wheel, so the caller names it). Its
errors are JSON, on its own routes only.

`init_service(app, ws)` is for the shipped service (`app.py`), never called by the
extension: the `wsapp` logger's handler (escaping and token redaction), JSON answers
for every route of the app (404, 405, 500), the demo-mode Host guard on every route,
and the body size limit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, request, send_from_directory
from werkzeug.exceptions import HTTPException

from . import logsafe
from .errors import HTTP_ERRORS, ApiError, HandshakeRejected, WsappError, http_error_response
from .http import api, demo
from .settings import Settings
from .transport import is_websocket_view

if TYPE_CHECKING:
    from .extension import WSApp

log = logging.getLogger("wsapp")
_CLIENT_JS = Path(__file__).parent / "static"
_HTTP_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def blueprint(ws: WSApp, static_folder: str | Path | None = None, name: str = "wsapp") -> Blueprint:
    """The API, health, metrics and (with `static_folder`) the demo page; after `init_app`."""
    folder = str(static_folder) if static_folder is not None else None
    bp = Blueprint(name, __name__, cli_group=None, static_folder=folder, static_url_path="/static" if folder else None)
    api.add_routes(bp, ws.service)
    demo.add_routes(bp, ws.service)

    @bp.get("/wsapp.js")
    def wsapp_js() -> Response:
        """The JavaScript client (wsapp/static/wsapp.js, in the wheel): ETag, revalidated."""
        return send_from_directory(_CLIENT_JS, "wsapp.js", mimetype="text/javascript", max_age=0)

    if folder is not None:

        @bp.get("/")
        def index() -> Response:
            return send_from_directory(folder, "index.html")

    for exc_class, handler in _handlers():
        bp.register_error_handler(exc_class, handler)
    return bp


def _handlers() -> list[tuple[type[Exception], Any]]:
    def wsapp_error(err: WsappError) -> Response:
        return http_error_response(err)

    def http_exception(err: HTTPException) -> Response:
        code = _HTTP_STATUS_CODES.get(err.code or 500, "internal_error")
        status = err.code or 500
        message = HTTP_ERRORS[code][1] if code != "bad_request" else (err.description or HTTP_ERRORS[code][1])
        return http_error_response(ApiError(code, message, status=status))

    def unexpected(err: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return http_error_response(ApiError("internal_error"))

    return [(WsappError, wsapp_error), (HTTPException, http_exception), (Exception, unexpected)]


def init_service(app: Flask, ws: WSApp) -> None:
    """The shipped service's process set-up (see the module doc); not for apps of their own."""
    settings = ws.settings
    _configure_logging(settings.log_level)  # again: the level may come from the WSApp's settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.generated_secret:

        @app.before_request
        def loopback_only() -> None:
            """Every route (page, API, unknown paths); a handshake checks it itself, logged."""
            if not is_websocket_view(app.view_functions.get(request.endpoint or "")):
                demo.refuse_host()

    handlers = dict(_handlers())
    answer_http = handlers[HTTPException]

    def http_exception(err: HTTPException) -> Response:
        if err.code == 405 and request.path in ws.sock.routes:  # a POST asking for an upgrade
            message = f"a WebSocket handshake is a GET, not {request.method}"
            return ws.refused(HandshakeRejected("not_websocket", message))
        return answer_http(err)  # type: ignore[no-any-return]

    handlers[HTTPException] = http_exception
    for exc_class, handler in handlers.items():
        app.register_error_handler(exc_class, handler)


def configure_logging(app: Flask) -> None:
    """The service's log lines on stderr at `WSAPP_LOG_LEVEL` (before `WSApp(app)`, so that
    its own start-up lines, such as demo mode's warning, are shown). Raises `SettingsError`."""
    _configure_logging(Settings.from_config(app.config).log_level)


def _configure_logging(level: str) -> None:
    """The `wsapp` logger (its children `wsapp.*` propagate to it): one handler on stderr,
    whose `SafeLogFilter` escapes client-supplied text and redacts tokens in every record."""
    # no log line shows a thread name, and finding one makes gevent build a dummy
    # Thread object for every greenlet that logs (measurable on the handshake path)
    logging.logThreads = False
    logger = logging.getLogger("wsapp")
    logger.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logsafe.install(logger)
