"""Demo mode: a generated secret shared by every worker, a token route, the token command.

With no key configured the service makes a random secret once and keeps it in the
instance folder, created with O_EXCL so that workers starting together agree on one.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time

import click
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from . import auth
from .errors import ApiError
from .service import Service

log = logging.getLogger("wsapp")
SECRET_FILE = "demo-jwt-secret"
DEMO_TTL_S = 3600
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")


def load_or_create_secret(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            with open(path, encoding="ascii") as f:
                secret = f.read().strip()
            if secret:
                return secret
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; delete it to make a new demo secret") from None
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret)
    return secret


def init_app(app: Flask, service: Service) -> None:
    settings = service.settings

    @app.cli.command("token")
    @click.argument("client_id")
    @click.option("--admin", is_flag=True, help="Give the token the admin role.")
    @click.option("--ttl", default=3600, show_default=True, help="Lifetime in seconds.")
    def token_command(client_id: str, admin: bool, ttl: int) -> None:
        """Print a signed token for CLIENT_ID."""
        click.echo(auth.mint_token(current_app.extensions["wsapp"].settings, client_id, admin, ttl))

    if not (settings.generated_secret or settings.demo_tokens):
        return

    bp = Blueprint("demo", __name__)

    @bp.post("/api/demo/token")
    def demo_token() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError("bad_request", "the body must be a JSON object")
        client_id = body.get("client_id")
        if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
            raise ApiError("bad_request", "'client_id' must be 1-64 letters, digits or _.@:-")
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise ApiError("bad_request", "'admin' must be true or false")
        token = auth.mint_token(settings, client_id, admin, DEMO_TTL_S)
        return jsonify(token=token, client_id=client_id, admin=admin, expires_in=DEMO_TTL_S)

    app.register_blueprint(bp)
