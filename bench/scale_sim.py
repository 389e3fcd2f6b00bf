"""Multi-node simulation (issue 15): what each node and Redis spend per room message, 2 to 8 nodes.

    .venv/bin/python bench/scale_sim.py                              # 2, 4, 8 nodes, 5,000 messages
    .venv/bin/python bench/scale_sim.py --nodes 2,4 --messages 2000 --repeat 3
    .venv/bin/python bench/scale_sim.py --redis-url redis://10.0.0.5:6379/0
    .venv/bin/python bench/scale_sim.py --cluster                    # a 3-master Redis Cluster it starts
    .venv/bin/python bench/scale_sim.py --cluster --redis-only       # only start, check and stop the cluster

It prints markdown tables and writes everything (raw runs included) to
bench/results/scale-<timestamp>.json. Every process it starts is stopped, by its pid, at
the end, also on Ctrl-C or SIGTERM.

Room workload, for each node count N (fresh Redis and nodes each time):
  - N single-worker gunicorn nodes (`WSAPP_WORKERS=1 WSAPP_RATE_LIMIT=0`) on one Redis;
  - room `hot` has two members, A on node 1 and B on node 2; every other node holds one
    idle client in a room of its own;
  - A sends `--messages` room messages to `hot`, `--window` of them in flight (the next
    goes when an `ack` comes back); B must receive every one, A gets its own copies;
  - CPU per 1,000 messages: each node's worker utime+stime (`/proc/<pid>/stat`) and Redis
    `INFO cpu` used_cpu_sys+used_cpu_user (summed over the masters of a cluster), read
    before and after; messages/s = messages / wall time from the first send to the last
    delivery. Before each reading, every idle client sends one message to its own room
    and waits for it: with history on (the default) that message comes back over the
    node's bus, which it reads in order, so its copy of the last `hot` message has been
    handled by then (the barrier costs N-2 messages, counted in; with history off it
    waits for nothing, and the last few messages' cost may fall after the reading).

Fan-out workload (unless `--fanout-messages 0`): `--subscribers` chat connections spread
evenly over the same N nodes, one more client on node 1 sends `broadcast` frames one at a
time; the figure is the time from sending one until every subscriber has read it
(all-received latency), p50/p90/max over the messages. The same on one node without
Redis (the in-process backplane) is the single-node figure beside them.

The client side is this one process: raw sockets and one `selectors` loop (no per-socket
thread or greenlet), so its own CPU stays small; it is reported (`client CPU`) so a run
where it came near one core can be recognised as client-bound. CPU figures are CPU time,
not wall time, so other work on the machine moves them less than it moves messages/s and
latencies; the load average before each run is recorded in the JSON.

The code under test is the tree in `--tree` (default: the current directory when it holds
gunicorn.conf.py and app.py, else this checkout): the nodes run there with it first on
PYTHONPATH, so a `git worktree` of an older commit measures that commit with this venv.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import redis

ROOT = Path(__file__).resolve().parent.parent
SECRET = "scale-sim-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU in these ticks (usually 1/100 s)
_LISTENING = re.compile(r"Listening at: http://[^:\s]+:(\d+)")


# ---- pure logic: parsing, CPU arithmetic, the tables (tests/test_scale_sim.py) ----------------------------------


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime from the text of /proc/<pid>/stat (fields 14 and 15; the command name,
    field 2, is in parentheses and may itself hold spaces or parentheses)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def stat_ppid(stat: str) -> int:
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def cluster_masters(nodes_text: str) -> list[tuple[str, int]]:
    """(host, port) of every master in the text of `CLUSTER NODES`."""
    masters = []
    for line in nodes_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and "master" in parts[2].split(",") and "fail" not in parts[2]:
            host, _, port = parts[1].split("@")[0].rpartition(":")
            masters.append((host, int(port)))
    return sorted(masters)


def client_frame(payload: bytes, opcode: int = 0x1, mask: bytes | None = None) -> bytes:
    """One masked client frame (RFC 6455 5.2) holding `payload` whole."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def take_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove the complete server frames from the front of `buf`: [(opcode, payload)].

    The server sends every message as one unmasked frame (no compression is offered), so
    a fragment or a masked frame is a bug worth stopping for."""
    frames, pos = [], 0
    while len(buf) - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        if b1 & 0x80 or not b0 & 0x80:
            raise ValueError(f"unexpected server frame header {b0:#x} {b1:#x}")
        n, head = b1 & 0x7F, 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        if len(buf) - pos < head + n:
            break
        frames.append((b0 & 0x0F, bytes(buf[pos + head : pos + head + n])))
        pos += head + n
    del buf[:pos]
    return frames


def per_1000_ms(cpu_s: float, messages: int) -> float:
    """CPU seconds spent on `messages` messages, as milliseconds per 1,000 messages."""
    return cpu_s / messages * 1e6


@dataclass
class RoomRun:
    """One run of the room workload: CPU seconds over the measured window."""

    nodes: int
    messages: int
    wall_s: float
    node_cpu_s: list[float]  # index 0: node 1 (sender), 1: node 2 (delivers), then the others
    redis_cpu_s: float
    client_cpu_s: float = 0.0
    load_before: float = 0.0


@dataclass
class Row:
    nodes: int
    sender_ms: float
    delivering_ms: float
    other_ms: float | None  # mean over nodes 3..N; None with 2 nodes
    redis_ms: float
    messages_per_s: float
    client_ms: float

    @property
    def other_ratio(self) -> float | None:
        """A node with no member's CPU per message over the delivering node's (target <= 5%)."""
        return None if self.other_ms is None else self.other_ms / self.delivering_ms


def row_of(run: RoomRun) -> Row:
    m = run.messages
    others = run.node_cpu_s[2:]
    return Row(
        nodes=run.nodes,
        sender_ms=per_1000_ms(run.node_cpu_s[0], m),
        delivering_ms=per_1000_ms(run.node_cpu_s[1], m),
        other_ms=per_1000_ms(statistics.fmean(others), m) if others else None,
        redis_ms=per_1000_ms(run.redis_cpu_s, m),
        messages_per_s=m / run.wall_s,
        client_ms=per_1000_ms(run.client_cpu_s, m),
    )


def summarize(runs: Iterable[RoomRun]) -> list[Row]:
    """One row per node count: each figure the median over that count's repeats."""
    by_nodes: dict[int, list[Row]] = {}
    for run in runs:
        by_nodes.setdefault(run.nodes, []).append(row_of(run))
    rows = []
    for n, group in sorted(by_nodes.items()):
        others = [r.other_ms for r in group if r.other_ms is not None]
        rows.append(
            Row(
                nodes=n,
                sender_ms=statistics.median(r.sender_ms for r in group),
                delivering_ms=statistics.median(r.delivering_ms for r in group),
                other_ms=statistics.median(others) if others else None,
                redis_ms=statistics.median(r.redis_ms for r in group),
                messages_per_s=statistics.median(r.messages_per_s for r in group),
                client_ms=statistics.median(r.client_ms for r in group),
            )
        )
    return rows


