"""The app factory: settings, service objects, routes, hooks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, Response, request, send_from_directory
from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

from . import api, demo, demo_secret, heartbeat, logsafe, metrics, ws_routes
from .backplane import Backplane, InProcessBackplane
from .errors import HTTP_ERRORS, ApiError, HandshakeRejected, WsappError, http_error_response
from .hub import Hub
from .proxy import client_address
from .registry import Registry
from .service import Service
from .settings import Settings

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("wsapp")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: settings, service objects, routes, hooks. `None` reads the environment."""
    settings = Settings.from_env() if settings is None else settings
    app = Flask(
        __name__,
        static_folder=str(ROOT / "static"),
        static_url_path="/static",
        instance_path=demo_secret.instance_folder(settings),
    )
    _configure_logging(settings)
    if settings.demo_mode:  # raises SettingsError if the secret's folder is not private
        secret = demo.load_or_create_secret(app.instance_path)
        settings = settings.replace(jwt_secret=secret, generated_secret=True)
        log.warning(
            "DEMO MODE (WSAPP_DEMO=1): tokens are signed with a generated secret kept in %s, "
            "anyone may mint one at POST /api/demo/token, and only loopback Host values are "
            "served. Set WSAPP_JWT_SECRET for production.",
            os.path.join(app.instance_path, demo.SECRET_FILE),
        )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_message_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    registry = Registry(settings.max_connections, settings.max_connections_per_client)
    backplane = _make_backplane(settings, registry)
    service = Service(settings, registry, backplane, Hub(registry, backplane))
    app.extensions["wsapp"] = service

    heartbeat.start(registry, settings)
    _register_error_handlers(app, settings)
    if settings.generated_secret:
        demo.guard_host(app)  # first of the before-request hooks
    ws_routes.init_app(app, service)
    api.init_app(app, service)
    demo.init_app(app, service)

    @app.get("/")
    def index() -> Response:
        return send_from_directory(str(ROOT / "static"), "index.html")

    return app


def _make_backplane(settings: Settings, registry: Registry) -> Backplane:
    if settings.redis_url:
        from .redis_backplane import RedisBackplane

        backplane: Backplane = RedisBackplane(registry, settings)
    else:
        backplane = InProcessBackplane(registry)
    backplane.start()
    return backplane


def _configure_logging(settings: Settings) -> None:
    """The `wsapp` logger (its children `wsapp.*` propagate to it): one handler, whose
    `SafeLogFilter` escapes client-supplied text and redacts tokens in every record."""
    # no log line shows a thread name, and finding one makes gevent build a dummy
    # Thread object for every greenlet that logs (measurable on the handshake path)
    logging.logThreads = False
    logger = logging.getLogger("wsapp")
    logger.setLevel(settings.log_level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logsafe.install(logger)


def _log_refusal(err: HandshakeRejected, settings: Settings) -> None:
    """One line per refused handshake: its status, code, reason and the client's address.

    The path never carries the query string (where `?token=` lives); every value is
    escaped and any token redacted by the handler's `SafeLogFilter`."""
    addr = client_address(request.remote_addr or "", request.headers.get("X-Forwarded-For"), settings.trusted_proxies)
    log.info(
        "refused %s %s status=%d error=%s addr=%s reason=%s",
        request.method,
        request.path,
        err.status,
        err.code,
        addr,
        err.message,
    )


_HTTP_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _register_error_handlers(app: Flask, settings: Settings) -> None:
    @app.errorhandler(WsappError)
    def wsapp_error(err: WsappError) -> Response:
        if isinstance(err, HandshakeRejected):
            metrics.HANDSHAKES_REFUSED.labels(err.code).inc()
            _log_refusal(err, settings)
        return http_error_response(err)

    @app.errorhandler(WebsocketMismatch)
    def websocket_only(_err: WebsocketMismatch) -> Response:
        return wsapp_error(HandshakeRejected("not_websocket"))

    @app.errorhandler(HTTPException)
    def http_exception(err: HTTPException) -> Response:
        if err.code == 405 and request.path in app.extensions["wsapp.sock"].paths:
            return wsapp_error(
                HandshakeRejected("not_websocket", f"a WebSocket handshake is a GET, not {request.method}")
            )
        code = _HTTP_STATUS_CODES.get(err.code or 500, "internal_error")
        status = err.code or 500
        message = HTTP_ERRORS[code][1] if code != "bad_request" else (err.description or HTTP_ERRORS[code][1])
        return http_error_response(ApiError(code, message, status=status))

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        log.exception("unhandled error")
        return http_error_response(ApiError("internal_error"))
