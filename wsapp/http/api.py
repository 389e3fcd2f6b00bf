"""The HTTP API: send and broadcast from anywhere curl runs, and health checks.

Tokens come only from `Authorization: Bearer` here: a cookie would let another site's
form post to the API on a user's behalf (CSRF).

Every request with a valid token is paced per client id, the token's (admin tokens too:
`/api/broadcast` is the costliest call there is), with a token bucket per client id
(`ratelimit.RateTable`, `WSAPP_API_RATE_LIMIT`/`WSAPP_API_RATE_BURST`, per worker): over
it, 429 `rate_limited` with `Retry-After`, before the body is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .. import auth, history, protocol
from ..chat.resume import MAX_EPOCH_CHARS
from ..errors import ApiError
from ..history import Position, check_key
from ..hub import stream_of
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


def _json_body(service: Service, data: bool = True) -> dict[str, Any]:
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
    if data and "data" not in body:
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
    if name in ("to", "client_id") and len(value) > MAX_CLIENT_ID_CHARS:
        raise ApiError("bad_request", f"{name!r} is longer than {MAX_CLIENT_ID_CHARS} characters, a client id's limit")
    return value


def _whole(raw: str, name: str, most: int) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > most:
        raise ApiError("bad_request", f"{name!r} must be a whole number from 0 to {most}")
    return int(raw)


class KeyQuota:
    """Idempotency keys per client id per window (`WSAPP_IDEMPOTENCY_KEYS_PER_CLIENT` per
    `WSAPP_HISTORY_TTL`), in this worker: what bounds the keys one client id makes Redis
    (or this worker) remember. Bounded itself: past `MAX_CLIENTS` the ended windows go,
    then all (a reset lets some keys more through; it never grows)."""

    MAX_CLIENTS = 10_000

    def __init__(self, per_client: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client, self.window_s, self.clock = per_client, window_s, clock
        self._used: dict[str, tuple[int, float]] = {}  # client id -> (keys used, window end)

    def take(self, client_id: str) -> float:
        """0: the key may be used (and is counted); else the seconds until the window ends."""
        if self.per_client <= 0:
            return 0.0
        now = self.clock()
        used, until = self._used.get(client_id, (0, 0.0))
        if until <= now:
            used, until = 0, now + self.window_s
            if len(self._used) >= self.MAX_CLIENTS:
                self._used = {k: v for k, v in self._used.items() if v[1] > now}
                if len(self._used) >= self.MAX_CLIENTS:
                    self._used = {}
        if used >= self.per_client:
            return until - now
        self._used[client_id] = (used + 1, until)
        return 0.0


def add_routes(bp: Blueprint, service: Service) -> None:
    """The API's routes, on the site blueprint (`wsapp.site`)."""
    hub = service.hub
    settings = service.settings
    pace = RateTable(settings.api_rate_limit, settings.api_rate_burst)  # this app's, in this worker

    keys = KeyQuota(settings.idempotency_keys_per_client, settings.history_ttl_s)

    def idempotency_key(identity: auth.Identity) -> str:
        """The request's `Idempotency-Key` ("" when none): checked, and counted against the
        client id's `WSAPP_IDEMPOTENCY_KEYS_PER_CLIENT` (429 past it)."""
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return ""
        try:
            check_key(key)
        except ValueError as err:
            raise ApiError("bad_request", f"Idempotency-Key: {err}") from None
        if not service.hub.history_on:
            raise ApiError("bad_request", "Idempotency-Key needs history on (WSAPP_HISTORY_SIZE, WSAPP_HISTORY_TTL)")
        wait = keys.take(identity.client_id)
        if wait > 0:
            after = retry_after(wait)
            message = (f"client {identity.client_id!r} used {keys.per_client} idempotency keys in this "
                       f"WSAPP_HISTORY_TTL window (WSAPP_IDEMPOTENCY_KEYS_PER_CLIENT): retry in {after} s")  # fmt: skip
            raise ApiError("rate_limited", message, headers={"Retry-After": str(after)})
        return key

    def not_draining() -> None:
        """A draining worker publishes nothing: its connections are closing and its Redis
        backplane is about to stop, so a message accepted now could reach no one and be
        kept nowhere (the fault benchmark saw exactly that). 503: publish elsewhere."""
        if service.registry.draining:
            raise ApiError("shutting_down", "this worker is shutting down: publish through another")

    @bp.post("/api/broadcast")
    def broadcast() -> Response:
        not_draining()
        sender = _identity(service, pace, admin=True)
        body = _json_body(service)
        room = _string_field(body, "room", required=False)
        key = idempotency_key(sender)
        if room is None:
            result = hub.broadcast(sender.client_id, body["data"], key)
        else:
            result = hub.send_to_room(sender.client_id, room, body["data"], key)
        return jsonify(result.wire())

    @bp.post("/api/send")
    def send() -> Response | tuple[Response, int]:
        not_draining()
        sender = _identity(service, pace, admin=False)
        body = _json_body(service)
        to = _string_field(body, "to", required=True)
        assert to is not None
        key = idempotency_key(sender)
        result, stored = hub.send_direct(sender.client_id, to, body["data"], key)
        if stored:  # kept for the client's resume: accepted, not delivered yet
            return jsonify(**result.wire(), stored=True), 202
        if result == 0:
            raise ApiError("not_connected", f"client {to!r} is not connected", delivered=0)
        return jsonify(result.wire())

    @bp.get("/api/history")
    def read_history() -> Response:
        identity = _identity(service, pace, admin=False)
        args = request.args
        named = [name for name in ("room", "to", "broadcast") if name in args]
        if len(named) != 1:
            raise ApiError("bad_request", "name exactly one stream: ?room=<name>, ?to=<client id> or ?broadcast=1")
        room, to = args.get("room"), args.get("to")
        if room is not None and not 0 < len(room) <= protocol.MAX_ROOM_CHARS:
            raise ApiError("bad_request", f"'room' is 1 to {protocol.MAX_ROOM_CHARS} characters")
        if to is not None and not 0 < len(to) <= MAX_CLIENT_ID_CHARS:
            raise ApiError("bad_request", f"'to' is 1 to {MAX_CLIENT_ID_CHARS} characters, a client id's limit")
        if named == ["broadcast"] and args["broadcast"] != "1":
            raise ApiError("bad_request", "'broadcast' must be 1")
        if not identity.is_admin and to != identity.client_id:  # a client may read its own directs
            raise ApiError("forbidden", "an admin token reads any stream; another token only ?to=<its client id>")
        since = _whole(args["since"], "since", 2**63 - 1) if "since" in args else None
        epoch = args.get("epoch", "")
        if len(epoch) > MAX_EPOCH_CHARS:
            raise ApiError("bad_request", f"'epoch' is at most {MAX_EPOCH_CHARS} characters")
        cap = settings.history_read_limit
        limit = min(_whole(args.get("limit", str(cap)), "limit", 2**31), cap)
        position = None if since is None else Position(since, epoch)  # None: the latest messages
        page = hub.history(stream_of(room, to, named == ["broadcast"]), position, limit)
        head = protocol.encode({"stream": page.stream, "recovered": page.recovered, "offset": page.offset,
                                "epoch": page.epoch, "more": page.more})  # fmt: skip
        # the messages as clients received them: their JSON texts, not decoded and encoded again
        text = head[:-1] + ',"messages":[' + ",".join(page.texts) + "]}"
        return Response(text, mimetype="application/json")

    @bp.get("/api/rooms/<path:room>")
    def room_state(room: str) -> Response:
        _identity(service, pace, admin=True)
        if len(room) > protocol.MAX_ROOM_CHARS:
            raise ApiError("bad_request", f"a room name is at most {protocol.MAX_ROOM_CHARS} characters")
        members = hub.room_members(room)  # cluster-wide, sorted
        shown = members[: settings.members_limit]
        position = hub.position(history.stream_room(room))
        info = hub.member_info(room, shown)  # WSAPP_PRESENCE_CLAIMS: each listed member's entry
        extra = {} if info is None else {"info": info}
        return jsonify(room=room, members=shown, count=len(members), truncated=len(shown) < len(members),
                       offset=position.offset, epoch=position.epoch, **extra)  # fmt: skip

    def server_subscription(room: str, op: str) -> Response:
        """`POST /api/rooms/<room>/join` and `/leave` (admin): the server's own join or leave of
        every connection of the body's `client_id`, on every node (`WSApp.join`/`leave`)."""
        not_draining()
        _identity(service, pace, admin=True)
        if not 0 < len(room) <= protocol.MAX_ROOM_CHARS:
            raise ApiError("bad_request", f"a room name is 1 to {protocol.MAX_ROOM_CHARS} characters")
        body = _json_body(service, data=False)
        client_id = _string_field(body, "client_id", required=True)
        assert client_id is not None
        if op == "join":
            return jsonify(joined=hub.server_join(client_id, room))
        return jsonify(left=hub.server_leave(client_id, room))

    @bp.post("/api/rooms/<path:room>/join")
    def room_join(room: str) -> Response:
        return server_subscription(room, "join")

    @bp.post("/api/rooms/<path:room>/leave")
    def room_leave(room: str) -> Response:
        return server_subscription(room, "leave")

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
        if not service.hub.healthy:
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
