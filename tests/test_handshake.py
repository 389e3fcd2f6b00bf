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
    log = wait_for_log(server, "disconnect client=logged")
    assert tok not in log and tok.split(".")[1] not in log


def wait_for_log(server: Server, needle: str, timeout: float = 5) -> str:
    """The server's log once `needle` appears in it (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while needle not in (text := server.log()):
        assert time.monotonic() < deadline, f"{needle!r} never logged:\n{text}"
        time.sleep(0.05)
    return text


def _upgraded(server: Server, **headers: str | None) -> bool:
    status, _, _, sock = raw_handshake(server.port, headers=headers)
    sock.close()
    return status == 101


def malformed_origins(port: int) -> list[str]:
    return [
        "http://[::1",  # unparsable: once a 500 with a traceback
        f"http://[::1]x:{port}",
        f"http://evil@127.0.0.1:{port}",  # userinfo
        f"http://user:pass@127.0.0.1:{port}",
        f"http://127.0.0.1:{port}:1",
        "http://127.0.0.1:abc",  # non-numeric port
        f"http://127.0.0.1:+{port}",
        "http://127.0.0.1:0",  # out of range
        "http://127.0.0.1:99999",
        f"http://127.0.0.1:{port + 65536}",  # the same port modulo 65536
        "http://",
        "127.0.0.1",
    ]


def test_malformed_origin_is_403_never_500_with_the_default_rule(server: Server) -> None:
    tok = bearer(make_token())
    for value in malformed_origins(server.port):
        assert refusal(server, Origin=value, Authorization=tok) == (403, "origin_not_allowed"), value
    # a path in the Origin is ignored: still the same origin
    assert _upgraded(server, Origin=f"http://127.0.0.1:{server.port}/some/page", Authorization=tok)
    assert _upgraded(server, Origin=f"HTTP://127.0.0.1:{server.port}", Authorization=tok)
    assert "Traceback" not in server.log() and "internal_error" not in server.log()


def test_malformed_origin_is_403_with_an_allow_list(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(WSAPP_ALLOWED_ORIGINS="http://127.0.0.1:8000,http://app.example.com,http://[::1]:8000")
    tok = bearer(make_token())
    for value in [*malformed_origins(8000), "http://evil@app.example.com", "http://app.example.com:80:80"]:
        assert refusal(srv, Origin=value, Authorization=tok) == (403, "origin_not_allowed"), value
    assert _upgraded(srv, Origin="http://app.example.com/path", Authorization=tok)
    assert _upgraded(srv, Origin="http://APP.example.com:80", Authorization=tok)
    assert _upgraded(srv, Origin="http://[0::1]:8000", Authorization=tok)
    assert "Traceback" not in srv.log()


def test_malformed_or_missing_host_is_403_host_not_allowed(server: Server) -> None:
    tok = bearer(make_token())
    for value in [
        None,
        f"evil@127.0.0.1:{server.port}",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "127.0.0.1:abc",
        "127.0.0.1:",
        "[::1",
        "exa mple.com",
    ]:
        assert refusal(server, Host=value, Authorization=tok) == (403, "host_not_allowed"), value
    assert _upgraded(server, Host=f"LOCALHOST:{server.port}", Authorization=tok)


def test_bearer_subprotocol_offered_last_is_401_missing_token(server: Server) -> None:
    for offered in ("bearer", "chat.v1, bearer"):
        hdrs = {"Sec-WebSocket-Protocol": offered, "Authorization": bearer(make_token())}
        assert refusal(server, **hdrs) == (401, "missing_token")
    assert "Traceback" not in server.log() and "IndexError" not in server.log()


def test_each_refused_handshake_logs_one_line_with_its_code_and_address(server: Server) -> None:
    expired = make_token("late", ttl=-120)
    status, _, _, sock = raw_handshake(
        server.port, f"/ws/echo?token={expired}", {"X-Forwarded-For": "203.0.113.71", "Origin": None}
    )
    sock.close()
    assert status == 401
    refusal(server, Origin="http://evil.example", Authorization=bearer(expired), **{"X-Forwarded-For": "203.0.113.72"})
    refusal(server, **{"X-Forwarded-For": "203.0.113.73"})
    log = wait_for_log(server, "addr=203.0.113.73")
    ours = [line for line in log.splitlines() if "203.0.113.7" in line]
    assert len(ours) == 3, ours  # one line each (gunicorn's access log shows 127.0.0.1)
    assert "refused GET /ws/echo status=401 error=token_expired addr=203.0.113.71" in ours[0]
    assert "status=403 error=origin_not_allowed addr=203.0.113.72" in ours[1] and "evil.example" in ours[1]
    assert "status=401 error=missing_token addr=203.0.113.73" in ours[2]
    assert expired not in log and expired.split(".")[1] not in log


def test_client_values_are_escaped_in_log_lines(server: Server) -> None:
    forged = "\r\n2026-01-01 00:00:00,000 INFO [1] wsapp.connections: connect client=admin"
    sub = f"mallory{forged}\x1b[2J\u202eevil"
    ws = ws_connect(server, "/ws/echo", make_token(sub), header=["X-Forwarded-For: not-an-ip, 203.0.113.80x"])
    ws.close()
    log = wait_for_log(server, "disconnect client=mallory")
    lines = [line for line in log.splitlines() if "mallory" in line]
    assert len(lines) == 2  # connect and disconnect: no forged line
    for line in lines:
        assert "client=mallory\\x0d\\x0a2026-01-01" in line
        assert "\\x1b[2J\\u202eevil" in line
        assert "addr=127.0.0.1 " in line  # the non-IP hops are not believed, nor shown
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in log.splitlines())
    assert "\x1b" not in log and "\u202e" not in log and "not-an-ip" not in log


def test_a_token_in_a_malformed_request_line_is_redacted_in_gunicorns_error_log(server: Server) -> None:
    import socket

    tok = make_token("in-the-request-line")
    for line in (f"GET /ws/echo?token={tok}\x01 HTTP/1.1", f"GET /ws/echo?access_token={tok} HTTP/1.1 junk"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(f"{line}\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1"))
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
    log = wait_for_log(server, "Invalid HTTP Version")
    assert "Invalid HTTP request line: 'GET /ws/echo?token=[redacted] HTTP/1.1'" in log
    assert tok not in log and tok.split(".")[1] not in log
