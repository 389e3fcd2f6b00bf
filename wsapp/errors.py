"""The one catalogue of errors a client can see, and the exceptions that carry them.

HTTP refusals (handshake and API) are `HandshakeRejected`/`ApiError`, raised by pure code
and turned into `{"error": code, "message": text}` in one place (`http_error_response`).
Chat `error` frames use the codes in `FRAME_ERRORS`. Close codes are named here too.
"""

from __future__ import annotations

from typing import Any

from flask import Response, json

# code -> (HTTP status, default human message)
HTTP_ERRORS: dict[str, tuple[int, str]] = {
    "not_websocket": (400, "this route only speaks WebSocket: send a GET with Upgrade: websocket"),
    "missing_token": (401, "no token: send it as a subprotocol, a Bearer header, ?token= or the access_token cookie"),
    "invalid_token": (401, "the token is not valid"),
    "token_expired": (401, "the token has expired"),
    "token_not_yet_valid": (401, "the token is not valid yet"),
    "forbidden": (403, "this needs a token with the admin role"),
    "origin_not_allowed": (403, "this Origin may not open WebSockets here"),
    "host_not_allowed": (403, "this Host header is malformed or not served here"),
    "not_found": (404, "no such route"),
    "not_connected": (404, "that client is not connected"),
    "method_not_allowed": (405, "method not allowed on this route"),
    "payload_too_large": (413, "the body is larger than the message size limit"),
    "too_many_connections": (429, "this client already holds the most connections allowed"),
    "rate_limited": (429, "too many requests for this client id (WSAPP_API_RATE_LIMIT): retry after Retry-After"),
    "bad_request": (400, "the request body is not valid"),
    "server_busy": (503, "this worker holds the most connections allowed; try again later"),
    "shutting_down": (503, "this worker is shutting down; reconnect to another"),
    "not_ready": (503, "not ready"),
    "internal_error": (500, "internal error"),
    "unsupported_server": (
        501,
        "this server cannot serve WebSockets: run the app under gunicorn's gevent worker (gunicorn -k gevent)",
    ),
}

# codes of chat `error` frames
FRAME_ERRORS: dict[str, str] = {
    "bad_json": "the frame is not a JSON object",
    "unknown_type": "unknown frame type",
    "missing_field": "a required field is missing or has the wrong type",
    "not_connected": "that client is not connected",
    "not_in_room": "join the room before sending to it",
    "rate_limited": "too many messages: slow down",
    "too_many_rooms": "this connection is in the most rooms allowed (WSAPP_MAX_ROOMS): leave one first",
    "forbidden": "you may not join this room",
    "invalid_token": "the token is not valid",
    "token_expired": "the token has expired",
    "token_not_yet_valid": "the token is not valid yet",
    "wrong_client": "the token is for another client id",
}


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # reconnect and resume: the node's backplane came back (`RedisBackplane._after_outage`)
    TOKEN_EXPIRED = 4401


class WsappError(Exception):
    """Base of the errors that become an HTTP answer."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        default_status, default_message = HTTP_ERRORS[code]
        self.code = code
        self.status = status or default_status
        self.message = message or default_message
        self.headers = headers or {}
        self.extra = extra
        super().__init__(f"{self.status} {code}: {self.message}")


class HandshakeRejected(WsappError):
    """A WebSocket handshake refused before the upgrade."""


class ApiError(WsappError):
    """An HTTP API request refused."""


def http_error_response(err: WsappError) -> Response:
    body = {"error": err.code, "message": err.message, **err.extra}
    resp = Response(json.dumps(body), status=err.status, mimetype="application/json")
    for name, value in err.headers.items():
        resp.headers[name] = value
    return resp