OTHER_RATIO_TARGET = 0.05  # a node with no recipient: at most 5% of a delivering node's CPU per message
REDIS_GROWTH_TARGET = 1.2  # Redis CPU per message at the most nodes: within 1.2x of that at the fewest


@dataclass
class Targets:
    other_ratio: dict[int, float]  # nodes -> other/delivering
    other_ok: bool | None  # None: no run with more than 2 nodes
    redis_growth: tuple[int, int, float] | None  # (most nodes, fewest nodes, ratio)
    redis_ok: bool | None


def targets(rows: list[Row]) -> Targets:
    ratios = {r.nodes: r.other_ratio for r in rows if r.other_ratio is not None}
    other_ok = all(v <= OTHER_RATIO_TARGET for v in ratios.values()) if ratios else None
    growth = None
    if len(rows) >= 2:
        few, most = min(rows, key=lambda r: r.nodes), max(rows, key=lambda r: r.nodes)
        growth = (most.nodes, few.nodes, most.redis_ms / few.redis_ms)
    return Targets(ratios, other_ok, growth, None if growth is None else growth[2] <= REDIS_GROWTH_TARGET)


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def room_table(rows: list[Row]) -> str:
    lines = [
        "| nodes | CPU per 1,000 msgs: node 1 (sender) | node 2 (delivers) | each other node (mean, no member) "
        "| Redis | room messages/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.nodes} | {ms(r.sender_ms)} | {ms(r.delivering_ms)} | {ms(r.other_ms)} | {ms(r.redis_ms)} "
            f"| {r.messages_per_s:,.0f} |"
        )
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "met" if ok else "not met"


