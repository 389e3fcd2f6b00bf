"""Benchmark wsapp against its peers with one command; print Markdown tables (figures, ratios, CPU).

    bench/run.sh              # full run: every workload 2 times per stack, medians (~45 min)
    bench/run.sh --quick      # smoke run: 1 time, short windows, fan-out and storm to 2,000
    bench/run.sh --profile    # also py-spy wsapp's worker under echo, fan-out and handshakes

Stacks, each one process pinned to core 0 with taskset:
  wsapp           this project, as shipped (gunicorn.conf.py, one gevent worker), a JWT
                  verified, Host, Origin and admission checked on every handshake; the
                  benchmark changes only: rate limit off, a 1,024-message send queue,
                  log level WARNING, connection limits raised for 10,000 clients
  wsapp+Redis     the same with WSAPP_REDIS_URL (a redis-server started for the run,
                  on core 1): the reconnect storm only
  websockets      bench/peers/websockets_app.py: python websockets' asyncio server,
                  compression off, max_size 65536, no checks
  flask-sock      bench/peers/flask_sock_app.py: the plain dict-of-sockets app
  Flask-SocketIO  bench/peers/socketio_app.py
  picows          bench/peers/picows_app.py: picows' asyncio server (Cython framing)
  Granian         bench/peers/granian_app.py: an RSGI app on Granian (Rust), 1 worker,
                  1 runtime thread
  Bun             bench/peers/bun_app.js: Bun.serve's WebSocket server, the ceiling
  Socket.IO-node  bench/peers/socketio_node.js: socket.io 4 on Node
  Socket.IO-node+Redis  the same with @socket.io/redis-adapter on the run's redis-server:
                  the reconnect storm only
Only wsapp verifies a token (an HS256 JWT) on every handshake; no peer checks anything
(the tables say so). A stack that cannot run a workload gets an empty cell, and the
reason is printed under the tables.
The load generator (bench/loadgen, Go + gorilla/websocket) runs pinned to core 1 and
reports its own CPU use and the server worker's over each measured window: a figure
with the generator near 100% and the server well below it is client-bound.

Results: the table on stdout, and bench/results/<time>.md / .json with every repetition.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import importlib.util
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / ".build" / "loadgen"
RESULTS = BENCH / "results"
PYTHON = sys.executable
SECRET = "bench-" + secrets.token_hex(24)  # 54 bytes: HS256 wants 32+
SERVER_CORE, CLIENT_CORE = "0", "1"
_LISTENING = re.compile(r"Listening at: http://[^:\s]+:(\d+)")
# gunicorn's and our peers' wording, and Granian's (its worker process is the one measured)
_WORKER = re.compile(r"(?:Booting worker with pid|Spawning worker-1 with PID): (\d+)")


# ---- the stacks ---------------------------------------------------------------------------


@dataclass
class Stack:
    name: str
    proto: str  # the loadgen dialect
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    extra: bool = False  # runs only the workloads that name it (Workload.stacks)
    auth: str = "none"  # what it checks on every handshake (printed with the tables)
    redis: bool = False  # needs the run's redis-server
    ours: str = "wsapp"  # the wsapp stack its ratio is taken against


NODE_BIN = BENCH / "node_modules" / ".bin"
# the stack every ratio is also given against, marked in the tables
CEILING = "Bun"


def stacks(redis_url: str) -> list[Stack]:
    gunicorn = [PYTHON, "-m", "gunicorn"]
    granian = [PYTHON, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1", "--port", "{port}"]
    # one worker process with one runtime thread, like one gevent worker; limits as wsapp's
    granian += ["--workers", "1", "--runtime-threads", "1", "--backlog", "2048", "--backpressure", "25000"]
    granian += ["--loop", "asyncio"]  # the other asyncio peers' loop (auto would pick uvloop if it were installed)
    granian += ["--no-access-log", "--log-level", "info", "bench.peers.granian_app:app"]
    jwt = "HS256 JWT verified, Host, Origin, admission"
    peer_opts = ["-c", "bench/peers/gunicorn.conf.py"]
    wsapp_env = {
        "WSAPP_HOST": "127.0.0.1",
        "WSAPP_PORT": "0",
        "WSAPP_JWT_SECRET": SECRET,
        "WSAPP_RATE_LIMIT": "0",
        # a storm's dropped sessions may still be registered when their clients are back
        "WSAPP_MAX_CONNECTIONS": "25000",
        "WSAPP_MAX_CONNECTIONS_PER_CLIENT": "1000",
        "WSAPP_WORKER_CONNECTIONS": "25000",
        "WSAPP_SEND_QUEUE": "1024",
        "WSAPP_LOG_LEVEL": "WARNING",
        "WSAPP_SHUTDOWN_TIMEOUT": "3",
        "WSAPP_INSTANCE_PATH": tempfile.mkdtemp(prefix="wsapp-bench-"),
    }
    return [
        Stack("wsapp", "wsapp", gunicorn + ["-c", "gunicorn.conf.py", "app:app"], wsapp_env, auth=jwt),
        Stack(
            "wsapp+Redis",
            "wsapp",
            gunicorn + ["-c", "gunicorn.conf.py", "app:app"],
            # one worker, as the wsapp row (with Redis the default is one per core, and the
            # server's core is one: two workers would share it)
            {**wsapp_env, "WSAPP_REDIS_URL": redis_url, "WSAPP_WORKERS": "1"},
            extra=True,
            auth=jwt,
            redis=True,
        ),
        Stack("websockets", "plain", [PYTHON, "bench/peers/websockets_app.py"]),
        Stack("flask-sock", "plain", gunicorn + peer_opts + ["bench.peers.flask_sock_app:app"]),
        Stack("Flask-SocketIO", "sio", gunicorn + peer_opts + ["bench.peers.socketio_app:app"]),
        Stack("picows", "plain", [PYTHON, "bench/peers/picows_app.py"]),
        Stack("Granian", "plain", granian),
        Stack("Bun", "plain", [str(NODE_BIN / "bun"), "bench/peers/bun_app.js"]),
        Stack("Socket.IO-node", "sio", ["node", "bench/peers/socketio_node.js"]),
        Stack(
            "Socket.IO-node+Redis",
            "sio",
            ["node", "bench/peers/socketio_node.js"],
            {"REDIS_URL": redis_url},
            extra=True,
            redis=True,
            ours="wsapp+Redis",
        ),
    ]


class Redis:
    """A throw-away redis-server for the wsapp+Redis stack, on core 1 with the loadgen."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", self.dir, "--maxclients", "20000"]
        self.proc = subprocess.Popen(taskset(CLIENT_CORE) + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One gunicorn, pinned to SERVER_CORE, on a port it picked; `worker` is its worker pid."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{stack.proto}-", suffix=".log")[1])
        self.port = 0
        self.worker = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
        env.update(self.stack.env)
        env["PYTHONUNBUFFERED"] = "1"
        argv = self.stack.argv
        if "{port}" in argv:  # a server that cannot pick its own port (Granian)
            argv = [a.replace("{port}", str(free_port())) for a in argv]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                taskset(SERVER_CORE) + argv,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.stack.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            text = self.log()
            port, worker = _LISTENING.search(text), _WORKER.search(text)
            if port and worker:
                self.port, self.worker = int(port.group(1)), int(worker.group(1))
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass
            time.sleep(0.05)
        text = self.log()  # before stop() removes the log
        self.stop()
        raise RuntimeError(f"{self.stack.name} did not start:\n{text[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.worker}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(8)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: gunicorn and its worker
            self.proc.wait(5)
        text = self.log()
        if "Traceback" in text:  # keep the evidence of a server-side error, drop the rest
            RESULTS.mkdir(exist_ok=True)
            kept = RESULTS / f"server-error-{self.stack.proto}-{time.strftime('%H%M%S')}.log"
            kept.write_text(
                "\n".join(ln for ln in text.splitlines() if "GET /ws/" not in ln and "wsapp.connections" not in ln)[
                    -20000:
                ]
            )
            print(f"  server log with a traceback kept in {kept}", file=sys.stderr)
        self.log_path.unlink(missing_ok=True)


def taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if (os.cpu_count() or 1) >= 2 else []


# ---- the workloads -------------------------------------------------------------------------


@dataclass
class Workload:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    args: list[str]
    target: str = ""  # the issue's python-websockets figure, for reference
    kind: str = "loadgen"  # or "idle"
    timeout: float = 300
    # the stacks that run it (None: every stack that is not `extra`); the args for a
    # stack when they differ (python websockets has no HTTP API, its storm checks an echo)
    stacks: tuple[str, ...] | None = None
    args_for: dict[str, list[str]] = field(default_factory=dict)
    # why a stack sits out (printed under the tables; the `extra` stacks have one line)
    why_not: dict[str, str] = field(default_factory=dict)

    def runs_on(self, stack: Stack) -> bool:
        return stack.name in self.stacks if self.stacks is not None else not stack.extra

    def argv(self, stack: Stack) -> list[str]:
        return self.args_for.get(stack.name, self.args)


ISSUE14 = "not run in this row since it was added (issue 14 compared wsapp and python websockets)"


def workloads(quick: bool) -> list[Workload]:
    storm_n = 2000 if quick else 10000
    storm = ["-workload", "storm", "-conns", str(storm_n), "-dialers", "500"]
    d = ["-duration", "2s", "-warmup", "0.5s"] if quick else ["-duration", "5s", "-warmup", "1s"]
    rounds = ["-rounds", "8" if quick else "20"]
    big = 2000 if quick else 10000
    idle_n = 500 if quick else 2000
    fan = ["-workload", "fanout", "-size", "128"]
    return [
        Workload(
            "echo",
            "echo, 50 conns (64 B)",
            "msg/s",
            True,
            ["-workload", "echo", "-conns", "50", "-size", "64"] + d,
            "ahead of websockets",
        ),
        Workload(
            "echo_pipelined",
            "echo, 50 conns, 8 in flight each (server capacity)",
            "msg/s",
            True,
            ["-workload", "echo", "-conns", "50", "-depth", "8", "-size", "64"] + d,
        ),
        Workload(
            "latency",
            "echo, 1 conn, p50",
            "µs",
            False,
            ["-workload", "latency", "-size", "64"] + d,
            "ahead of websockets",
        ),
        Workload(
            "fanout1k",
            "fan-out to 1,000 (chat), all received p50",
            "ms",
            False,
            fan + ["-subs", "1000"] + rounds,
            "ahead of websockets",
        ),
        Workload(
            "fanout_http",
            "fan-out to 1,000 via POST /api/broadcast, p50",
            "ms",
            False,
            fan + ["-subs", "1000", "-via", "http"] + rounds,
            stacks=("wsapp", "flask-sock", "Flask-SocketIO", "Granian", "Bun", "Socket.IO-node"),
            why_not={
                "websockets": "no HTTP API: its server answers GET upgrades (and /healthz) only",
                "picows": "no HTTP API: picows answers GET upgrade requests only, no request body",
            },
        ),
        Workload(
            "fanout_stuck",
            "fan-out to 1,000 + 1 never-reading subscriber, p50",
            "ms",
            False,
            fan + ["-subs", "1000", "-stuck", "1", "-round-timeout", "3s"] + rounds,
            "ahead of websockets",
        ),
        Workload(
            "fanout_big",
            f"fan-out to {big:,} (chat), all received p50",
            "ms",
            False,
            fan + ["-subs", str(big), "-round-timeout", "20s"] + rounds,
            "",
            timeout=600,
        ),
        Workload(
            "handshake",
            "handshakes/s (connect, upgrade, close; 50 at once)",
            "1/s",
            True,
            ["-workload", "handshake", "-conns", "50"] + d,
            "≥ 1.0× websockets",
        ),
        Workload(
            "echo_big",
            "echo of 65,000-byte messages, 10 conns",
            "msg/s",
            True,
            ["-workload", "echo", "-conns", "10", "-size", "65000"] + d,
            "≥ 1.0× websockets",
            stacks=("wsapp", "websockets", "flask-sock", "picows", "Granian", "Bun"),
            why_not={
                "Flask-SocketIO": 'a raw-framing row: Socket.IO wraps the text in an event (42["echo",…])',
                "Socket.IO-node": 'a raw-framing row: Socket.IO wraps the text in an event (42["echo",…])',
            },
        ),
        Workload(
            "storm",
            f"reconnect storm: {storm_n:,} clients dropped at once, until all welcomed again",
            "s",
            False,
            storm,
            "websockets: until all echo once",
            stacks=(
                "wsapp",
                "wsapp+Redis",
                "websockets",
                "picows",
                "Granian",
                "Bun",
                "Socket.IO-node",
                "Socket.IO-node+Redis",
            ),
            args_for={"websockets": storm + ["-storm-route", "echo"]},
            timeout=400,
            why_not={
                "flask-sock": ISSUE14,
                "Flask-SocketIO": ISSUE14,
            },
        ),
        Workload(
            "idle",
            f"KiB per idle chat conn ({idle_n:,} conns)",
            "KiB",
            False,
            ["-conns", str(idle_n)],
            "ahead of websockets",
            kind="idle",
        ),
    ]


def loadgen_argv(stack: Stack, server: Server, args: list[str]) -> list[str]:
    return (
        taskset(CLIENT_CORE)
        + [
            str(LOADGEN),
            "-proto",
            stack.proto,
            "-url",
            f"ws://127.0.0.1:{server.port}",
            "-secret",
            SECRET,
            "-server-pid",
            str(server.worker),
        ]
        + args
    )


def run_loadgen(argv: list[str], timeout: float) -> dict[str, Any]:
    try:
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"loadgen exit {out.returncode}: {out.stderr.strip()[-400:]}"}
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def run_idle(stack: Stack, server: Server, wl: Workload) -> dict[str, Any]:
    """RSS of the worker before and after opening N idle chat connections, per connection."""
    n = int(wl.args[1])
    # warm up: one small round first, so lazily built state is not counted per connection
    run_loadgen(loadgen_argv(stack, server, ["-workload", "idle", "-conns", "20", "-hold", "0s"]), 60)
    time.sleep(0.5)
    before = server.rss_kib()
    proc = subprocess.Popen(
        loadgen_argv(stack, server, ["-workload", "idle", "-conns", str(n), "-hold", "120s"]),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if '"ready"' not in line:
        proc.kill()
        return {"error": f"idle: {line.strip() or proc.stderr.read()[-400:] if proc.stderr else ''}"}
    time.sleep(1.0)
    after = server.rss_kib()
    proc.stdin.write("\n")
    proc.stdin.flush()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return {"value": (after - before) / n, "rss_before_kib": before, "rss_after_kib": after, "conns": n}


def profile_start(server: Server, name: str, seconds: float) -> subprocess.Popen[bytes] | None:
    pyspy = Path(PYTHON).parent / "py-spy"
    if not pyspy.exists():
        print("  (py-spy not installed: no profile)", file=sys.stderr)
        return None
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{name}.txt"
    return subprocess.Popen(
        taskset(CLIENT_CORE)
        + [
            str(pyspy),
            "record",
            "--pid",
            str(server.worker),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(out),
            "--duration",
            str(int(seconds)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_one(stack: Stack, wl: Workload, profile: bool) -> dict[str, Any]:
    server = Server(stack).start()
    try:
        if wl.kind == "idle":
            return run_idle(stack, server, wl)
        spy = None
        if profile:
            short = wl.key in ("echo", "echo_pipelined", "echo_big", "latency", "handshake")
            spy = profile_start(server, wl.key, 8 if short else 25)
        result = run_loadgen(loadgen_argv(stack, server, wl.argv(stack)), wl.timeout)
        if spy is not None:
            try:
                spy.wait(40)
            except subprocess.TimeoutExpired:
                spy.terminate()
        return result
    finally:
        server.stop()


# ---- the report ------------------------------------------------------------------------------


def summarize(reps: list[dict[str, Any]]) -> dict[str, Any]:
    if not reps:
        return {"not_run": True}
    ok = [r for r in reps if "value" in r and r.get("value") is not None and not r.get("error")]
    # a fan-out where some round never reached everyone is a stall, not a latency
    stalled = [r for r in reps if r.get("rounds_ok", r.get("rounds")) != r.get("rounds")]
    s: dict[str, Any] = {"reps": len(reps), "ok": len(ok)}
    if stalled:
        done, asked = sum(r.get("rounds_ok", 0) for r in stalled), sum(r.get("rounds", 0) for r in stalled)
        s["stalled"] = f"{done}/{asked} rounds"
    if ok and not stalled:
        s["value"] = statistics.median(r["value"] for r in ok)
        s["min"], s["max"] = min(r["value"] for r in ok), max(r["value"] for r in ok)
    for k in ("gen_cpu", "srv_cpu", "stuck_evicted"):
        vals = [r[k] for r in reps if isinstance(r.get(k), (int, float))]
        if vals:
            s[k] = statistics.median(vals)
    errors = [r["error"] for r in reps if r.get("error")]
    if errors:
        s["error"] = errors[0]
    return s


def fmt_value(s: dict[str, Any], unit: str) -> str:
    if s.get("not_run"):
        return ""
    if "stalled" in s:
        return f"**stalled** ({s['stalled']} delivered to all)"
    if "value" not in s:
        return f"failed: {s.get('error', '?')[:60]}"
    v = s["value"]
    text = f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"
    return text


def fmt_ratio(a: dict[str, Any], b: dict[str, Any], higher: bool) -> str:
    if a.get("not_run") or b.get("not_run"):
        return ""
    if "value" not in a:
        return "–"
    if "value" not in b:
        return "peer stalled" if "stalled" in b else "peer failed"
    x, y = a["value"], b["value"]
    if x <= 0 or y <= 0:
        return "–"
    r = x / y if higher else y / x
    return f"{r:.2f}×"


def fmt_cpu(s: dict[str, Any]) -> str:
    if "gen_cpu" not in s:
        return ""
    return f"{s['gen_cpu']:.0f} / {s['srv_cpu']:.0f}"


def label(name: str) -> str:
    return f"{name} (ceiling)" if name == CEILING else name


def table(
    wls: list[Workload], sts: list[Stack], summary: dict[str, dict[str, dict[str, Any]]], what: str = "figures"
) -> str:
    """One of three tables: the figures, wsapp's ratio to every peer, or the CPU use."""
    names = [s.name for s in sts]
    peers = [s for s in sts if not s.name.startswith("wsapp")]
    if what == "figures":
        head = ["workload", "unit", *map(label, names), "issue target"]
    elif what == "ratios":
        head = ["workload", *(f"{'wsapp+Redis' if p.ours != 'wsapp' else 'wsapp'} vs {label(p.name)}" for p in peers)]
    else:
        head = ["workload", *(f"{n}: gen / server" for n in names)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl in wls:
        cells = [wl.label]
        if what == "figures":
            cells += [wl.unit, *(fmt_value(summary[n][wl.key], wl.unit) for n in names), wl.target]
        elif what == "ratios":
            for p in peers:
                ours = summary.get(p.ours, {}).get(wl.key, {"not_run": True})
                cells.append(fmt_ratio(ours, summary[p.name][wl.key], wl.higher_is_better))
        else:
            cells += [fmt_cpu(summary[n][wl.key]) for n in names]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


CROSS_NODE_SIO = (
    "bench/cross_node_fanout.py's subscribers and publisher speak wsapp's contract (a JWT, /ws/chat JSON, an "
    "admin POST /api/broadcast) and the load generator dials one URL, so neither can put subscribers on two "
    "Socket.IO nodes (@socket.io/redis-adapter); Socket.IO-node+Redis runs the single-node storm row instead"
)


def empty_cells(wls: list[Workload], sts: list[Stack], missing: dict[str, str]) -> str:
    """Why a cell is empty: every stack that sits out a workload, with the reason."""
    out = []
    if any(s.name == "Socket.IO-node+Redis" for s in sts):
        out.append(f"- Socket.IO-node+Redis, the cross-node rows: {CROSS_NODE_SIO}")
    for name, reason in missing.items():
        out.append(f"- {name}: every row: {reason}")
    extras = [s.name for s in sts if s.extra and s.name not in missing]
    for wl in wls:
        for s in sts:
            if s.name in missing or s.extra or wl.runs_on(s):
                continue
            out.append(f"- {s.name}, {wl.key}: {wl.why_not.get(s.name, 'not run in this row')}")
    for name in extras:
        rows = [w.key for w in wls if w.runs_on(next(s for s in sts if s.name == name))]
        out.append(f"- {name}: runs {', '.join(rows) or 'none of the rows selected'} only (the Redis rows)")
    return "\n".join(out)


def missing_stacks(sts: list[Stack]) -> dict[str, str]:
    """Stacks whose server is not installed (bench/run.sh installs them), with the reason."""
    out: dict[str, str] = {}
    for s in sts:
        exe = s.argv[0]
        if (os.sep in exe and not Path(exe).exists()) or (os.sep not in exe and shutil.which(exe) is None):
            out[s.name] = f"{exe} not installed (bash bench/run.sh installs it)"
        elif exe == PYTHON and s.argv[1] == "-m" and importlib.util.find_spec(s.argv[2]) is None:
            out[s.name] = f"python module {s.argv[2]} not installed (pip install -r bench/requirements.txt)"
        elif exe == "node" and not (BENCH / "node_modules" / "socket.io").exists():
            out[s.name] = "bench/node_modules/socket.io missing (npm ci in bench/)"
        elif exe == PYTHON and s.argv[1].endswith("picows_app.py") and importlib.util.find_spec("picows") is None:
            out[s.name] = "python module picows not installed (pip install -r bench/requirements.txt)"
    return out


def notes(
    wls: list[Workload],
    names: list[str],
    summary: dict[str, dict[str, dict[str, Any]]],
    raw: dict[str, dict[str, list[dict[str, Any]]]],
) -> str:
    out = []
    for wl in wls:
        for n in names:
            s = summary[n][wl.key]
            if "value" in s and s.get("max") and s["min"] and s["max"] / s["min"] > 1.3:
                out.append(f"- {n}, {wl.key}: spread {s['min']:,.1f} – {s['max']:,.1f} over {s['ok']} runs (noisy)")
            if wl.key == "fanout_stuck" and "stuck_evicted" in s:
                after = [
                    f"{r.get('windows_after_ok', 0)}/{r.get('windows_after', 0)}"
                    for r in raw[n][wl.key]
                    if "windows_after" in r
                ]
                ends = sorted({str(r.get("stuck_end", ""))[:80] for r in raw[n][wl.key] if "stuck_end" in r})
                out.append(
                    f"- {n}, {wl.key}: what the never-reading subscriber finally read: "
                    f"{'; '.join(ends) or '?'}; windows of 20 broadcasts after the "
                    f"measured rounds that reached everyone: {', '.join(after) or 'none sent'}"
                )
            if s.get("error") and "value" in s:
                out.append(f"- {n}, {wl.key}: some runs failed: {s['error'][:200]}")
            gen = s.get("gen_cpu")
            srv = s.get("srv_cpu")
            throughput = wl.key in ("echo", "echo_pipelined", "handshake")
            if throughput and gen is not None and srv is not None and gen > 85 and srv < 85:
                out.append(f"- {n}, {wl.key}: generator at {gen:.0f}% and server at {srv:.0f}%: client-bound")
    return "\n".join(out)


# ---- profile digest --------------------------------------------------------------------------


def digest_profile(path: Path, top: int = 15) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    frame_re = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        for fr in stack.split(";"):
            m = frame_re.match(fr.strip())
            if m:
                func, file = m.group(1), m.group(2)
                parts = file.split("/")
                short = (
                    "/".join(parts[-2:])
                    if "site-packages" not in file
                    else "/".join(parts[parts.index("site-packages") + 1 :])
                )
                names.append(f"{func} ({short})")
            else:
                names.append(fr.strip())
        if not names:
            continue
        self_c[names[-1]] += n
        for nm in set(names):
            incl_c[nm] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples (idle hub time not sampled)", "", "| self % | function |", "|---|---|"]
    lines += [f"| {100 * c / total:.1f} | `{f}` |" for f, c in self_c.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---|---|"]
    skip = (
        "<module>",
        "run (gevent",
        "_run (",
        "handle (",
        "serve",
        "run_for_one",
        "init_process",
        "spawn_worker",
        "manage_workers",
        "run (gunicorn",
        "main (",
        "__call__ (gunicorn",
        "_bootstrap",
    )
    shown = 0
    for f, c in incl_c.most_common():
        if f.startswith(skip) or 100 * c / total > 99.5:
            continue
        lines.append(f"| {100 * c / total:.1f} | `{f}` |")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines)


# ---- cross-node (another engineer's script) ---------------------------------------------------


def cross_node(quick: bool) -> str:
    script = BENCH / "cross_node_fanout.py"
    if not script.exists():
        return "(bench/cross_node_fanout.py not present: skipped)"
    try:
        helptext = subprocess.run(
            [PYTHON, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
        ).stdout
    except subprocess.TimeoutExpired:
        helptext = ""
    argv = [PYTHON, str(script)]
    if quick and "--quick" in helptext:
        argv.append("--quick")
    elif quick and "--subscribers" in helptext:
        argv += ["--subscribers", "100", "--messages", "100"] + (["--paced", "40"] if "--paced" in helptext else [])
    try:
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "(cross_node_fanout.py timed out after 900 s)"
    text = out.stdout.strip()
    if out.returncode != 0:
        text += f"\n\n(exit {out.returncode})\n" + out.stderr.strip()[-1500:]
    return text


# ---- main --------------------------------------------------------------------------------------


def build_loadgen() -> None:
    src = BENCH / "loadgen" / "main.go"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= src.stat().st_mtime:
        return
    LOADGEN.parent.mkdir(exist_ok=True)
    env = dict(
        os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off", GOFLAGS="", GOCACHE=str(BENCH / ".build" / "gocache")
    )
    subprocess.run(["go", "build", "-o", str(LOADGEN), "./bench/loadgen"], cwd=ROOT, env=env, check=True)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 12000:
        print(f"warning: open-file limit {hard}: fan-out to 10,000 needs ~10,100", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run each, short windows, smaller fan-out")
    ap.add_argument("--reps", type=int, help="runs per workload and stack (default 2, quick 1)")
    ap.add_argument(
        "--only",
        help="comma list of workload keys (echo,echo_pipelined,latency,fanout1k,fanout_http,"
        "fanout_stuck,fanout_big,handshake,echo_big,storm,idle)",
    )
    ap.add_argument(
        "--stacks",
        help="comma list of stacks (wsapp,wsapp+Redis,websockets,flask-sock,Flask-SocketIO,picows,Granian,Bun,"
        "Socket.IO-node,Socket.IO-node+Redis)",
    )
    ap.add_argument("--profile", action="store_true", help="py-spy wsapp under echo, fan-out, handshakes (first run)")
    ap.add_argument("--no-cross-node", action="store_true", help="skip bench/cross_node_fanout.py")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 2)
    # `kill <pid>` of a run stops the server under test too (the `finally` blocks run)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))

    build_loadgen()
    raise_nofile()
    wls = workloads(args.quick)
    if args.only:
        keep = set(args.only.split(","))
        wls = [w for w in wls if w.key in keep]
    redis = Redis()
    sts = stacks(redis.url)
    if args.stacks:
        keep = set(args.stacks.split(","))
        sts = [s for s in sts if s.name in keep]
    names = [s.name for s in sts]
    missing = missing_stacks(sts)
    for name, reason in missing.items():
        print(f"{name}: not run: {reason}", file=sys.stderr)
    profiled = {"echo_pipelined", "echo_big", "fanout1k", "fanout_big", "handshake", "storm"}
    if any(w.runs_on(s) for w in wls for s in sts if s.redis and s.name not in missing):
        redis.start()
        atexit.register(redis.stop)

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {n: {w.key: [] for w in wls} for n in names}
    started = time.time()
    # interleave the stacks rep by rep, so a burst of noise hits all of them alike
    for wl in wls:
        for rep in range(reps):
            for st in (st for st in sts if wl.runs_on(st) and st.name not in missing):
                t0 = time.monotonic()
                profile = args.profile and st.name == "wsapp" and rep == 0 and wl.key in profiled
                try:
                    res = run_one(st, wl, profile)
                except Exception as exc:  # noqa: BLE001 - a failed stack is reported, not fatal
                    res = {"error": str(exc)[:500]}
                raw[st.name][wl.key].append(res)
                shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in res.items()}
                print(
                    f"[{time.time() - started:6.0f}s] {wl.key:13} {st.name:20} run {rep + 1}/{reps} "
                    f"({time.monotonic() - t0:.0f}s): {json.dumps(shown)}",
                    file=sys.stderr,
                    flush=True,
                )

    redis.stop()
    summary = {n: {w.key: summarize(raw[n][w.key]) for w in wls} for n in names}
    cpu = os.cpu_count()
    rev = (
        subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    header = (
        f"wsapp benchmark ({rev}), {time.strftime('%Y-%m-%d %H:%M')}, {'quick' if args.quick else 'full'} run, "
        f"median of {reps} run(s) per cell; {cpu} cores, server pinned to core {SERVER_CORE}, "
        f"load generator to core {CLIENT_CORE}; one server process per stack (a gunicorn gevent worker; "
        f"python websockets, picows: an asyncio server; Granian: 1 worker, 1 runtime thread; Bun, Node: one "
        f"process). Ratios: > 1× means wsapp is better (higher throughput, or lower latency/memory); "
        f"{CEILING} is the ceiling, its column is wsapp's share of it."
    )
    checks = "; ".join(f"{s.name}: {s.auth}" for s in sts if not s.name.endswith("+Redis"))
    report = [
        header,
        "",
        f"Checked on every handshake: {checks}. Only wsapp verifies a token: the peers' figures are without one.",
        "",
        "Figures:",
        "",
        table(wls, sts, summary, "figures"),
        "",
    ]
    if any(not s.name.startswith("wsapp") for s in sts) and any(s.name.startswith("wsapp") for s in sts):
        report += [
            "Ratios (wsapp to each peer; > 1× means wsapp is better):",
            "",
            table(wls, sts, summary, "ratios"),
            "",
        ]
    report += ["CPU % over the measured window, load generator / server:", "", table(wls, sts, summary, "cpu"), ""]
    empty = empty_cells(wls, sts, missing)
    if empty:
        report += ["Empty cells, and why:", empty, ""]
    n = notes(wls, names, summary, raw)
    if n:
        report += ["Notes:", n, ""]
    if not args.no_cross_node and not args.only:
        report += [
            "Cross-node fan-out with Redis (bench/cross_node_fanout.py):",
            "",
            "```",
            cross_node(args.quick),
            "```",
            "",
            f"Socket.IO-node+Redis, cross-node: not run: {CROSS_NODE_SIO}.",
            "",
        ]
    if args.profile:
        for key in sorted(profiled):
            p = RESULTS / f"profile-{key}.txt"
            if p.exists():
                report += [f"py-spy profile of the wsapp worker, {key}:", "", digest_profile(p), ""]
    text = "\n".join(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.md").write_text(text + "\n")
    (RESULTS / f"{stamp}.json").write_text(json.dumps({"raw": raw, "summary": summary}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
