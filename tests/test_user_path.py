"""The user's path, not the developer's: what a fresh clone does with the README alone.

1. `bash scripts/run.sh` (the README's first command) in a copy of the repository
   that has no `.venv`: it must make the venv from `requirements.txt` alone, with no pip
   cache, and serve `/healthz`, the demo page, a demo token and a WebSocket round trip.
2. A wheel built from the copy, installed as `wsapp[redis,client]` into another fresh
   venv, imports `wsapp.emitter` and `wsapp.client` from outside any checkout, and its
   terminal client makes a round trip against the server of step 1.
3. `bash scripts/lock.sh` run again writes the same pinned files (PyPI, no pip).

The copy holds the files a clone has: what git tracks plus new files it does not
ignore (`git ls-files --cached --others --exclude-standard`), with their contents in
the working tree, and never `.venv`, `instance/` or caches (ignored). In CI, which runs
in a fresh clone, that is exactly the clone; on a developer's machine it also tests
edits not committed yet, which is what the next commit will hold. Needs PyPI; under
`CI=true` nothing here skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from helpers import ROOT, free_port, unavailable

pytestmark = pytest.mark.timeout(900)
INSTALL_TIMEOUT_S = 600  # pip with no cache: gevent, cryptography, ... from PyPI


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a new user's shell: no WSAPP_*, no venv on PATH, no pip cache."""
    venv_dirs = {str(ROOT / ".venv" / "bin"), os.environ.get("VIRTUAL_ENV", "/nonexistent") + "/bin"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WSAPP_", "PYTHON", "VIRTUAL_ENV", "PIP_FIND_LINKS", "PROMETHEUS_"))
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_dirs)
    env["PIP_NO_CACHE_DIR"] = "1"
    env.update(extra)
    return env


def run(argv: list[str], cwd: Path, timeout: float = INSTALL_TIMEOUT_S, **extra: str) -> str:
    done = subprocess.run(argv, cwd=cwd, env=user_env(**extra), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a clone would have, copied to a new folder (no .venv, no instance/)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        unavailable("git and a git checkout are needed to copy what a clone holds")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    dest = tmp_path_factory.mktemp("clone") / "wsapp"
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree will be gone from the next commit
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    assert not (dest / ".venv").exists()
    return dest


class RunSh:
    """`bash scripts/run.sh` in the copy, on a free port (`WSAPP_PORT`, as the README says)."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = checkout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = checkout.parent / "run.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "scripts/run.sh"],
                cwd=checkout,
                env=user_env(WSAPP_PORT=str(self.port)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"scripts/run.sh exited with {self.proc.returncode}:\n{self.log()[-5000:]}")
            try:
                if fetch(self.url + "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no /healthz within {timeout} s:\n{self.log()[-5000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # run.sh exec's gunicorn: this is the master
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def run_sh(checkout: Path) -> Iterator[RunSh]:
    server = RunSh(checkout)
    try:
        server.wait_healthy(INSTALL_TIMEOUT_S)
        yield server
    finally:
        server.stop()


def demo_token(server: RunSh, client_id: str) -> str:
    body = json.dumps({"client_id": client_id}).encode()
    status, _, payload = fetch(server.url + "/api/demo/token", body, {"Content-Type": "application/json"})
    assert status == 200
    return str(json.loads(payload)["token"])


def test_readme_first_command_serves_page_token_and_a_round_trip(run_sh: RunSh) -> None:
    status, content_type, page = fetch(run_sh.url + "/")
    assert status == 200 and content_type.startswith("text/html")
    assert b"<script" in page and b"app.js" in page
    assert fetch(run_sh.url + "/static/app.js")[0] == 200
    assert fetch(run_sh.url + "/wsapp.js")[0] == 200  # the page's client library (an ES module import)

    token = demo_token(run_sh, "first-contact")
    ws = websocket.create_connection(f"ws://127.0.0.1:{run_sh.port}/ws/echo", timeout=10, subprotocols=[token])
    try:
        ws.send("hello from a fresh clone")
        assert ws.recv() == "hello from a fresh clone"
    finally:
        ws.close()
    assert "DEMO MODE" in run_sh.log()


def test_readme_token_command_mints_a_token_the_demo_server_accepts(run_sh: RunSh) -> None:
    """`WSAPP_DEMO=1 .venv/bin/flask --app app token alice`, as the README's "Try it" has it."""
    flask = str(run_sh.checkout / ".venv" / "bin" / "flask")
    token = run([flask, "--app", "app", "token", "readme-cli"], run_sh.checkout, timeout=60, WSAPP_DEMO="1").strip()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{run_sh.port}/ws/chat", timeout=10, header=[f"Authorization: Bearer {token}"]
    )
    try:
        assert json.loads(ws.recv())["client_id"] == "readme-cli"
    finally:
        ws.close()


def test_run_sh_made_its_venv_from_requirements_txt_alone(run_sh: RunSh) -> None:
    venv = run_sh.checkout / ".venv"
    stamps = [p.name for p in venv.glob(".installed-*")]
    assert len(stamps) == 1 and stamps[0].endswith("-requirements.txt"), stamps
    freeze = run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], run_sh.checkout, timeout=60).lower()
    assert "gunicorn==" in freeze and "packaging==" in freeze  # gunicorn[gevent]
    assert "pytest" not in freeze and "websocket-client" not in freeze  # nothing from the dev set


def foreign_files(wheel: Path) -> list[str]:
    """Files in a wheel outside the `wsapp` package and its metadata."""
    with zipfile.ZipFile(wheel) as zf:
        return [n for n in zf.namelist() if not n.startswith(("wsapp/", "wsapp-"))]


def test_wheel_with_extras_works_outside_the_checkout(
    checkout: Path, run_sh: RunSh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    where = tmp_path_factory.mktemp("elsewhere")  # no wsapp/ folder here or above
    venv = where / "venv"
    python = str(venv / "bin" / "python")
    run(["python3", "-m", "venv", str(venv)], where, timeout=120)
    run([python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(where / "dist"), str(checkout)], where)
    (wheel,) = (where / "dist").glob("wsapp-*.whl")
    assert foreign_files(wheel) == []
    run([python, "-m", "pip", "install", f"{wheel}[redis,client]"], where)

    out = run(
        [
            python,
            "-c",
            "import wsapp, wsapp.emitter, wsapp.client; print(wsapp.__file__); print(wsapp.emitter.Emitter)",
        ],
        where,
        timeout=60,
    )
    assert out.splitlines()[0].startswith(str(venv)), out  # the installed copy, not a checkout
    assert "--cacert" in run([python, "-m", "wsapp.client", "--help"], where, timeout=60)

    # the installed terminal client against the server run.sh started
    token = demo_token(run_sh, "from-the-wheel")
    done = subprocess.run(
        [python, "-m", "wsapp.client", f"ws://127.0.0.1:{run_sh.port}/ws/echo", "--token", token],
        cwd=where,
        env=user_env(),
        input="round trip from the wheel\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["< round trip from the wheel"]


def test_lock_files_regenerate_unchanged(tmp_path: Path) -> None:
    """`bash scripts/lock.sh` on pyproject.toml writes the committed requirements files again."""
    for name in ("pyproject.toml", "requirements.txt", "requirements-dev.txt", "scripts/lock.sh"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        unavailable("uv is not installed (it is in requirements-dev.txt)")
    run(["bash", "scripts/lock.sh"], tmp_path, timeout=300, UV=str(uv))
    for name in ("requirements.txt", "requirements-dev.txt"):
        assert (tmp_path / name).read_text() == (ROOT / name).read_text(), f"{name}: run bash scripts/lock.sh"