def targets_text(t: Targets) -> str:
    ratios = ", ".join(f"{n} nodes {v:.0%}" for n, v in sorted(t.other_ratio.items())) or "no run above 2 nodes"
    lines = [f"- other node / delivering node, CPU per message: {ratios} (target ≤ 5%): {verdict(t.other_ok)}"]
    if t.redis_growth is None:
        lines.append("- Redis CPU per message: one node count only, no growth to compute")
    else:
        most, few, ratio = t.redis_growth
        lines.append(
            f"- Redis CPU per message, {most} vs {few} nodes: {ratio:.2f}× (target ≤ 1.2×): {verdict(t.redis_ok)}"
        )
    return "\n".join(lines)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class FanoutRun:
    nodes: int
    backplane: str  # "in-process" or "redis"
    subscribers: int
    latencies_s: list[float]  # all-received latency of each message


def fanout_table(runs: list[FanoutRun]) -> str:
    lines = [
        "| nodes | backplane | subscribers (per node) | messages | all received p50 | p90 | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lat = [x * 1000 for x in r.latencies_s]
        lines.append(
            f"| {r.nodes} | {r.backplane} | {r.subscribers:,} ({r.subscribers // r.nodes:,}) | {len(lat)} "
            f"| {percentile(lat, 50):.1f} ms | {percentile(lat, 90):.1f} ms | {max(lat):.1f} ms |"
        )
    return "\n".join(lines)


# ---- processes: every one started here is stopped by its pid -------------------------------------------------


class Proc:
    """A child in a session of its own (so Ctrl-C in the terminal reaches only us, and we
    stop it ourselves): SIGTERM to its pid, then SIGKILL to its process group (pgid = pid)."""

    def __init__(self, argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        self.pid = self.proc.pid

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, proc: Proc | None = None) -> None:
    """Poll `check` until it is true; fail at the deadline, or at once if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.proc.returncode}:\n{proc.tail()}")
        try:
            if check():
                return
        except (OSError, redis.RedisError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}" + (f":\n{proc.tail()}" if proc else ""))


def free_port(bus_too: bool = False) -> int:
    """A free loopback port; with `bus_too`, one whose cluster bus port (+10000) is free as well."""
    for _ in range(200):
        port = random.randint(20000, 45000) if bus_too else 0
        try:
            with socket.socket() as s, socket.socket() as b:
                s.bind(("127.0.0.1", port))
                if bus_too:
                    b.bind(("127.0.0.1", port + 10000))
                return int(s.getsockname()[1])
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


class Redis:
    """The Redis the nodes share: one we started (single or cluster) or one given by URL."""

    def __init__(self, url: str, masters: list[tuple[str, int]], procs: list[Proc]) -> None:
        self.url, self.masters, self.procs = url, masters, procs
        self._clients = [redis.Redis(host=h, port=p, socket_timeout=5) for h, p in masters]

    @classmethod
    def external(cls, url: str) -> Redis:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "redis+cluster":
            seed = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, decode_responses=True)
            masters = cluster_masters(seed.execute_command("CLUSTER NODES"))
            seed.close()
            return cls(url, masters, [])
        r = cls(url, [(parts.hostname or parts.path, parts.port or 0)], [])
        r._clients = [redis.Redis.from_url(url, socket_timeout=5)]  # rediss:// and unix:// too
        return r

    def cpu_s(self) -> float:
        """used_cpu_sys + used_cpu_user, summed over the masters."""
        total = 0.0
        for c in self._clients:
            info = c.info("cpu")
            total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return total

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        for p in reversed(self.procs):
            p.stop()


def redis_server(tmp: Path, procs: list[Proc], cluster: bool) -> tuple[int, Proc]:
    port = free_port(bus_too=cluster)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp)]  # fmt: skip
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(tmp / f"nodes-{port}.conf")]
    proc = Proc(argv, tmp / f"redis-{port}.log", tmp)
    procs.append(proc)  # registered before any wait, so a failed start is still stopped
    wait_for(lambda: bool(redis.Redis(port=port, socket_timeout=1).ping()), 10, f"redis-server :{port}", proc)
    return port, proc


def start_redis(tmp: Path) -> Redis:
    procs: list[Proc] = []
    try:
        port, _ = redis_server(tmp, procs, cluster=False)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return Redis(f"redis://127.0.0.1:{port}/0", [("127.0.0.1", port)], procs)


def start_cluster(tmp: Path, masters: int = 3) -> Redis:
    """Three cluster-enabled redis-servers joined by `redis-cli --cluster create`, returned
    once every one of them says `cluster_state:ok`."""
    procs: list[Proc] = []
    try:
        ports = [redis_server(tmp, procs, cluster=True)[0] for _ in range(masters)]
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")

        def state_ok(port: int) -> bool:
            info = redis.Redis(port=port, socket_timeout=1, decode_responses=True).execute_command("CLUSTER INFO")
            text = info if isinstance(info, str) else "\n".join(f"{k}:{v}" for k, v in info.items())
            return "cluster_state:ok" in text

        for p in ports:
            wait_for(lambda p=p: state_ok(p), 30, f"cluster_state:ok on :{p}")
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise
    # the service's cluster URL form is the lead's to define (issue 15); this is the assumed one
    return Redis(f"redis+cluster://127.0.0.1:{ports[0]}", [("127.0.0.1", p) for p in ports], procs)


def check_redis(r: Redis) -> dict[str, Any]:
    """Keys on every master answer (a cluster routes them by slot): the --redis-only check."""
    if r.url.startswith("redis+cluster://"):
        from redis.cluster import RedisCluster

        host, port = r.masters[0]
        client: Any = RedisCluster(host=host, port=port, decode_responses=True)
    else:
        client = redis.Redis.from_url(r.url, decode_responses=True)
    try:
        keys = [f"scale-sim:check:{i}" for i in range(30)]
        for k in keys:
            client.set(k, k, ex=60)
        ok = all(client.get(k) == k for k in keys)
        spread = sum(1 for c in r._clients if c.dbsize() > 0)
        for k in keys:
            client.delete(k)
    finally:
        client.close()
    return {"url": r.url, "masters": len(r.masters), "masters_holding_keys": spread, "keys_ok": ok,
            "cpu_s": r.cpu_s()}  # fmt: skip


@dataclass
class Node:
    proc: Proc
    port: int
    worker: int  # the gevent worker's pid: the process whose CPU is the node's

    def cpu_s(self) -> float:
        return stat_cpu_ticks(Path(f"/proc/{self.worker}/stat").read_text()) / CLK_TCK


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if stat_ppid((entry / "stat").read_text()) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue  # gone meanwhile
    return found


def start_nodes(count: int, redis_url: str, tree: Path, tmp: Path, extra_env: dict[str, str],
                procs: list[Proc]) -> list[Node]:  # fmt: skip
    """`count` single-worker nodes, started together, each returned once /readyz answers 200."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
    base.update({"WSAPP_HOST": "127.0.0.1", "WSAPP_PORT": "0", "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0",
                 "WSAPP_LOG_LEVEL": "WARNING", "WSAPP_JWT_SECRET": SECRET, "WSAPP_SHUTDOWN_TIMEOUT": "2",
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))})  # fmt: skip
    if redis_url:
        base["WSAPP_REDIS_URL"] = redis_url
    base.update(extra_env)
    started = []
    for i in range(count):
        env = dict(base, WSAPP_INSTANCE_PATH=tempfile.mkdtemp(prefix=f"node{i + 1}-", dir=tmp))
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--access-logfile", "/dev/null", "app:app"]
        proc = Proc(argv, tmp / f"node{i + 1}-{time.monotonic_ns()}.log", tree, env)
        procs.append(proc)
        started.append(proc)
    nodes = []
    for i, proc in enumerate(started):
        port = [0]

        def ready(proc: Proc = proc, port: list[int] = port) -> bool:
            if not port[0]:
                match = _LISTENING.search(proc.log.read_text(errors="replace"))
                if not match:
                    return False
                port[0] = int(match.group(1))
            conn = http.client.HTTPConnection("127.0.0.1", port[0], timeout=2)
            try:
                conn.request("GET", "/readyz")
                return conn.getresponse().status == 200
            finally:
                conn.close()

        wait_for(ready, 60, f"node {i + 1} (gunicorn) to be ready", proc)
        workers = children_of(proc.pid)
        if len(workers) != 1:
            raise RuntimeError(f"node {i + 1}: expected one worker under pid {proc.pid}, found {workers}")
        nodes.append(Node(proc, port[0], workers[0]))
    return nodes


