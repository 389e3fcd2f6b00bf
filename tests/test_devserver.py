"""`flask --app myapp wsapp run --reload` (wsapp/devserver.py), a real process on a real
socket: a handshake gets 101 and chat's welcome through the app's normal Flask path, and
a change to the app's file restarts the serving process (a new pid in its start line)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, SECRET, free_port, make_token, raw_handshake, recv_json
from helpers import ws_connect as connect

STARTED = re.compile(r"wsapp dev server \(pid (\d+)\): serving WebSockets on http://127\.0\.0\.1:(\d+)/")

APP = """\
from flask import Flask

from wsapp import WSApp

app = Flask(__name__)
ws = WSApp(app)
VERSION = {version}
"""


class DevServer:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.log_path = folder / "dev.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WSAPP_", "FLASK_"))}
        env.update(WSAPP_JWT_SECRET=SECRET, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                # the repo's own files (other work in this checkout) restart nothing: only the app's
                [sys.executable, "-m", "flask", "--app", "devapp", "wsapp", "run", "--reload"]
                + ["--port", str(port), "--exclude-patterns", f"{ROOT}{os.sep}*"],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        return [int(m.group(1)) for m in STARTED.finditer(self.log())]

    def wait_for(self, what: str, check: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dev server exited with {self.proc.returncode}:\n{self.log()}")
            if check():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what}:\n{self.log()}")

    @property
    def ws_url(self) -> str:  # what helpers.ws_connect reads
        return f"ws://127.0.0.1:{self.port}"

    def listening(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/nothing-here", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 404
        except OSError:
            return False
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def dev() -> Iterator[DevServer]:
    folder = Path(tempfile.mkdtemp(prefix="wsapp-dev-"))
    (folder / "devapp.py").write_text(APP.format(version=1))
    srv = DevServer(folder, free_port())
    try:
        yield srv
    finally:
        srv.stop()


def welcome(srv: DevServer, client_id: str) -> dict[str, object]:
    ws = connect(srv, "/ws/chat", make_token(client_id))  # type: ignore[arg-type]
    try:
        return recv_json(ws)
    finally:
        ws.close()


def test_the_dev_server_serves_websockets_and_restarts_on_a_change(dev: DevServer) -> None:
    dev.wait_for("no start line", lambda: dev.pids() and dev.listening())
    first = dev.pids()[-1]
    status, headers, _rest, sock = raw_handshake(
        dev.port, "/ws/chat", {"Authorization": f"Bearer {make_token('alice')}"}
    )
    sock.close()
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    got = welcome(dev, "alice")
    assert (got["type"], got["client_id"]) == ("welcome", "alice")

    (dev.folder / "devapp.py").write_text(APP.format(version=2))
    dev.wait_for("no restart after the change", lambda: any(p != first for p in dev.pids()) and dev.listening())
    assert "devapp.py', reloading" in dev.log()
    got = welcome(dev, "bob")  # the new process serves WebSockets too
    assert (got["type"], got["client_id"]) == ("welcome", "bob")
    assert "Traceback" not in dev.log()


def test_init_app_registers_the_command_group() -> None:
    """`flask --app devapp wsapp run --help`: WSApp.init_app put the group on app.cli."""
    folder = Path(tempfile.mkdtemp(prefix="wsapp-dev-"))
    (folder / "devapp.py").write_text(APP.format(version=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSAPP_", "FLASK_"))}
    env.update(WSAPP_JWT_SECRET=SECRET, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "devapp", "wsapp", "run", "--help"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--reload" in out.stdout
