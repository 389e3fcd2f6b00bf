"""Test helpers: a real gunicorn (gevent worker) process, tokens, HTTP and WebSocket clients."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:  # imported where used: the pure tests run without either installed
    import redis
    import websocket

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
_LISTENING = re.compile(r"Listening at: http://[^:\s]+:(\d+)")


def make_token(
    client_id: str | None = "alice",
    *,
    admin: bool = False,
    ttl: float = 3600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    now = time.time()
    body: dict[str, Any] = {"iat": int(now), "exp": int(now + ttl)}
    if client_id is not None:
        body["sub"] = client_id
    if admin:
        body["roles"] = ["admin"]
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=algorithm)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A gunicorn process serving app:app with the gevent worker, on a port it picked.

    It runs with a known secret (`SECRET`); `env={"WSAPP_JWT_SECRET": ""}` asks for demo
    mode instead (the helper then sets `WSAPP_DEMO=1` unless the test set it)."""

    env: dict[str, str] = field(default_factory=dict)
    # what gunicorn serves, with which config file and extra arguments, and the path
    # polled until it answers 200 (another app: `Server(app="examples.orders:app", ...)`)
    app: str = "app:app"
    config: str = "gunicorn.conf.py"
    args: tuple[str, ...] = ()
    health: str = "/healthz"
    # the soft descriptor limit gunicorn starts with (as systemd would set it), or None: ours
    nofile_soft: int | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="wsapp-", suffix=".log")[1]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
        env.update(
            {
                "WSAPP_HOST": "127.0.0.1",
                "WSAPP_PORT": "0",
                "WSAPP_JWT_SECRET": SECRET,
                "WSAPP_INSTANCE_PATH": tempfile.mkdtemp(prefix="wsapp-instance-"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        if not env["WSAPP_JWT_SECRET"] and not env.get("WSAPP_JWT_PUBLIC_KEY"):
            # a test that unsets the secret asks for demo mode, which must be asked for by name
            env.setdefault("WSAPP_DEMO", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", *(["-c", self.config] if self.config else []), *self.args, self.app],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if self.nofile_soft is None else self._lower_nofile,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            match = _LISTENING.search(self.log())
            if match and not self.port:
                self.port = int(match.group(1))
            if self.port and self._healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not become healthy:\n{self.log()}")

    def _lower_nofile(self) -> None:
        """In the child, before gunicorn: lower the soft descriptor limit (only there, so
        the test process's own descriptors do not count against it)."""
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile_soft, hard))

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}{self.health}", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)


@dataclass
class HttpResult:
    status: int
    body: Any
    headers: dict[str, str]


def http(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResult:
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            payload = resp.read()
            status, rh = resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        payload, status, rh = err.read(), err.code, dict(err.headers)
    try:
        parsed: Any = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return HttpResult(status, parsed, rh)


def ws_connect(
    server: Server, path: str = "/ws/chat", token: str | None = None, timeout: float = 10, **kwargs: Any
) -> websocket.WebSocket:
    """A websocket-client connection; the token goes in a Bearer header unless told otherwise."""
    import websocket

    header = list(kwargs.pop("header", []))
    if token is not None:
        header.append(f"Authorization: Bearer {token}")
    return websocket.create_connection(server.ws_url + path, timeout=timeout, header=header, **kwargs)


def recv_json(ws: websocket.WebSocket, timeout: float = 10) -> dict[str, Any]:
    ws.settimeout(timeout)
    return json.loads(ws.recv())  # type: ignore[no-any-return]


def recv_until(ws: websocket.WebSocket, pred: Any, timeout: float = 10) -> dict[str, Any]:
    """Read JSON frames until one satisfies `pred`; return it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no matching frame")
        msg = recv_json(ws, left)
        if pred(msg):
            return msg


def chat_client(server: Server, client_id: str, **kw: Any) -> websocket.WebSocket:
    """A /ws/chat connection for `client_id`, its welcome frame already read."""
    ws = ws_connect(server, "/ws/chat", make_token(client_id, **kw))
    welcome = recv_json(ws)
    assert welcome["type"] == "welcome" and welcome["client_id"] == client_id
    return ws


def read_close(ws: websocket.WebSocket, timeout: float = 10) -> tuple[int, str]:
    """Read frames until the server's close frame; return its (code, reason)."""
    import websocket

    ws.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            return code, data[2:].decode("utf-8", "replace")
    raise TimeoutError("no close frame")


def raw_handshake(
    port: int,
    path: str = "/ws/echo",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5,
    rcvbuf: int | None = None,
) -> tuple[int, dict[str, str], bytes, socket.socket]:
    """Send a hand-written opening handshake; return status, headers, body and the socket."""
    base = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    for k, v in (headers or {}).items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so the TCP window really is small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in base.items()) + "\r\n"
    sock.sendall(req.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if status != 101:
        length = int(hdrs.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, hdrs, rest, sock


class Reader:
    """Reads a websocket-client connection in a thread, so its pings are answered at once,
    and queues the JSON frames it gets."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        import queue
        import threading

        self.ws = ws
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self.closed: tuple[int, str] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import websocket

        self.ws.settimeout(None)
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                self.frames.put(json.loads(data))
        except Exception:  # noqa: BLE001 - the connection ended; the test looks at what was read
            pass

    def next(self, pred: Any = lambda m: True, timeout: float = 10) -> dict[str, Any]:
        import queue

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                msg = self.frames.get(timeout=max(0.0, left))
            except queue.Empty:
                raise TimeoutError("no matching frame") from None
            if pred(msg):
                return msg

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))


def unavailable(why: str) -> None:
    """A real dependency (nginx, redis-server, chromium) is missing: fail in CI, skip elsewhere."""
    import pytest

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}; with CI set these tests must run (bash scripts/setup.sh --system installs it)")
    pytest.skip(why)  # only outside CI


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    """A redis-server on one port that a test may stop and start again (same port, empty data)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = args  # more redis-server settings, e.g. "--maxmemory", "8mb"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


class RedisClusterProcess:
    """A Redis Cluster of three primaries on free loopback ports (`redis-cli --cluster create`),
    with `RedisProcess`'s interface: `stop` then `start` brings the same cluster back empty
    (each node keeps its slots in its own nodes.conf)."""

    def __init__(self, primaries: int = 3) -> None:
        self.ports = [_free_cluster_port() for _ in range(primaries)]
        self.dir = Path(tempfile.mkdtemp(prefix="wsapp-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created = False

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """Running while every node is; None before the first start."""
        if not self.procs:
            return None
        return next((p for p in self.procs if p.poll() is not None), self.procs[0])

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        import redis

        self.procs = [
            subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(self.dir / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            for port in self.ports
        ]
        for port in self.ports:
            _wait(lambda port=port: redis.Redis(port=port, socket_timeout=1).ping(), "a cluster node answers")
        if not self.created:
            subprocess.run(
                ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self.created = True
        for port in self.ports:
            _wait(lambda port=port: _cluster_state(port) == "ok", "cluster_state:ok")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)

    def client(self) -> Any:
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.ports[0], socket_timeout=2)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000, below 65536) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_state(port: int) -> str:
    import redis

    info = redis.Redis(port=port, socket_timeout=1, decode_responses=True).cluster("INFO")
    return str(info.get("cluster_state", "")) if isinstance(info, dict) else ""


def _wait(check: Any, what: str, timeout: float = 30) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"redis: not within {timeout}s: {what}")


def delivery(body: Any) -> Any:
    """What an `/api/send` or `/api/broadcast` answer says of delivery (`delivered`, and
    `stored` when present), without the position fields (`stream`, `offset`, `epoch`)
    that tests of delivery do not pin; anything else (an error body) unchanged."""
    if isinstance(body, dict) and "delivered" in body and "error" not in body:
        return {key: body[key] for key in ("delivered", "stored") if key in body}
    return body


def wait_for(check: Any, what: str, timeout: float = 15) -> None:
    """Poll `check()` until it is true, or fail naming `what` (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