# ---- the client side: raw WebSocket connections read by one selectors loop ------------------------------------


def token(client_id: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": client_id, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


def ignore(_client: Client, _text: bytes) -> None:
    pass


class Client:
    """One /ws/chat connection. `on_text(client, payload)` is called for each text message
    the loop reads; pings are answered; a close or EOF stops the run with an error."""

    def __init__(self, port: int, client_id: str, timeout_s: float) -> None:
        self.name = client_id
        self.on_text: Callable[[Client, bytes], None] = ignore
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token(client_id)}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{client_id}: closed during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"{client_id}: handshake answered {head.splitlines()[0]!r}")
        self.buf = bytearray(rest)

    def send_text(self, text: bytes) -> None:
        self.sock.sendall(client_frame(text))  # sendall: a partial write is finished, never dropped

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send_text(json.dumps(obj, separators=(",", ":")).encode())

    def read_ready(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError(f"{self.name}: the server closed the connection")
        self.buf += data
        self.dispatch()

    def dispatch(self) -> None:
        for opcode, payload in take_frames(self.buf):
            if opcode == 0x1:
                self.on_text(self, payload)
            elif opcode == 0x9:
                self.sock.sendall(client_frame(payload, 0xA))
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                raise ConnectionError(f"{self.name}: closed by the server, {code} {payload[2:].decode()!r}")

    def close(self) -> None:
        try:
            self.sock.sendall(client_frame(b"\x03\xe8", 0x8))
        except OSError:
            pass
        self.sock.close()


class Loop:
    """The one reader of every client socket (all sockets of the run, one thread)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[Client] = []

    def add(self, client: Client) -> Client:
        self.sel.register(client.sock, selectors.EVENT_READ, client)
        self.clients.append(client)
        client.dispatch()  # what came with the 101 (the welcome, often)
        return client

    def close_all(self) -> None:
        for c in self.clients:
            self.sel.unregister(c.sock)
            c.close()
        self.clients.clear()

    def run(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout_s:g} s: {what}")
            for key, _ in self.sel.select(min(left, 1.0)):
                key.data.read_ready()


def expect_welcome(client: Client, seen: set[str]) -> None:
    def on_text(c: Client, text: bytes) -> None:
        if json.loads(text).get("type") == "welcome":
            seen.add(c.name)
            c.on_text = ignore

    client.on_text = on_text


def request(loop: Loop, client: Client, obj: dict[str, Any], timeout_s: float) -> None:
    """Send a frame with an id and read until its ack; an error frame stops the run."""
    done = [False]

    def on_text(_c: Client, text: bytes) -> None:
        msg = json.loads(text)
        if msg.get("id") == obj["id"]:
            if msg.get("type") != "ack":
                raise RuntimeError(f"{client.name}: {obj['type']} answered {msg}")
            done[0] = True

    client.on_text = on_text
    client.send_json(obj)
    loop.run(lambda: done[0], timeout_s, f"{client.name}'s ack for {obj['id']}")
    client.on_text = ignore


def connect(loop: Loop, nodes: list[Node], names: list[tuple[int, str]], timeout_s: float) -> list[Client]:
    """Connect (node index, client id) pairs; return once each has its welcome."""
    welcomed: set[str] = set()
    clients = []
    for i, name in names:
        c = Client(nodes[i].port, name, timeout_s)
        expect_welcome(c, welcomed)
        clients.append(loop.add(c))
    loop.run(lambda: len(welcomed) == len(clients), timeout_s, "every welcome")
    return clients


# ---- the workloads -----------------------------------------------------------------------------------------------


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def room_workload(nodes: list[Node], red: Redis, messages: int, window: int, warmup: int,
                  timeout_s: float) -> RoomRun:  # fmt: skip
    loop = Loop()
    try:
        names = [(0, "hot-a"), (1, "hot-b")] + [(i, f"idle-{i + 1}") for i in range(2, len(nodes))]
        clients = connect(loop, nodes, names, timeout_s)
        sender, member, idle = clients[0], clients[1], clients[2:]
        for c in (sender, member):
            request(loop, c, {"type": "join", "room": "hot", "id": "j"}, timeout_s)
        for c in idle:
            request(loop, c, {"type": "join", "room": c.name, "id": "j"}, timeout_s)

        def barrier(tag: str) -> None:
            """Every idle node has handled what its bus carried before: its own message came back."""
            for c in idle:
                request(loop, c, {"type": "room", "room": c.name, "data": tag, "id": tag}, timeout_s)

        def burst(count: int, phase: str) -> float:
            state = {"sent": 0, "acked": 0, "echoed": 0, "received": 0}
            frames = [
                json.dumps(
                    {"type": "room", "room": "hot", "data": {"p": phase, "i": i}, "id": f"{phase}{i}"},
                    separators=(",", ":"),
                ).encode()  # fmt: skip
                for i in range(count)
            ]

            def top_up() -> None:
                while state["sent"] < count and state["sent"] - state["acked"] < window:
                    sender.send_text(frames[state["sent"]])
                    state["sent"] += 1

            def on_sender(_c: Client, text: bytes) -> None:
                msg = json.loads(text)
                kind = msg.get("type")
                if kind == "ack":
                    if msg.get("delivered") != 2:
                        raise RuntimeError(f"room message {msg.get('id')} reached {msg.get('delivered')}, not 2")
                    state["acked"] += 1
                    top_up()
                elif kind == "room" and msg["data"].get("p") == phase:
                    state["echoed"] += 1
                elif kind == "error":
                    raise RuntimeError(f"the sender got {msg}")

            def on_member(_c: Client, text: bytes) -> None:
                msg = json.loads(text)
                if msg.get("type") == "room" and msg["room"] == "hot" and msg["data"].get("p") == phase:
                    state["received"] += 1

            sender.on_text, member.on_text = on_sender, on_member
            started = time.perf_counter()
            top_up()
            loop.run(lambda: state["acked"] == state["echoed"] == state["received"] == count, timeout_s,
                     f"{phase}: {count} room messages ({state})")  # fmt: skip
            wall = time.perf_counter() - started
            sender.on_text = member.on_text = ignore
            return wall

        burst(warmup, "w")
        barrier("b0")
        load = os.getloadavg()[0]
        cpu0, redis0, client0 = [n.cpu_s() for n in nodes], red.cpu_s(), cpu_now()
        wall = burst(messages, "m")
        barrier("b1")
        cpu1, redis1, client1 = [n.cpu_s() for n in nodes], red.cpu_s(), cpu_now()
        return RoomRun(len(nodes), messages, wall, [b - a for a, b in zip(cpu0, cpu1, strict=True)],
                       redis1 - redis0, client1 - client0, load)  # fmt: skip
    finally:
        loop.close_all()


def fanout_workload(nodes: list[Node], backplane: str, subscribers: int, messages: int,
                    timeout_s: float) -> FanoutRun:  # fmt: skip
    """`subscribers` spread evenly over the nodes; a client on node 1 broadcasts one message
    at a time; each message's time until the last subscriber has read it."""
    loop = Loop()
    try:
        subs = connect(loop, nodes, [(i % len(nodes), f"fan-{i}") for i in range(subscribers)], timeout_s)
        sender = connect(loop, nodes, [(0, "fan-sender")], timeout_s)[0]
        state = {"k": -1, "count": 0, "acked": False}

        def on_sub(_c: Client, text: bytes) -> None:
            msg = json.loads(text)
            if msg.get("type") == "broadcast" and msg["data"] == state["k"]:
                state["count"] += 1

        def on_sender(_c: Client, text: bytes) -> None:
            msg = json.loads(text)
            if msg.get("type") == "ack" and msg.get("id") == f"f{state['k']}":
                state["acked"] = True
            elif msg.get("type") == "error":
                raise RuntimeError(f"the fan-out sender got {msg}")

        for s in subs:
            s.on_text = on_sub
        sender.on_text = on_sender
        latencies = []
        for k in range(messages + 3):  # the first 3 warm up
            state.update(k=k, count=0, acked=False)
            started = time.perf_counter()
            sender.send_json({"type": "broadcast", "data": k, "id": f"f{k}"})
            loop.run(lambda: state["count"] == subscribers, timeout_s, f"broadcast {k} to {subscribers}")
            if k >= 3:
                latencies.append(time.perf_counter() - started)
            loop.run(lambda: bool(state["acked"]), timeout_s, f"ack of broadcast {k}")
        return FanoutRun(len(nodes), backplane, subscribers, latencies)
    finally:
        loop.close_all()


# ---- the command ---------------------------------------------------------------------------------------------------


def default_tree() -> Path:
    cwd = Path.cwd()
    return cwd if (cwd / "gunicorn.conf.py").exists() and (cwd / "app.py").exists() else ROOT


def git_head(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "wsapp", "app.py"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return out.stdout.strip() + (" (wsapp/ or app.py modified)" if dirty else "")


@dataclass
class Options:
    nodes: list[int]
    messages: int
    window: int
    warmup: int
    repeat: int
    subscribers: int
    fanout_messages: int
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", default="2,4,8", help="node counts, comma-separated (each at least 2; default 2,4,8)")
    p.add_argument("--messages", type=int, default=5000, help="room messages measured per run (default 5000)")
    p.add_argument("--window", type=int, default=100, help="room messages in flight (default 100)")
    p.add_argument("--warmup", type=int, default=200, help="room messages sent before measuring (default 200)")
    p.add_argument("--repeat", type=int, default=1, help="runs per node count; the table shows medians")
    p.add_argument("--subscribers", type=int, default=1000, help="fan-out subscribers (default 1000)")
    p.add_argument("--fanout-messages", type=int, default=50, help="fan-out broadcasts timed; 0 skips the fan-out")
    p.add_argument("--timeout", type=float, default=120, help="seconds any one phase may take (default 120)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--redis-url", default="", help="use this Redis (redis+cluster://host:port for a cluster)")
    where.add_argument("--cluster", action="store_true", help="start a 3-master Redis Cluster instead of one Redis")
    p.add_argument("--redis-only", action="store_true", help="start the Redis (or cluster), check it, stop; no nodes")
    p.add_argument("--tree", type=Path, default=None, help="the checkout whose code the nodes run")
    p.add_argument("--env", action="append", default=[], metavar="WSAPP_X=V", help="an extra node setting")
    args = p.parse_args(argv)
    try:
        counts = [int(x) for x in args.nodes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--nodes {args.nodes!r}: comma-separated integers")
    if not counts or min(counts) < 2 or max(counts) > 16:
        p.error("--nodes: node counts from 2 to 16")
    if not 1 <= args.messages <= 100_000 or not 1 <= args.window <= 200 or args.repeat < 1:
        p.error("--messages 1..100000, --window 1..200 (the node's send queue holds 256), --repeat >= 1")
    if not 0 <= args.subscribers * (args.fanout_messages or 1) <= 500_000 or args.subscribers < 2:
        p.error("--subscribers at least 2, and at most 500,000 fan-out deliveries")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("WSAPP_"):
            p.error(f"--env {item!r}: WSAPP_NAME=value")
        env[key] = value
    opts = Options(counts, args.messages, args.window, args.warmup, args.repeat, args.subscribers,
                   args.fanout_messages, args.timeout, env)  # fmt: skip
    return args, opts


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need) if hard != resource.RLIM_INFINITY else need, hard))


