"""A user's own app, as a newcomer runs it: a plain `gunicorn -k gevent myapp:app` drains
on SIGTERM (1001) with or without wsapp's hooks line; a bad setting is one line per
problem and an exit, never a traceback, under gunicorn and `flask`; the `token`
command's `--claim` and `--rooms`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from typing import Any

import jwt
import pytest

from helpers import ROOT, SECRET, Server, make_token, read_close, recv_json
from helpers import ws_connect as connect


def empty_config() -> str:
    """gunicorn reads ./gunicorn.conf.py (wsapp's, with the hooks) when given no -c."""
    fd, path = tempfile.mkstemp(prefix="wsapp-empty-", suffix=".py")
    os.close(fd)
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSAPP_", "FLASK_"))}
    env.update(WSAPP_JWT_SECRET=SECRET, **extra)
    return env


# ---- the drain under a plain gevent worker -------------------------------------------


@pytest.mark.parametrize("config", ["examples/gunicorn_orders.py", "empty"], ids=["hooks_line", "no_hooks_line"])
def test_sigterm_closes_clients_1001_with_or_without_the_hooks_line(config: str) -> None:
    srv = Server(
        env={"WSAPP_RATE_LIMIT": "0", "WSAPP_SHUTDOWN_TIMEOUT": "3"},
        app="examples.orders:app",
        config=empty_config() if config == "empty" else config,
        args=("-k", "gevent", "--bind", "127.0.0.1:0", "--no-control-socket"),
        health="/watching",
    ).start()
    try:
        ws = connect(srv, "/ws/notify", make_token("alice"))
        assert recv_json(ws) == {"hello": "alice"}
        srv.signal(signal.SIGTERM)
        assert read_close(ws) == (1001, "server shutting down")
        assert srv.proc is not None and srv.proc.wait(20) == 0
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()


# ---- a bad setting in a user's own app ------------------------------------------------

BAD = {"FLASK_WSAPP_RATE_LIMIT": "fast"}
LINE = "wsapp: invalid setting WSAPP_RATE_LIMIT='fast': must be a number"


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=60
    )


def assert_one_line(out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    assert text.count(LINE) == 1, text


def test_a_bad_setting_under_flask_is_one_line_and_exit_2() -> None:
    out = run(["flask", "--app", "examples.orders", "announce", "x"], **BAD)
    assert out.returncode == 2, out.stderr
    assert_one_line(out)
    assert out.stderr.strip() == LINE


@pytest.mark.parametrize("preload", [False, True], ids=["worker", "preload"])
def test_a_bad_setting_under_plain_gunicorn_is_one_line_and_stops_the_master(preload: bool) -> None:
    """In a worker the master stops with gunicorn's "App failed to load" (4: a worker
    that exits 2 would be respawned forever); loaded by the master (`--preload`), 2."""
    args = ["gunicorn", "-c", empty_config(), "-k", "gevent", "--bind", "127.0.0.1:0", "--no-control-socket"]
    out = run([*args, *(["--preload"] if preload else []), "examples.orders:app"], **BAD)
    assert out.returncode == (2 if preload else 4), out.stderr
    assert_one_line(out)


def test_a_bad_setting_in_the_shipped_service_is_still_exit_2() -> None:
    out = run(["gunicorn", "-c", "gunicorn.conf.py", "app:app"], WSAPP_RATE_LIMIT="fast")
    assert out.returncode == 2
    assert out.stderr.strip() == LINE


def test_a_bad_setting_under_the_dev_server_is_one_line_and_exit_2() -> None:
    out = run(["flask", "--app", "examples.orders", "wsapp", "run", "--reload", "--port", "0"], **BAD)
    assert out.returncode == 2, out.stderr
    assert_one_line(out)


def test_a_bad_setting_in_process_still_raises() -> None:
    """A script or a test building the app gets the exception, not an exit."""
    from flask import Flask

    from wsapp import WSApp
    from wsapp.settings import SettingsError

    app = Flask(__name__)
    app.config["WSAPP_RATE_LIMIT"] = "fast"
    with pytest.raises(SettingsError):
        WSApp(app)


# ---- flask --app app token --claim k=v --rooms a,b -----------------------------------


def token(*args: str, **env: str) -> tuple[int, str, str]:
    out = run(["flask", "--app", "app", "token", *args], **env)
    return out.returncode, out.stdout.strip(), out.stderr


def claims_of(tok: str) -> dict[str, Any]:
    return jwt.decode(tok, SECRET, algorithms=["HS256"])  # type: ignore[no-any-return]


def test_token_claims_are_json_when_they_parse_else_strings() -> None:
    code, out, err = token(
        "alice", "--claim", "n=3", "--claim", "s=shop", "--claim", 'tags=["a",1]', "--claim", 'q="3"', "--admin"
    )
    assert code == 0, err
    claims = claims_of(out)
    assert (claims["sub"], claims["roles"]) == ("alice", ["admin"])
    assert (claims["n"], claims["s"], claims["tags"], claims["q"]) == (3, "shop", ["a", 1], "3")


def test_token_rooms_go_in_the_rooms_claim() -> None:
    code, out, err = token("alice", "--rooms", "lobby, shop:*", WSAPP_ROOMS_CLAIM="shops")
    assert code == 0, err
    assert claims_of(out)["shops"] == ["lobby", "shop:*"]
    code, out, err = token("alice", "--rooms", "lobby")
    assert code == 0, err
    assert claims_of(out)["rooms"] == ["lobby"]


def test_token_claim_errors_are_usage_errors() -> None:
    for bad in ("novalue", "=x", "sub=bob", "exp=1"):
        code, _out, err = token("alice", "--claim", bad)
        assert code == 2 and "--claim" in err and "Traceback" not in err, err


def test_parse_claims() -> None:
    from wsapp.http.demo import parse_claims

    assert parse_claims(["a=1", "b=x=y", "c=", "d=null", "e={}"]) == {"a": 1, "b": "x=y", "c": "", "d": None, "e": {}}


@pytest.mark.parametrize("config", ["examples/gunicorn_orders.py", "empty"], ids=["hooks_line", "no_hooks_line"])
def test_preload_without_the_hooks_line_warns_once(config: str) -> None:
    """`--preload` loads the app in the master, where no worker exists to install the
    drain in: one warning naming the line, and none when the config has it."""
    from wsapp.server import NO_DRAIN

    srv = Server(
        env={"WSAPP_RATE_LIMIT": "0"},
        app="examples.orders:app",
        config=empty_config() if config == "empty" else config,
        args=("-k", "gevent", "--bind", "127.0.0.1:0", "--no-control-socket", "--preload"),
        health="/watching",
    ).start()
    try:
        assert srv.log().count(NO_DRAIN) == (1 if config == "empty" else 0), srv.log()
    finally:
        srv.stop()
