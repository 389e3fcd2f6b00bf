"""Every refusal of the handshake table, against a real gunicorn: status, JSON error, no 101."""

from __future__ import annotations

import time

import jwt
import pytest

from helpers import SECRET, Server, make_token, raw_handshake, recv_json, ws_connect


def refusal(server: Server, path: str = "/ws/echo", method: str = "GET", **headers: str | None) -> tuple[int, str]:
    status, hdrs, body, sock = raw_handshake(server.port, path, headers, method=method)  # type: ignore[arg-type]
    sock.close()
    assert status != 101
    assert hdrs.get("content-type") == "application/json"
    import json

    payload = json.loads(body)
    assert set(payload) >= {"error", "message"} and payload["message"]
    return status, payload["error"]


def bearer(token: str) -> str:
    return f"Bearer {token}"


@pytest.mark.parametrize("path", ["/ws/echo", "/ws/chat"])
def test_not_a_get_is_400_not_websocket(server: Server, path: str) -> None:
    assert refusal(server, path, method="POST", Authorization=bearer(make_token())) == (400, "not_websocket")


def test_no_upgrade_header_is_400_not_websocket(server: Server) -> None:
    assert refusal(server, Upgrade=None, Connection=None, Authorization=bearer(make_token())) == (400, "not_websocket")
    assert refusal(server, Upgrade="h2c", Authorization=bearer(make_token())) == (400, "not_websocket")


def test_wrong_version_is_426_with_upgrade_header(server: Server) -> None:
    status, hdrs, _, sock = raw_handshake(
        server.port, headers={"Sec-WebSocket-Version": "8", "Authorization": bearer(make_token())}
    )
    sock.close()
    assert status == 426
    assert hdrs["upgrade"] == "websocket" and hdrs["sec-websocket-version"] == "13"


def test_bad_key_is_400(server: Server) -> None:
    assert refusal(server, **{"Sec-WebSocket-Key": "short", "Authorization": bearer(make_token())}) == (
        400,
        "not_websocket",
    )


def test_no_token_is_401_missing_token(server: Server) -> None:
    assert refusal(server) == (401, "missing_token")


def test_bad_signature_malformed_none_and_wrong_alg_are_401_invalid_token(server: Server) -> None:
    forged = make_token(secret="some-other-secret-that-is-long-enough")
    none_alg = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none")  # type: ignore[arg-type]
    wrong_alg = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, SECRET * 2, algorithm="HS384")
    for tok in (forged, "abc.def.ghi", none_alg, wrong_alg):
        assert refusal(server, Authorization=bearer(tok)) == (401, "invalid_token")


def test_expired_and_not_yet_valid(server: Server) -> None:
    assert refusal(server, Authorization=bearer(make_token(ttl=-120))) == (401, "token_expired")
    future = make_token(nbf=int(time.time()) + 600)
    assert refusal(server, Authorization=bearer(future)) == (401, "token_not_yet_valid")


def test_wrong_issuer_or_audience_when_configured(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(WSAPP_JWT_ISSUER="https://id.example", WSAPP_JWT_AUDIENCE="wsapp")
    assert refusal(srv, Authorization=bearer(make_token(iss="https://evil", aud="wsapp"))) == (401, "invalid_token")
    assert refusal(srv, Authorization=bearer(make_token(iss="https://id.example", aud="x"))) == (401, "invalid_token")
    ws = ws_connect(srv, "/ws/echo", make_token(iss="https://id.example", aud="wsapp"))
    ws.close()


def test_foreign_origin_is_403(server: Server) -> None:
    tok = bearer(make_token())
    assert refusal(server, Origin="http://evil.example", Authorization=tok) == (403, "origin_not_allowed")
    same = f"http://127.0.0.1:{server.port}"
    status, _, _, sock = raw_handshake(server.port, headers={"Origin": same, "Authorization": tok})
    sock.close()
    assert status == 101


def test_configured_origins(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(WSAPP_ALLOWED_ORIGINS="https://app.example.com")
    tok = bearer(make_token())
    assert refusal(srv, Origin=f"http://127.0.0.1:{srv.port}", Authorization=tok) == (403, "origin_not_allowed")
    status, _, _, sock = raw_handshake(srv.port, headers={"Origin": "https://app.example.com", "Authorization": tok})
    sock.close()
    assert status == 101


def test_too_many_connections_per_client_is_429(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(WSAPP_MAX_CONNECTIONS_PER_CLIENT="2")
    held = [ws_connect(srv, "/ws/echo", make_token("alice")) for _ in range(2)]
    assert refusal(srv, Authorization=bearer(make_token("alice"))) == (429, "too_many_connections")
    other = ws_connect(srv, "/ws/echo", make_token("bob"))  # other clients are not affected
    held[0].close()
    deadline = time.monotonic() + 5
    while True:  # the slot comes back once the server has cleaned up
        status, _, _, sock = raw_handshake(srv.port, headers={"Authorization": bearer(make_token("alice"))})
        sock.close()
        if status == 101 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 101
    for ws in held[1:] + [other]:
        ws.close()


def test_worker_full_is_503_server_busy(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(WSAPP_MAX_CONNECTIONS="3")
    held = [ws_connect(srv, "/ws/chat", make_token(f"c{i}")) for i in range(3)]
    assert refusal(srv, Authorization=bearer(make_token("late"))) == (503, "server_busy")
    for ws in held:
        ws.close()


def test_token_as_raw_subprotocol_is_selected_back(server: Server) -> None:
    tok = make_token("sp")
    status, hdrs, _, sock = raw_handshake(server.port, "/ws/chat", {"Sec-WebSocket-Protocol": tok})
    sock.close()
    assert status == 101 and hdrs["sec-websocket-protocol"] == tok


def test_bearer_pair_selects_bearer(server: Server) -> None:
    tok = make_token("sp2")
    status, hdrs, _, sock = raw_handshake(server.port, "/ws/chat", {"Sec-WebSocket-Protocol": f"bearer, {tok}"})
    sock.close()
    assert status == 101 and hdrs["sec-websocket-protocol"] == "bearer"


@pytest.mark.parametrize("how", ["subprotocol", "header", "query", "cookie"])
def test_each_token_source_identifies_the_client(server: Server, how: str) -> None:
    tok = make_token(f"src-{how}")
    path, kw = "/ws/chat", {}
    if how == "subprotocol":
        kw = {"subprotocols": [tok]}
    elif how == "header":
        kw = {"header": [f"Authorization: Bearer {tok}"]}
    elif how == "query":
        path = f"/ws/chat?token={tok}"
    else:
        kw = {"cookie": f"access_token={tok}"}
    ws = ws_connect(server, path, None, **kw)
    assert recv_json(ws)["client_id"] == f"src-{how}"
    ws.close()


def test_no_compression_unless_enabled(server: Server) -> None:
    status, hdrs, _, sock = raw_handshake(
        server.port,
        headers={
            "Authorization": bearer(make_token()),
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        },
    )
    sock.close()
    assert status == 101 and "sec-websocket-extensions" not in hdrs


def test_query_token_never_reaches_the_logs(server: Server) -> None:
    tok = make_token("logged")
    ws = ws_connect(server, f"/ws/echo?token={tok}")
    ws.close()
    status, _, _, sock = raw_handshake(server.port, f"/ws/echo?token={tok}x", {})
    sock.close()
    assert status == 401
    time.sleep(0.3)
    log = server.log()
    assert "client=logged" in log
    assert tok not in log and tok.split(".")[1] not in log