def make_redis(args: argparse.Namespace, tmp: Path) -> Redis:
    if args.redis_url:
        return Redis.external(args.redis_url)
    return start_cluster(tmp) if args.cluster else start_redis(tmp)


def run(args: argparse.Namespace, opts: Options, tmp: Path, report: dict[str, Any]) -> None:
    tree = (args.tree or default_tree()).resolve()
    report.update(tree=str(tree), code=git_head(tree))
    print(f"code under test: {tree} at {report['code']}", flush=True)
    room_runs: list[RoomRun] = []
    fanouts: list[FanoutRun] = []
    report.update(room_runs=room_runs, fanout_runs=fanouts)
    for n in opts.nodes:
        for rep in range(opts.repeat):
            red = make_redis(args, tmp)  # a fresh one per run when we start it: no other run's keys
            procs: list[Proc] = []
            try:
                nodes = start_nodes(n, red.url, tree, tmp, opts.env, procs)
                result = room_workload(nodes, red, opts.messages, opts.window, opts.warmup, opts.timeout_s)
                room_runs.append(result)
                row = row_of(result)
                print(f"{n} nodes, run {rep + 1}: {row.messages_per_s:,.0f} room messages/s, "
                      f"node 2 {ms(row.delivering_ms)}, other {ms(row.other_ms)}, Redis {ms(row.redis_ms)} "
                      f"per 1,000; client {ms(row.client_ms)}; load {result.load_before:.1f}", flush=True)  # fmt: skip
                if opts.fanout_messages and rep == 0:
                    fanouts.append(fanout_workload(nodes, "redis", opts.subscribers, opts.fanout_messages,
                                                   opts.timeout_s))  # fmt: skip
                    print(f"{n} nodes: fan-out p50 {percentile(fanouts[-1].latencies_s, 50) * 1000:.1f} ms",
                          flush=True)  # fmt: skip
            finally:
                for p in reversed(procs):
                    p.stop()
                red.stop()
    if opts.fanout_messages:
        procs = []
        try:
            nodes = start_nodes(1, "", tree, tmp, opts.env, procs)
            fanouts.insert(0, fanout_workload(nodes, "in-process", opts.subscribers, opts.fanout_messages,
                                              opts.timeout_s))  # fmt: skip
        finally:
            for p in procs:
                p.stop()


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C does, through every `finally` that stops a process
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (ignored)
    raise_nofile(opts.subscribers + 200)
    tmp = Path(tempfile.mkdtemp(prefix="scale-sim-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report: dict[str, Any] = {"date": started, "command": " ".join(["bench/scale_sim.py", *sys.argv[1:]]),
                              "cpus": os.cpu_count(), "options": asdict(opts), "clk_tck": CLK_TCK}  # fmt: skip
    try:
        if args.redis_only:
            red = make_redis(args, tmp)
            try:
                print(json.dumps(check_redis(red)))
            finally:
                red.stop()
            return 0
        run(args, opts, tmp, report)
    except (RuntimeError, ConnectionError, TimeoutError, redis.RedisError) as exc:
        print(f"scale_sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scale_sim: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = summarize(report["room_runs"])
    t = targets(rows)
    report.update(rows=[dict(asdict(r), other_ratio=r.other_ratio) for r in rows], targets=asdict(t),
                  room_runs=[asdict(r) for r in report["room_runs"]],
                  fanout_runs=[asdict(r) for r in report["fanout_runs"]])  # fmt: skip
    out = ROOT / "bench" / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\n{started}, {report['code']}; {opts.messages:,} room messages per run, window {opts.window}, "
          f"{opts.repeat} run(s) per node count (medians), {os.cpu_count()} CPUs\n")  # fmt: skip
    print(room_table(rows))
    print()
    print(targets_text(t))
    if report["fanout_runs"]:
        print(
            f"\nFan-out: one sender on node 1, {opts.subscribers:,} subscribers spread over the nodes, "
            f"{opts.fanout_messages} broadcasts one at a time, time until every subscriber has read one:\n"
        )
        print(fanout_table([FanoutRun(**r) for r in report["fanout_runs"]]))
    print(f"\nclient CPU per 1,000 room messages: {', '.join(f'{r.nodes}: {ms(r.client_ms)}' for r in rows)}")
    # a node's CPU is read in /proc ticks: the smallest step of its figure, which an idle node's may be near
    print(f"a node's CPU resolution: one tick ({1000 / CLK_TCK:g} ms) = {ms(per_1000_ms(1 / CLK_TCK, opts.messages))} "
          "per 1,000 messages (raise --messages for a finer one)")  # fmt: skip
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
