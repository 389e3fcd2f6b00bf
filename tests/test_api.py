"""The HTTP API: send, broadcast, clients, health, and every error the contract names."""

from __future__ import annotations

from helpers import Server, chat_client, http, make_token, recv_json

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
    assert r.body == {"delivered": 1}
    msg = recv_json(a)
    assert (msg["type"], msg["room"], msg["from"], msg["data"]) == ("room", "news", "ops", "headline")
    b.send('{"type":"broadcast","data":"probe"}')
    assert recv_json(b)["data"] == "probe"  # b got no room message
    a.close(), b.close()


def test_send_to_a_client_and_sender_is_the_token(server: Server) -> None:
    b = chat_client(server, "hs-b")
    r = http(server.url, "POST", "/api/send", {"to": "hs-b", "data": "hi"}, make_token("hs-a"))
    assert (r.status, r.body) == (200, {"delivered": 1})
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
