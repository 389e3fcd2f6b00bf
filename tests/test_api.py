"""The HTTP API: send, broadcast, clients, health, and every error the contract names."""

from __future__ import annotations

import json
import re
import socket
import time

from helpers import Server, chat_client, delivery, http, make_token, recv_json, ws_connect

ADMIN = make_token("ops", admin=True)


def test_broadcast_over_http_reaches_clients(server: Server) -> None:
    a, b = chat_client(server, "h-a"), chat_client(server, "h-b")
    r = http(server.url, "POST", "/api/broadcast", {"data": {"n": 1}}, ADMIN)
    assert r.status == 200 and r.body["delivered"] >= 2
    for ws in (a, b):
        msg = recv_json(ws)
        assert (msg["type"], msg["from"], msg["data"]) == ("broadcast", "ops", {"n": 1})
    a.close(), b.close()


def test_broadcast_to_a_room(server: Server) -> None:
    a, b = chat_client(server, "hr-a"), chat_client(server, "hr-b")
    a.send('{"type":"join","room":"news"}')
    recv_json(a)
    r = http(server.url, "POST", "/api/broadcast", {"data": "headline", "room": "news"}, ADMIN)
    assert delivery(r.body) == {"delivered": 1}
    msg = recv_json(a)
    assert (msg["type"], msg["room"], msg["from"], msg["data"]) == ("room", "news", "ops", "headline")
    b.send('{"type":"broadcast","data":"probe"}')
    assert recv_json(b)["data"] == "probe"  # b got no room message
    a.close(), b.close()


def test_send_to_a_client_and_sender_is_the_token(server: Server) -> None:
    b = chat_client(server, "hs-b")
    r = http(server.url, "POST", "/api/send", {"to": "hs-b", "data": "hi"}, make_token("hs-a"))
    assert (r.status, delivery(r.body)) == (200, {"delivered": 1})
    msg = recv_json(b)
    assert (msg["type"], msg["from"], msg["to"], msg["data"]) == ("direct", "hs-a", "hs-b", "hi")
    b.close()


def test_send_to_unknown_client_is_404_not_connected(server: Server) -> None:
    r = http(server.url, "POST", "/api/send", {"to": "ghost", "data": 1}, make_token())
    assert r.status == 404 and r.body["error"] == "not_connected" and r.body["delivered"] == 0


def test_clients_lists_connections_per_client(server: Server) -> None:
    a1, a2, b = chat_client(server, "cl-a"), chat_client(server, "cl-a"), chat_client(server, "cl-b")
    r = http(server.url, "GET", "/api/clients", token=ADMIN)
    listed = {c["client_id"]: c["connections"] for c in r.body["clients"]}
    assert listed["cl-a"] == 2 and listed["cl-b"] == 1
    assert r.body["total"] == len(r.body["clients"])
    for ws in (a1, a2, b):
        ws.close()


def test_auth_errors(server: Server) -> None:
    for method, path, body in (
        ("POST", "/api/broadcast", {"data": 1}),
        ("POST", "/api/send", {"to": "x", "data": 1}),
        ("GET", "/api/clients", None),
    ):
        r = http(server.url, method, path, body)
        assert (r.status, r.body["error"]) == (401, "missing_token")
        r = http(server.url, method, path, body, token="bad.token.here")
        assert (r.status, r.body["error"]) == (401, "invalid_token")
        r = http(server.url, method, path, body, token=make_token(ttl=-300))
        assert (r.status, r.body["error"]) == (401, "token_expired")
    for method, path, body in (("POST", "/api/broadcast", {"data": 1}), ("GET", "/api/clients", None)):
        r = http(server.url, method, path, body, token=make_token("user"))
        assert (r.status, r.body["error"]) == (403, "forbidden")


def test_bad_json_and_missing_fields_are_400(server: Server) -> None:
    for raw in (b"{nope", b"[1]", b'"x"'):
        r = http(
            server.url, "POST", "/api/broadcast", raw=raw, token=ADMIN, headers={"Content-Type": "application/json"}
        )
        assert (r.status, r.body["error"]) == (400, "bad_request")
    assert http(server.url, "POST", "/api/broadcast", {"nodata": 1}, ADMIN).status == 400
    assert http(server.url, "POST", "/api/send", {"data": 1}, make_token()).status == 400
    assert http(server.url, "POST", "/api/send", {"to": 5, "data": 1}, make_token()).status == 400
    assert http(server.url, "POST", "/api/broadcast", {"data": 1, "room": ""}, ADMIN).status == 400


def test_body_over_the_message_limit_is_413(server: Server) -> None:
    r = http(server.url, "POST", "/api/broadcast", {"data": "x" * 70000}, ADMIN)
    assert (r.status, r.body["error"]) == (413, "payload_too_large")


