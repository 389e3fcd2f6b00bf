"""Demo mode: a generated secret shared by every worker, a token route, the token command.

Demo mode runs only when asked for (`WSAPP_DEMO=1` with no key configured; see
`Settings.demo_mode`). The service then makes a random secret once and keeps it in the
instance folder (see `demo_secret`).

Demo mode serves only loopback Host values (`localhost`, 127.0.0.0/8, `[::1]`, any
port): a DNS-rebinding page (`http://evil.example:8000` re-pointed at 127.0.0.1) reaches
a developer's demo server with its own name in the Host header, and would otherwise
mint itself an admin token. The token route checks the same wherever it is served.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import click
import jwt
from flask import Blueprint, Response, jsonify, request

from .. import auth, origin
from ..demo_secret import SECRET_FILE, load_or_create_secret
from ..errors import ApiError
from ..service import Service
from ..settings import Settings

__all__ = ["SECRET_FILE", "add_routes", "host_is_loopback", "load_or_create_secret", "refuse_host"]

log = logging.getLogger("wsapp")
DEMO_TTL_S = 3600
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")


def host_is_loopback(host: str | None) -> bool:
    try:
        return origin.is_loopback(origin.parse_host(host or "", 0))
    except ValueError:
        return False


def loopback_message(host: str | None) -> str:
    return f"demo mode serves only localhost, 127.0.0.0/8 and [::1], not Host {host!r}"


def refuse_host() -> None:
    """403 unless the request's Host is a loopback name (DNS rebinding, see the module doc).

    The WebSocket handshake checks the same itself (`WSApp.handshake`)."""
    host = request.headers.get("Host")
    if not host_is_loopback(host):
        raise ApiError("host_not_allowed", loopback_message(host))


def parse_claims(pairs: tuple[str, ...] | list[str], reserved: tuple[str, ...] = ()) -> dict[str, Any]:
    """`--claim key=value` pairs as claims: a value that parses as JSON is that JSON
    (`n=3`, `ok=true`, `tags=["a"]`, `s="3"` for the string), else the text as it is."""
    claims: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--claim'")
        if key in reserved:
            raise click.BadParameter(f"{key!r} is set by the command itself (CLIENT_ID, --ttl)", param_hint="'--claim'")
        try:
            claims[key] = json.loads(raw)
        except ValueError:
            claims[key] = raw
    return claims


def mint_with_claims(settings: Settings, client_id: str, admin: bool, ttl_s: float, extra: dict[str, Any]) -> str:
    """`auth.mint_token`'s token with `extra` claims added (signed again with the same key)."""
    token = auth.mint_token(settings, client_id, admin, ttl_s)
    if not extra:
        return token
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(extra)
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def add_routes(bp: Blueprint, service: Service) -> None:
    """The `token` command and, in demo mode, the token route and the Host guard (on the
    site blueprint: its routes only; the shipped app guards every route, `site.init_service`)."""
    settings = service.settings

    @bp.cli.command("token")
    @click.argument("client_id")
    @click.option("--admin", is_flag=True, help="Give the token the admin role.")
    @click.option("--ttl", default=3600, show_default=True, help="Lifetime in seconds.")
    @click.option(
        "--claim",
        "claims",
        multiple=True,
        metavar="KEY=VALUE",
        help="A claim of its own (repeatable); VALUE is JSON when it parses as JSON, else a string.",
    )
    @click.option(
        "--rooms",
        metavar="A,B",
        help="The rooms the token may join (WSAPP_ROOMS_CLAIM's claim, or 'rooms'): names or patterns.",
    )
    def token_command(client_id: str, admin: bool, ttl: int, claims: tuple[str, ...], rooms: str | None) -> None:
        """Print a signed token for CLIENT_ID (in demo mode, signed with the demo secret)."""
        extra = parse_claims(claims, reserved=(settings.jwt_client_id_claim, "iat", "exp"))
        if rooms is not None:
            extra[settings.rooms_claim or "rooms"] = [room.strip() for room in rooms.split(",") if room.strip()]
        click.echo(mint_with_claims(settings, client_id, admin, ttl, extra))

    if settings.generated_secret:
        bp.before_request(refuse_host)
    if not (settings.generated_secret or settings.demo_tokens):
        return

    @bp.post("/api/demo/token")
    def demo_token() -> Response:
        refuse_host()
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
