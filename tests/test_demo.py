"""Demo mode and the token command."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import ROOT, SECRET, Server, http, raw_handshake, recv_json, unavailable, ws_connect
from wsapp import demo_secret
from wsapp.settings import SettingsError


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


def _status(srv: Server, method: str, path: str, host: str, body: object = None) -> tuple[int, str | None]:
    r = http(srv.url, method, path, body, headers={"Host": host})
    return r.status, (r.body.get("error") if isinstance(r.body, dict) else None)


def test_demo_mode_serves_loopback_host_values_only() -> None:
    srv = _demo_server(tempfile.mkdtemp(prefix="wsapp-demo-"))
    try:
        mint = {"client_id": "rebound", "admin": True}
        # a DNS-rebinding page: its own name in Host, resolved to 127.0.0.1
        for host in (f"evil.example:{srv.port}", "evil.example", f"localhost.evil.example:{srv.port}", "10.0.0.1"):
            assert _status(srv, "POST", "/api/demo/token", host, mint) == (403, "host_not_allowed"), host
            assert _status(srv, "GET", "/", host) == (403, "host_not_allowed")
            assert _status(srv, "GET", "/healthz", host) == (403, "host_not_allowed")
            status, hdrs, body, sock = raw_handshake(srv.port, "/ws/echo", {"Host": host})
            sock.close()
            assert status == 403 and json.loads(body)["error"] == "host_not_allowed"
        for host in (f"localhost:{srv.port}", "LOCALHOST", f"127.0.0.1:{srv.port}", "127.4.5.6:1", "[::1]:80"):
            assert _status(srv, "POST", "/api/demo/token", host, mint)[0] == 200, host
            assert _status(srv, "GET", "/healthz", host)[0] == 200
        tok = http(srv.url, "POST", "/api/demo/token", mint).body["token"]
        status, _, _, sock = raw_handshake(
            srv.port, "/ws/echo", {"Host": f"localhost:{srv.port}", "Authorization": f"Bearer {tok}"}
        )
        sock.close()
        assert status == 101
        assert "error=host_not_allowed" in srv.log()  # the refused handshakes were logged
    finally:
        srv.stop()


def test_demo_token_route_checks_the_host_wherever_it_is_served(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(WSAPP_DEMO_TOKENS="1")  # a real secret: not demo mode
    assert _status(srv, "POST", "/api/demo/token", "evil.example", {"client_id": "x"}) == (403, "host_not_allowed")
    assert _status(srv, "POST", "/api/demo/token", "localhost", {"client_id": "x"})[0] == 200
    assert _status(srv, "GET", "/healthz", "app.example.com")[0] == 200  # other routes: any Host


def _start_refused(instance: str) -> str:
    srv = Server(env={"WSAPP_INSTANCE_PATH": instance, "WSAPP_JWT_SECRET": ""})
    try:
        srv.start(timeout=10)
    except RuntimeError:
        pass
    else:
        srv.stop()
        raise AssertionError("started with an untrustworthy demo secret")
    assert srv.proc is not None and srv.proc.returncode == 2
    lines = [line for line in srv.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines  # one clear line, no traceback
    assert lines[0].startswith(f"wsapp: invalid setting WSAPP_INSTANCE_PATH={instance!r}: ")
    return lines[0]


def test_a_demo_secret_folder_others_may_write_is_refused() -> None:
    instance = tempfile.mkdtemp(prefix="wsapp-demo-")
    for mode in (0o777, 0o770, 0o702, 0o1777):
        os.chmod(instance, mode)
        assert "the folder is writable by group or others" in _start_refused(instance)
    assert not os.path.exists(os.path.join(instance, "demo-jwt-secret"))  # nothing written there


def test_a_demo_secret_file_others_may_write_or_a_link_is_refused() -> None:
    instance = tempfile.mkdtemp(prefix="wsapp-demo-")
    path = os.path.join(instance, "demo-jwt-secret")
    with open(path, "w") as f:
        f.write("planted-by-someone-else-0123456789-0123456789")
    for mode in (0o620, 0o602, 0o666):
        os.chmod(path, mode)
        assert "demo-jwt-secret is writable by group or others" in _start_refused(instance)
    os.remove(path)
    os.symlink("/etc/hostname", path)
    assert "is a symbolic link" in _start_refused(instance)


def test_a_demo_secret_owned_by_another_user_is_refused() -> None:
    if os.geteuid() != 0:
        unavailable("needs root to give a file to another user (the unit test below covers it)")
    instance = tempfile.mkdtemp(prefix="wsapp-demo-")
    path = os.path.join(instance, "demo-jwt-secret")
    with open(path, "w") as f:
        f.write("planted-by-someone-else-0123456789-0123456789")
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)
    assert "demo-jwt-secret belongs to another user (uid 65534)" in _start_refused(instance)
    os.remove(path)
    os.chown(instance, 65534, 65534)
    assert "the folder belongs to another user (uid 65534)" in _start_refused(instance)


def test_ownership_check_unit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "inst"
    assert len(demo_secret.load_or_create_secret(str(folder))) >= 32
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder / "demo-jwt-secret").st_mode) == 0o600
    assert demo_secret.load_or_create_secret(str(folder)) == (folder / "demo-jwt-secret").read_text()
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(SettingsError, match="the folder belongs to another user"):
        demo_secret.load_or_create_secret(str(folder))


def test_an_empty_secret_file_is_refused_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "demo-jwt-secret").write_text("")
    os.chmod(tmp_path / "demo-jwt-secret", 0o600)
    monkeypatch.setattr(demo_secret.time, "sleep", lambda _s: None)
    with pytest.raises(SettingsError, match="is empty; delete it"):
        demo_secret.load_or_create_secret(str(tmp_path))


def _flask_token(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "token", "cli-demo", "--admin"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_command_honours_demo_mode() -> None:
    instance = tempfile.mkdtemp(prefix="wsapp-demo-")
    # no key and no WSAPP_DEMO: refused, and no secret is made on the side
    out = _flask_token({"WSAPP_INSTANCE_PATH": instance})
    assert out.returncode == 2 and out.stdout == "" and "WSAPP_DEMO" in out.stderr
    assert not os.path.exists(os.path.join(instance, "demo-jwt-secret"))
    # WSAPP_DEMO=1: signed with the demo secret the demo server uses
    out = _flask_token({"WSAPP_INSTANCE_PATH": instance, "WSAPP_DEMO": "1"})
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    srv = _demo_server(instance)
    try:
        assert http(srv.url, "GET", "/api/clients", token=token).status == 200  # admin, and it verifies
    finally:
        srv.stop()
    # an untrustworthy demo folder stops the command too, with no token printed
    os.chmod(instance, 0o777)
    out = _flask_token({"WSAPP_INSTANCE_PATH": instance, "WSAPP_DEMO": "1"})
    assert out.returncode != 0 and out.stdout == "" and "writable by group or others" in out.stderr
