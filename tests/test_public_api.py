"""The public API: one import (`wsapp.__all__`, lazily), typed (py.typed in the wheel,
mypy strict on a user's file), and an `init_app` that starts nothing until the app serves."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from flask.cli import FlaskGroup

import wsapp
from wsapp import WSApp, blueprint

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-with-at-least-32-bytes-of-entropy!"

PUBLIC = {
    "CloseCode",
    "Connection",
    "Emitter",
    "FrameError",
    "Identity",
    "Settings",
    "SettingsError",
    "Sock",
    "WSApp",
    "blueprint",
    "on_starting",
    "post_worker_init",
}


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


# ---- one import -------------------------------------------------------------------------


def test_the_public_names_are_pinned() -> None:
    assert set(wsapp.__all__) == PUBLIC
    assert len(wsapp.__all__) == len(PUBLIC)
    assert set(dir(wsapp)) >= PUBLIC


def test_each_public_name_is_its_module_s_own_object() -> None:
    from wsapp import auth, emitter, errors, extension, protocol, server, session, settings, site, transport

    homes = {
        "WSApp": extension.WSApp,
        "Connection": session.Connection,
        "Identity": auth.Identity,
        "FrameError": protocol.FrameError,
        "CloseCode": errors.CloseCode,
        "Emitter": emitter.Emitter,
        "on_starting": server.on_starting,
        "post_worker_init": server.post_worker_init,
        "blueprint": site.blueprint,
        "Settings": settings.Settings,
        "SettingsError": settings.SettingsError,
        "Sock": transport.Sock,
    }
    assert set(homes) == PUBLIC
    for name, obj in homes.items():
        assert getattr(wsapp, name) is obj, name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wsapp.nope  # noqa: B018
    with pytest.raises(ImportError):
        exec("from wsapp import nope", {})


def test_the_gunicorn_hooks_import_neither_flask_nor_redis() -> None:
    """gunicorn's master imports the hooks before the worker monkey-patches."""
    done = run_python(
        "import sys\n"
        "from wsapp import on_starting, post_worker_init, SettingsError\n"
        "print(sorted(m for m in ('flask', 'redis', 'werkzeug', 'jwt') if m in sys.modules))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_everything_but_the_emitter_imports_without_redis() -> None:
    done = run_python(
        "import sys\n"
        "sys.modules['redis'] = None  # not installed\n"
        "from wsapp import WSApp, Connection, Identity, FrameError, blueprint, Sock, CloseCode, Settings\n"
        "from flask import Flask\n"
        "app = Flask('x'); app.config['WSAPP_JWT_SECRET'] = 'x' * 40\n"
        "ws = WSApp(app); app.register_blueprint(blueprint(ws))\n"
        "try:\n"
        "    from wsapp import Emitter\n"
        "except ImportError:\n"
        "    print('emitter needs redis')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "emitter needs redis"


# ---- typed --------------------------------------------------------------------------------

USER_FILE = """\
from typing import Any

from flask import Flask

from wsapp import Connection, FrameError, Identity, SettingsError, WSApp, blueprint


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["WSAPP_JWT_SECRET"] = "x" * 40
    try:
        ws = WSApp(app)
    except SettingsError as err:
        raise SystemExit(str(err)) from err
    app.register_blueprint(blueprint(ws))

    @ws.route("/ws/echo")
    def echo(conn: Connection) -> None:
        for message in conn:
            conn.send(message)

    @ws.on("ping")
    def ping(conn: Connection, frame: dict[str, Any]) -> None:
        if "n" not in frame:
            raise FrameError("bad_frame", "n is required")

    @ws.authorize_join
    def may_join(identity: Identity, room: str) -> bool:
        return room.startswith(identity.client_id)

    @app.post("/ship/<to>")
    def ship(to: str) -> dict[str, int]:
        delivered: int = ws.send(to, {"shipped": True})
        return {"delivered": delivered}

    return app
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as setuptools builds it for the wheel (`build_py`: the wheel's files, the
    package data included; the venv has no `wheel` for bdist_wheel), from a copy of the
    sources so that no build/ lands in the checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "wsapp"), str(src / "wsapp")], check=True)
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "--build-lib", str(out)]
    done = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def test_the_built_package_carries_py_typed_and_the_javascript_client(built: Path) -> None:
    names = {str(p.relative_to(built)) for p in built.rglob("*") if p.is_file()}
    assert "wsapp/py.typed" in names
    assert {"wsapp/static/wsapp.js", "wsapp/static/wsapp.d.ts"} <= names
    assert any(n.startswith("wsapp/redis/scripts/") and n.endswith(".lua") for n in names)
    assert not any("__pycache__" in n for n in names)


def test_mypy_strict_passes_on_a_user_s_file_against_the_built_package(built: Path, tmp_path: Path) -> None:
    """Found on the path as an installed package, not the checkout's source: without
    py.typed mypy would refuse it ("missing library stubs or py.typed marker")."""
    (tmp_path / "user_app.py").write_text(USER_FILE)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--python-executable", sys.executable]
    env = {"PYTHONPATH": str(built), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([*mypy, "user_app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # and it does check: a wrong type in the user's file is an error
    (tmp_path / "user_app.py").write_text(USER_FILE.replace("delivered: int =", "delivered: str ="))
    done = subprocess.run([*mypy, "user_app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1 and "user_app.py" in done.stdout, done.stdout + done.stderr


# ---- init_app is cheap ----------------------------------------------------------------------


@pytest.fixture
def redis_listener() -> socket.socket:
    """A port that would see the backplane's connection (nothing answers on it)."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        listener.setblocking(False)
        yield listener


def connection_arrived(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_init_app_starts_no_greenlet_and_no_redis_connection(redis_listener: socket.socket) -> None:
    app = Flask(__name__)
    port = redis_listener.getsockname()[1]
    app.config.update(WSAPP_JWT_SECRET=SECRET, WSAPP_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    ws = WSApp(app)
    try:
        app.register_blueprint(blueprint(ws))
        flask_cli = FlaskGroup(create_app=lambda: app)
        result = app.test_cli_runner().invoke(flask_cli, ["routes"])  # `flask routes`
        assert "/readyz" in result.output
        assert ws._heartbeat is None
        assert ws.service.backplane._supervisor is None  # type: ignore[attr-defined]
        assert not connection_arrived(redis_listener)
    finally:
        ws.close()
    assert not connection_arrived(redis_listener)  # close() of an app that never served starts nothing either


def test_the_first_request_starts_them_and_close_stops_them_for_good() -> None:
    app = Flask(__name__)
    app.config.update(WSAPP_JWT_SECRET=SECRET)
    ws = WSApp(app)
    app.register_blueprint(blueprint(ws))
    assert ws._heartbeat is None
    assert app.test_client().get("/readyz").status_code == 200
    beat = ws._heartbeat
    assert beat is not None and not beat.dead
    ws.close()
    assert ws._heartbeat is None
    assert app.test_client().get("/healthz").status_code == 200  # a request after close() ...
    assert ws._heartbeat is None  # ... starts nothing again (the drain closed the app)


@pytest.mark.parametrize("fast", ["fast", "off"])
def test_the_first_handshake_starts_them(fast: str) -> None:
    app = Flask(__name__)
    app.config.update(WSAPP_JWT_SECRET=SECRET, WSAPP_FAST_HANDSHAKES=fast)
    ws = WSApp(app)
    try:
        assert ws._heartbeat is None
        with ws.test_client(client_id="alice") as client:
            assert client.receive(timeout=5)["type"] == "welcome"
            assert ws._heartbeat is not None
    finally:
        ws.close()
