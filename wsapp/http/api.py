"""The HTTP API: send and broadcast from anywhere curl runs, and health checks.

Tokens come only from `Authorization: Bearer` here: a cookie would let another site's
form post to the API on a user's behalf (CSRF).

Every request with a valid token is paced per client id, the token's (admin tokens too:
`/api/broadcast` is the costliest call there is), with a token bucket per client id
(`ratelimit.RateTable`, `WSAPP_API_RATE_LIMIT`/`WSAPP_API_RATE_BURST`, per worker): over
it, 429 `rate_limited` with `Retry-After`, before the body is read.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from .. import auth, protocol
from ..errors import ApiError
from ..proxy import address_allowed, client_address
from ..ratelimit import RateTable, retry_after
from ..service import Service

# a client id's length limit (`auth.verify_token` refuses longer ones): no token can ever
# name a longer id, so a `to` over it could only be stored for nobody
MAX_CLIENT_ID_CHARS = 256


def _identity(service: Service, pace: RateTable, admin: bool) -> auth.Identity:
    """The request's token (the 401s), paced per client id (429), then the admin check (403)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("missing_token", "send the token as Authorization: Bearer <jwt>")
    identity = auth.verify_token(token.strip(), service.settings)  # raises the 401s
    wait = pace.wait(identity.client_id)
    if wait > 0:
        after = retry_after(wait)
        message = (
            f"client {identity.client_id!r} is over {pace.rate:g} API requests per second "
            f"(WSAPP_API_RATE_LIMIT): retry in {after} s"
        )
        raise ApiError("rate_limited", message, headers={"Retry-After": str(after)})
    if admin and not identity.is_admin:
        raise ApiError("forbidden")
    return identity


def _json_body(service: Service) -> dict[str, Any]:
    """The request's JSON object, decoded by the chat frames' rules (`protocol.loads`):
    413 over the message size limit (declared, or found reading a chunked body),
    400 without `Content-Type: application/json` or for a body we could not carry."""
    limit = service.settings.max_message_bytes
    if (request.content_length or 0) > limit:
        raise ApiError("payload_too_large")
    if not request.is_json:
        raise ApiError("bad_request", "the Content-Type: application/json header is missing: send the body as JSON")
    # The server's own input stream ends where the body ends, with a length or chunked;
    # one byte past the limit tells a body over it from one exactly at it (Werkzeug's
    # limited stream stops at the limit silently, so a chunked body would be cut, not refused).
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise ApiError("payload_too_large")
    try:
        body = protocol.loads(raw)
    except protocol.BadJson as err:
        raise ApiError("bad_request", f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise ApiError("bad_request", "the body must be a JSON object")
    if "data" not in body:
        raise ApiError("bad_request", "the body needs a 'data' field")
    return body


def _string_field(body: dict[str, Any], name: str, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError("bad_request", f"{name!r} must be a non-empty string")
    if name == "room" and len(value) > protocol.MAX_ROOM_CHARS:
        raise ApiError("bad_request", f"'room' is longer than {protocol.MAX_ROOM_CHARS} characters")
    if name == "to" and len(value) > MAX_CLIENT_ID_CHARS:
        raise ApiError("bad_request", f"'to' is longer than {MAX_CLIENT_ID_CHARS} characters, a client id's limit")
    return value


def add_routes(bp: Blueprint, service: Service) -> None:
    """The API's routes, on the site blueprint (`wsapp.site`)."""
    hub = service.hub
    settings = service.settings
    pace = RateTable(settings.api_rate_limit, settings.api_rate_burst)  # this app's, in this worker

    @bp.post("/api/broadcast")
    def broadcast() -> Response:
        sender = _identity(service, pace, admin=True)
        body = _json_body(service)
        room = _string_field(body, "room", required=False)
        if room is None:
            delivered = hub.broadcast(sender.client_id, body["data"])
        else:
            delivered = hub.send_to_room(sender.client_id, room, body["data"])
        return jsonify(delivered=delivered)

    @bp.post("/api/send")
    def send() -> Response | tuple[Response, int]:
        sender = _identity(service, pace, admin=False)
        body = _json_body(service)
        to = _string_field(body, "to", required=True)
        assert to is not None
        delivered, stored = hub.send_direct(sender.client_id, to, body["data"])
        if stored:  # kept for the client's resume: accepted, not delivered yet
            return jsonify(delivered=0, stored=True), 202
        if delivered == 0:
            raise ApiError("not_connected", f"client {to!r} is not connected", delivered=0)
        return jsonify(delivered=delivered)

    @bp.get("/api/clients")
    def clients() -> Response:
        _identity(service, pace, admin=True)
        counts = hub.clients()
        listing = [{"client_id": cid, "connections": n} for cid, n in sorted(counts.items())]
        return jsonify(clients=listing, total=len(listing), connections=sum(counts.values()))

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @bp.get("/readyz")
    def readyz() -> tuple[Response, int]:
        problems = []
        if service.registry.draining:
            problems.append("shutting down")
        if not service.backplane.healthy:
            problems.append("backplane unavailable")
        if problems:
            return jsonify(status="not_ready", error="not_ready", message="; ".join(problems)), 503
        return jsonify(status="ready"), 200

    @bp.get("/metrics")
    def prometheus() -> Response:
        addr = client_address(
            request.remote_addr or "", request.headers.get("X-Forwarded-For"), service.settings.trusted_proxies
        )
        if not address_allowed(addr, service.settings.metrics_allow):
            raise ApiError("forbidden", "metrics are served to WSAPP_METRICS_ALLOW networks only")
        body, content_type = service.metrics.render()
        return Response(body, content_type=content_type)