def test_health_and_readiness(server: Server) -> None:
    assert http(server.url, "GET", "/healthz").status == 200
    assert http(server.url, "GET", "/readyz").body["status"] == "ready"


def test_unknown_route_and_method_are_json(server: Server) -> None:
    assert http(server.url, "GET", "/nope").body["error"] == "not_found"
    assert http(server.url, "GET", "/api/broadcast").body["error"] == "method_not_allowed"


BAD_BODIES = [
    (b"[" * 100_000, "nested deeper"),
    (b'{"data":' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper"),
    (b'{"data":1e400}', "out of range"),
    (b'{"data":-1e400}', "out of range"),
    (b'{"data":NaN}', "NaN is not JSON"),
    (b'{"data":Infinity}', "Infinity is not JSON"),
    (b'{"data":"\\ud800"}', "lone surrogate"),
    (b'{"data":{"\\udfff":1}}', "lone surrogate"),
    (b'{"data":1,"room":"\\ud800"}', "lone surrogate"),
    (b'{"data":"\xed\xa0\x80"}', "not UTF-8"),  # an encoded surrogate
    (b'{"data":"\xff"}', "not UTF-8"),
    (b"{nope", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (b'"x"', "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b'{"nodata":1}', "needs a 'data' field"),
    (b'{"data":1,"room":""}', "'room' must be a non-empty string"),
    (b'{"data":1,"room":"' + b"r" * 129 + b'"}', "'room' is longer than 128 characters"),
]


def test_bad_bodies_are_400_json_never_500(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0", WSAPP_MAX_MESSAGE_BYTES="262144")
    json_type = {"Content-Type": "application/json"}
    for raw, says in BAD_BODIES:
        r = http(srv.url, "POST", "/api/broadcast", raw=raw, token=ADMIN, headers=json_type)
        assert (r.status, r.body["error"]) == (400, "bad_request"), (raw[:40], r.body)
        assert says in r.body["message"], (raw[:40], r.body)
    for raw, says in (
        (b'{"to":"\\ud800","data":1}', "lone surrogate"),
        (b'{"to":"x","data":1e999}', "out of range"),
        (b'{"to":["x"],"data":1}', "'to' must be a non-empty string"),
    ):
        r = http(srv.url, "POST", "/api/send", raw=raw, token=make_token(), headers=json_type)
        assert (r.status, r.body["error"]) == (400, "bad_request") and says in r.body["message"], r.body
    log = srv.log()
    assert "Traceback" not in log and "unhandled error" not in log


def test_a_body_without_the_json_content_type_is_400_naming_the_header(server: Server) -> None:
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        r = http(server.url, "POST", "/api/broadcast", raw=b'{"data":1}', token=ADMIN, headers=headers)
        assert (r.status, r.body["error"]) == (400, "bad_request")
        assert "Content-Type: application/json" in r.body["message"] and "missing" in r.body["message"]
    r = http(server.url, "POST", "/api/broadcast", raw=b'{"data":1}', token=ADMIN,
             headers={"Content-Type": "application/json; charset=utf-8"})  # fmt: skip
    assert r.status == 200


def _chunked_post(port: int, path: str, token: str, chunks: list[bytes]) -> tuple[int, dict[str, object]]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
        try:
            sock.sendall(head.encode() + body)
        except OSError:
            pass  # the server may answer and close before reading it all
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_a_chunked_body_over_the_limit_is_413(server: Server) -> None:
    big = b'{"data":"' + b"x" * 70_000 + b'"}'  # over the 65536-byte default, in 1 KiB chunks
    status, body = _chunked_post(
        server.port, "/api/broadcast", ADMIN, [big[i : i + 1024] for i in range(0, len(big), 1024)]
    )
    assert (status, body["error"]) == (413, "payload_too_large")
    small = b'{"data":"chunked"}'
    status, body = _chunked_post(server.port, "/api/broadcast", ADMIN, [small[:5], small[5:]])
    assert status == 200 and "delivered" in body


def test_client_chosen_close_codes_do_not_become_metric_series(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0")
    codes = list(range(3000, 3400))  # 400 distinct codes a client may send
    for code in codes:
        ws = ws_connect(srv, "/ws/echo", make_token("closer"))
        ws.close(status=code)
    named = {"1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009", "1011", "4401"}

    def series() -> dict[str, float]:
        text = http(srv.url, "GET", "/metrics").body
        out = {}
        for labels, value in re.findall(r"^wsapp_connections_closed_total\{([^}]*)\} (\S+)$", text, re.M):
            parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            if parsed["route"] == "echo":
                out[parsed["code"]] = float(value)
        return out

    deadline = time.monotonic() + 20
    while sum(series().values()) < len(codes):  # every close counted
        assert time.monotonic() < deadline, series()
        time.sleep(0.1)
    labels = set(series())
    assert labels <= named | {"other", "none"} and "other" in labels, labels
    assert series()["other"] == len(codes)
