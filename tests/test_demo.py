"""Demo mode and the token command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from helpers import ROOT, SECRET, Server, http, recv_json, ws_connect


def _demo_server(instance: str, **env: str) -> Server:
    srv = Server(env={"WSAPP_INSTANCE_PATH": instance, **env})
    srv.env["WSAPP_JWT_SECRET"] = ""  # unset: demo mode
    return srv.start()


def test_demo_mode_mints_tokens_that_work_and_survive_a_restart() -> None:
    instance = tempfile.mkdtemp(prefix="wsapp-demo-")
    srv = _demo_server(instance)
    try:
        assert "DEMO MODE" in srv.log()
        r = http(srv.url, "POST", "/api/demo/token", {"client_id": "visitor", "admin": True})
        assert r.status == 200 and r.body["client_id"] == "visitor" and r.body["admin"] is True
        token = r.body["token"]
        ws = ws_connect(srv, "/ws/chat", None, subprotocols=[token])
        assert recv_json(ws)["client_id"] == "visitor"
        ws.close()
        assert http(srv.url, "GET", "/api/clients", token=token).status == 200  # admin
        bad = http(srv.url, "POST", "/api/demo/token", {"client_id": "no spaces allowed"})
        assert (bad.status, bad.body["error"]) == (400, "bad_request")
        with open(os.path.join(instance, "demo-jwt-secret")) as f:
            secret = f.read()
        assert len(secret) >= 32 and secret not in srv.log()
    finally:
        srv.stop()
    again = _demo_server(instance)  # the same instance folder: the same secret
    try:
        ws = ws_connect(again, "/ws/echo", token)
        ws.send("still valid")
        assert ws.recv() == "still valid"
        ws.close()
    finally:
        again.stop()


def test_no_demo_route_with_a_real_secret_unless_asked(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    r = http(srv.url, "POST", "/api/demo/token", {"client_id": "x"})
    assert (r.status, r.body["error"]) == (404, "not_found")
    srv2 = start_server(WSAPP_DEMO_TOKENS="1")
    r = http(srv2.url, "POST", "/api/demo/token", {"client_id": "x"})
    assert r.status == 200 and "DEMO MODE" not in srv2.log()


def test_token_command_mints_a_token_the_server_accepts(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    env = {**os.environ, **srv.env, "WSAPP_JWT_SECRET": SECRET}
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "token", "cli-user", "--admin", "--ttl", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = out.stdout.strip()
    assert http(srv.url, "GET", "/api/clients", token=token).status == 200
    ws = ws_connect(srv, "/ws/chat", token)
    assert recv_json(ws)["client_id"] == "cli-user"
    ws.close()
