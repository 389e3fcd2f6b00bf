"""Faults: what is lost. Counts every message through five faults, one at a time, with traffic running.

    .venv/bin/python bench/faults.py                         # 200 clients, every fault (~3 min)
    .venv/bin/python bench/faults.py --clients 4 --faults kill9 --steady 1

It starts on free 127.0.0.1 ports, and stops by pid at the end (also on Ctrl+C or an error):
a Redis primary, a replica and three sentinels; two gunicorn nodes (gunicorn.conf.py, one
gevent worker each) with WSAPP_REDIS_URL=redis+sentinel://...; a loopback TCP proxy in
front of node A. Clients (gevent greenlets in this process, websocket-client) connect,
half through the proxy to A, half to B; each joins one room, keeps every stream's
position from each message's offset/epoch and, after a drop, reconnects (backoff 0.2 s
doubling to a 2 s ceiling, with jitter; the other node after a failed attempt) with
?resume=1 and a `resume` frame first, as wsapp.client and wsapp.js do. A connection
silent for --silence seconds, a ping unanswered, is taken as dead (a cut without a FIN).
Publishers POST /api/broadcast (admin token), /api/broadcast with a room and /api/send
at steady rates; each message carries a sequence number. Only messages the API accepted
(200/202) count as published.

Faults, in this order: netcut (the proxy stops forwarding every connection and resets
the node side; the client side gets no FIN), kill9 (SIGKILL of node A's gunicorn and
worker, restarted), sigterm (node B drains, restarted), redis_empty (the primary killed
and restarted empty on its port at once), failover (the primary stopped; the sentinels
promote the replica).

Per fault and stream kind: published messages, deliveries expected (a recipient was in
the stream before the publish started), delivered, lost (expected, never delivered, and
no `recovered: false` for that stream on that client since its previous connection),
excused (missed, and the stream said so: a resume answered `recovered: false`, or a live
message came in a new epoch), duplicated, the `recovered: false` answers, the live
messages in a new epoch, and the seconds from the fault until every client is
connected again and receiving: each has a broadcast published after the fault began. A lost message is printed with its
client, stream and the client's resume answers: with `recovered: true` that is a bug.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import atexit  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import jwt  # noqa: E402
import websocket  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-faults-0123456789-abcdefghijklmnopqrstuvwxyz"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SERVICE = "wsappfaults"
KINDS = ("broadcast", "room", "direct")
FAULTS = ("netcut", "kill9", "sigterm", "redis_empty", "failover")
BACKOFF_BASE, BACKOFF_CEILING = 0.2, 2.0

NOT_RECOVERED: list[str] = []  # every `recovered: false`, for the report
PROCS: list[subprocess.Popen[bytes]] = []  # everything started, ended by pid at exit


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(client_id: str, admin: bool = False) -> str:
    claims: dict[str, Any] = {"sub": client_id, "exp": int(time.time()) + 3600}
    if admin:
        claims["roles"] = ["admin"]
    return jwt.encode(claims, SECRET, algorithm="HS256")


def spawn(argv: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    PROCS.append(proc)
    return proc


def end(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """Stop one process we started, by its pid (its own session: gunicorn's worker too)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def end_all() -> None:
    for proc in reversed(PROCS):
        end(proc, wait=5)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except Exception:  # noqa: BLE001 - not there yet
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"not within {timeout:.0f}s: {what}")


# ---- Redis: a primary, a replica, three sentinels (as tests/test_sentinel.py) ----------------


class SentinelSet:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = [free_port(), free_port()]  # primary, replica at the start
        self.sentinels = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinels) + f"/{SERVICE}/0"

    def run_redis(self, port: int, replica_of: int | None = None) -> None:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.folder), "--dbfilename", f"dump-{port}.rdb"]
        if replica_of:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.procs[port] = spawn([REDIS_SERVER, *args], self.folder / f"{port}.log")
        wait_for(lambda: self.redis(port).ping(), 10, f"redis-server on {port}")

    def redis(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def start(self) -> None:
        self.run_redis(self.ports[0])
        self.run_redis(self.ports[1], replica_of=self.ports[0])
        for port in self.sentinels:
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports[0]} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self.procs[port] = spawn([REDIS_SERVER, str(conf), "--sentinel"], self.folder / f"{port}.log")
        self.wait_synced()
        for port in self.sentinels:
            s = self.redis(port)
            wait_for(lambda s=s: len(s.sentinel_slaves(SERVICE)) >= 1, 30, "each sentinel sees the replica")
            wait_for(lambda s=s: len(s.sentinel_sentinels(SERVICE)) == 2, 30, "each sentinel sees the others")

    def primary(self) -> int:
        _host, port = self.redis(self.sentinels[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def wait_synced(self) -> None:
        primary = self.primary() if self.procs.get(self.sentinels[0]) else self.ports[0]
        replica = next(p for p in self.ports if p != primary)
        wait_for(
            lambda: self.redis(replica).info("replication").get("master_link_status") == "up", 60, "replica in sync"
        )


# ---- the nodes ---------------------------------------------------------------------------------


class Node:
    def __init__(self, name: str, redis_url: str, folder: Path, history: int) -> None:
        self.name, self.port, self.folder = name, free_port(), folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
        self.env.update({"WSAPP_HOST": "127.0.0.1", "WSAPP_PORT": str(self.port), "WSAPP_JWT_SECRET": SECRET,
                         "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0", "WSAPP_API_RATE_LIMIT": "0",
                         "WSAPP_SEND_QUEUE": "4096", "WSAPP_SHUTDOWN_TIMEOUT": "2", "WSAPP_LOG_LEVEL": "WARNING",
                         "WSAPP_REDIS_URL": redis_url, "WSAPP_REDIS_HEARTBEAT": "1",
                         "WSAPP_REDIS_PRESENCE_TTL": "3", "WSAPP_HISTORY_SIZE": str(history),
                         "WSAPP_INSTANCE_PATH": str(folder / f"instance-{name}"), "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app", "--access-logfile", "/dev/null"]
        self.proc = spawn(argv, self.folder / f"node-{self.name}.log", self.env)
        wait_for(self.ready, 60, f"node {self.name} ready")

    def ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if sig == signal.SIGKILL:
            os.killpg(self.proc.pid, sig)  # the master and its worker at once
        else:
            self.proc.send_signal(sig)  # gunicorn's own graceful stop: the worker drains
        self.proc.wait(30)


# ---- a loopback TCP proxy that can cut every connection without a FIN to the client -------------


class Proxy:
    def __init__(self, target: int) -> None:
        self.target = target
        self.pairs: list[tuple[socket.socket, socket.socket, list[bool]]] = []
        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.port = int(self.server.server_port)

    def handle(self, client: socket.socket, _addr: Any) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            reset(client)
            return
        upstream.settimeout(None)
        cut = [False]
        pair = (client, upstream, cut)
        self.pairs.append(pair)
        a = gevent.spawn(pump, client, upstream, cut)
        b = gevent.spawn(pump, upstream, client, cut)
        gevent.joinall([a, b])
        if pair in self.pairs:
            self.pairs.remove(pair)

    def cut_all(self) -> int:
        """Stop forwarding every open connection: the node's side is reset (RST), the
        client's side just goes silent (no FIN); it is reset later, once the client left."""
        pairs, self.pairs = self.pairs, []
        for client, upstream, cut in pairs:
            cut[0] = True
            reset(upstream)
            gevent.spawn_later(15, reset, client)
        return len(pairs)

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for client, upstream, _cut in self.pairs:
            reset(client)
            reset(upstream)


def pump(src: socket.socket, dst: socket.socket, cut: list[bool]) -> None:
    try:
        while not cut[0]:
            data = src.recv(65536)
            if not data or cut[0]:
                break
            dst.sendall(data)
    except OSError:
        pass
    if not cut[0]:  # an ordinary end: pass the close on
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


# ---- clients ----------------------------------------------------------------------------------------


@dataclass
class Client:
    cid: str
    room: str
    routes: list[int]  # the ports to try, its home first
    silence: float
    positions: dict[str, dict[str, Any]] = field(default_factory=dict)  # stream key -> {offset, epoch}
    got: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    since: dict[str, float] = field(default_factory=dict)  # stream key -> when it started receiving it
    excused: list[tuple[str, float, float]] = field(default_factory=list)  # (stream, from, to)
    answers: list[tuple[float, str, Any]] = field(default_factory=list)  # every resume result
    last_open: dict[str, float] = field(default_factory=dict)  # stream key -> when its connection opened
    not_recovered: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # a live offset jump in one epoch
    epoch_changed: Counter[str] = field(default_factory=Counter)  # a live message in a new epoch
    unpositioned: Counter[str] = field(default_factory=Counter)  # frames without offset/epoch
    up: bool = False
    connected_at: float = 0.0
    drops: int = 0
    sent: dict[str, Any] = field(default_factory=dict)  # the last resume frame
    heard: float = 0.0  # when the latest broadcast it received was published
    why: Counter[str] = field(default_factory=Counter)  # what ended each attempt
    route: int = 0
    ws: Any = None

    def key(self, msg: dict[str, Any]) -> str:
        kind = msg["type"]
        return f"room:{msg['room']}" if kind == "room" else kind

    def run(self, stop: list[bool]) -> None:
        attempt = 0
        while not stop[0]:
            try:
                self.session(stop)
                attempt = 0
            except (websocket.WebSocketException, OSError, ValueError, KeyError) as exc:
                self.why[type(exc).__name__] += 1
                if self.up:  # it was connected: home first again
                    self.drops += 1
                    self.route = 0
                else:  # it never got going there: the other node next
                    self.route = (self.route + 1) % len(self.routes)
            finally:
                if self.ws is not None:
                    self.ws.shutdown()
                    self.ws = None
                self.up = False
            if stop[0]:
                return
            ceiling = min(BACKOFF_CEILING, BACKOFF_BASE * 2**attempt)
            attempt += 1
            gevent.sleep(ceiling / 2 + random.random() * ceiling / 2)

    def session(self, stop: list[bool]) -> None:
        resuming = bool(self.since)
        self.connected_at = 0.0
        url = f"ws://127.0.0.1:{self.routes[self.route]}/ws/chat" + ("?resume=1" if resuming else "")
        self.ws = ws = websocket.create_connection(
            url, timeout=5, header=[f"Authorization: Bearer {token(self.cid)}"], enable_multithread=False
        )
        welcome = json.loads(ws.recv())
        if welcome.get("type") != "welcome":
            raise ValueError(f"not a welcome: {welcome}")
        now = time.time()
        if not resuming:
            for k, pos in (welcome.get("streams") or {}).items():
                self.positions[k] = pos
                self.since[k] = now
            ws.send(json.dumps({"type": "join", "room": self.room, "id": "j"}))
        else:
            rooms = {self.room: self.positions.get(f"room:{self.room}", {"offset": 0, "epoch": ""})}
            frame = {"type": "resume", "id": "r", "rooms": rooms}
            frame.update({k: self.positions[k] for k in ("broadcast", "direct") if k in self.positions})
            ws.send(json.dumps(frame))
            self.sent = frame
        ws.settimeout(self.silence / 2)
        pinged = False
        while not stop[0]:
            try:
                opcode, data = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if pinged:  # silent for `silence` seconds, a ping unanswered: dead
                    raise
                ws.ping()
                pinged = True
                continue
            pinged = False
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise websocket.WebSocketConnectionClosedException("closed by the server")
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            msg = json.loads(data)
            kind = msg.get("type")
            if kind in KINDS:
                k = self.key(msg)
                data = msg.get("data")
                if isinstance(data, dict) and "n" in data:
                    self.got[k][int(data["n"])] += 1
                    if kind == "broadcast":
                        self.heard = max(self.heard, float(data.get("t", 0)))
                pos, offset = self.positions.get(k), msg.get("offset")
                if not isinstance(offset, int):  # a message the history did not keep: no position
                    self.unpositioned[kind] += 1
                    continue
                if pos and pos["epoch"] == msg.get("epoch") and offset > pos["offset"] + 1:
                    self.skipped[kind] += offset - pos["offset"] - 1
                if pos and pos["epoch"] and pos["epoch"] != msg.get("epoch"):
                    # a new epoch seen live: the stream says its history may be gone, a client reloads
                    self.epoch_changed[kind] += 1
                    self.excused.append((k, self.last_open.get(k, 0.0), time.time()))
                if not pos or pos["epoch"] != msg.get("epoch") or offset > pos["offset"]:
                    self.positions[k] = {"offset": offset, "epoch": msg.get("epoch", "")}
            elif kind == "joined" and not resuming:
                k = f"room:{msg['room']}"
                self.positions.setdefault(k, {"offset": msg.get("offset", 0), "epoch": msg.get("epoch", "")})
                self.since[k] = time.time()
                self.connected_at, self.up = time.time(), True
            elif kind == "resumed":
                self.resumed(msg, now)
                self.connected_at, self.up = time.time(), True

    def resumed(self, msg: dict[str, Any], opened: float) -> None:
        results = {k: msg[k] for k in ("broadcast", "direct") if isinstance(msg.get(k), dict)}
        results.update({f"room:{name}": r for name, r in (msg.get("rooms") or {}).items()})
        now = time.time()
        for k, result in results.items():
            self.answers.append((now, k, result))
            if "error" in result:
                continue
            if not result.get("recovered"):
                self.not_recovered[k.split(":")[0]] += 1
                asked = self.sent.get(k) if ":" not in k else self.sent.get("rooms", {}).get(k[5:])
                NOT_RECOVERED.append(f"{self.cid} {k}: asked {asked}, answered {result}")
                # whatever this stream missed since the previous connection opened is excused
                self.excused.append((k, self.last_open.get(k, 0.0), now))
            self.positions[k] = {"offset": result.get("offset", 0), "epoch": result.get("epoch", "")}
        for k in results:
            self.last_open[k] = opened


# ---- publishers --------------------------------------------------------------------------------------


@dataclass
class Published:
    kind: str
    stream: str
    n: int
    t: float  # when the request started


class Publishers:
    def __init__(self, ports: list[int], clients: list[Client], rooms: list[str], rates: dict[str, float]) -> None:
        self.ports, self.clients, self.rooms, self.rates = ports, clients, rooms, rates
        self.log: list[Published] = []
        self.refused: Counter[str] = Counter()
        self.seq = 0
        self.admin = token("faults-admin", admin=True)
        self.stop = [True]
        self.greenlets: list[gevent.Greenlet] = []

    def post(self, path: str, body: dict[str, Any], key: str) -> bool:
        """POST to one node, the other if that fails; the same `Idempotency-Key` each time, so a
        retry of a publish whose answer was lost (a node killed, a slow answer) is not a duplicate."""
        headers = {"Authorization": f"Bearer {self.admin}", "Content-Type": "application/json", "Idempotency-Key": key}
        for port in random.sample(self.ports, len(self.ports)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            try:
                conn.request("POST", path, json.dumps(body), headers)
                status = conn.getresponse().status
                if status in (200, 202):
                    return True
                if status == 404:  # not_connected: nothing published
                    return False
            except OSError:
                pass
            finally:
                conn.close()
        return False

    def one(self, kind: str) -> None:
        self.seq += 1
        n, t = self.seq, time.time()
        if kind == "broadcast":
            stream, path, body = "broadcast", "/api/broadcast", {"data": {"n": n, "t": t}}
        elif kind == "room":
            room = random.choice(self.rooms)
            stream, path, body = f"room:{room}", "/api/broadcast", {"room": room, "data": {"n": n}}
        else:
            to = random.choice(self.clients).cid
            stream, path, body = f"direct:{to}", "/api/send", {"to": to, "data": {"n": n}}
        if self.post(path, body, f"faults-{n}"):
            self.log.append(Published(kind, stream, n, t))
        else:
            self.refused[kind] += 1

    def loop(self, kind: str) -> None:
        period = 1 / self.rates[kind]
        nxt = time.monotonic()
        while not self.stop[0]:
            gevent.spawn(self.one, kind)  # a slow answer does not slow the rate
            nxt += period
            gevent.sleep(max(0.0, nxt - time.monotonic()))

    def start(self) -> None:
        self.stop[0] = False
        self.greenlets = [gevent.spawn(self.loop, k) for k in KINDS if self.rates[k] > 0]

    def halt(self) -> None:
        self.stop[0] = True
        gevent.joinall(self.greenlets, timeout=5)
        gevent.sleep(3.5)  # the last requests' timeout


# ---- counting -------------------------------------------------------------------------------------------


def recipients(p: Published, clients: list[Client], by_room: dict[str, list[Client]]) -> list[tuple[Client, str]]:
    if p.kind == "broadcast":
        cands = [(c, "broadcast") for c in clients]
    elif p.kind == "room":
        cands = [(c, p.stream) for c in by_room[p.stream[5:]]]
    else:
        cid = p.stream[7:]
        cands = [(c, "direct") for c in clients if c.cid == cid]
    return [(c, k) for c, k in cands if k in c.since and c.since[k] < p.t]


def count(window: list[Published], clients: list[Client]) -> tuple[dict[str, Counter[str]], list[str]]:
    by_room: dict[str, list[Client]] = defaultdict(list)
    for c in clients:
        by_room[c.room].append(c)
    out: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    lost: list[str] = []
    for p in window:
        row = out[p.kind]
        row["published"] += 1
        rcpts = recipients(p, clients, by_room)
        for c, k in rcpts:
            row["expected"] += 1
            seen = c.got[k][p.n]
            if seen:
                row["delivered"] += 1
                row["duplicated"] += seen - 1
            elif any(s == k and a <= p.t <= b for s, a, b in c.excused):
                row["excused"] += 1
            else:
                row["lost"] += 1
                answers = [(round(t, 2), {f: r.get(f) for f in ("recovered", "replayed", "offset", "epoch")})
                           for t, s, r in c.answers if s == k][-3:]  # fmt: skip
                got = sum(1 for r, rk in rcpts if r.got[rk][p.n])
                lost.append(
                    f"{c.cid} {k} n={p.n} published at {p.t:.2f}, received by {got} of {len(rcpts)}; "
                    f"its last resume answers: {answers}"
                )
    return out, lost


def settled(window: list[Published], clients: list[Client]) -> bool:
    _rows, lost = count(window, clients)
    return not lost and all(c.up for c in clients)


# ---- the run -----------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rooms", type=int, default=10)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma list of " + ",".join(FAULTS))
    ap.add_argument("--steady", type=float, default=4, help="seconds of traffic before and after each fault")
    ap.add_argument("--rate", default="4,20,20", help="broadcasts, room messages, directs per second")
    ap.add_argument("--silence", type=float, default=3, help="seconds without a frame: the connection is dead")
    ap.add_argument("--history", type=int, default=5000, help="WSAPP_HISTORY_SIZE (each gap fits in it)")
    ap.add_argument("--json", action="store_true", help="one JSON line per fault on stdout as well")
    ap.add_argument("--keep-logs", action="store_true", help="keep the nodes' and Redis's logs (the folder is printed)")
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    if unknown := set(faults) - set(FAULTS):
        ap.error(f"unknown faults: {sorted(unknown)}")
    rates = dict(zip(KINDS, (float(x) for x in args.rate.split(",")), strict=True))

    signal.signal(signal.SIGTERM, lambda _s, _f: sys.exit(143))
    atexit.register(end_all)
    folder = Path(tempfile.mkdtemp(prefix="wsapp-faults-"))
    stop = [False]
    proxy: Proxy | None = None
    try:
        redis = SentinelSet(folder)
        redis.start()
        log(f"redis primary {redis.ports[0]}, replica {redis.ports[1]}, sentinels {redis.sentinels}")
        a, b = Node("A", redis.url, folder, args.history), Node("B", redis.url, folder, args.history)
        gevent.joinall([gevent.spawn(a.start), gevent.spawn(b.start)], raise_error=True)
        proxy = Proxy(a.port)
        log(f"node A on {a.port} (proxy {proxy.port}), node B on {b.port}")
        rooms = [f"r{i}" for i in range(args.rooms)]
        clients = [
            Client(
                f"c{i}",
                rooms[i % len(rooms)],
                [proxy.port, b.port] if i % 2 == 0 else [b.port, proxy.port],
                args.silence,
            )  # fmt: skip
            for i in range(args.clients)
        ]
        runners = []
        for c in clients:
            runners.append(gevent.spawn(c.run, stop))
            gevent.sleep(0.01)
        wait_for(lambda: all(c.up for c in clients), 60, "every client connected")
        log(f"{len(clients)} clients connected")
        pubs = Publishers([a.port, b.port], clients, rooms, rates)
        results = []
        for fault in faults:
            start = len(pubs.log)
            pubs.start()
            gevent.sleep(args.steady)
            drops_before = sum(c.drops for c in clients)
            t0, wall0 = time.monotonic(), time.time()
            log(f"fault {fault} at {wall0:.2f}")
            if fault == "kill9":
                a.signal(signal.SIGKILL)
                a.start()
            elif fault == "sigterm":
                b.signal(signal.SIGTERM)
                b.start()
            elif fault == "netcut":
                log(f"  cut {proxy.cut_all()} connections")
            elif fault == "redis_empty":
                primary = redis.primary()
                end(redis.procs[primary], signal.SIGKILL)
                redis.run_redis(primary)
            elif fault == "failover":
                old = redis.primary()
                end(redis.procs[old])
                wait_for(lambda old=old: redis.primary() != old, 60, "the sentinels promote the replica")
                log(f"  primary {old} -> {redis.primary()}")
            fault_done = time.monotonic() - t0
            # every client connected again; those that dropped have resumed (up again)
            gevent.sleep(0.5)
            back = wait_for_back(clients, wall0, 60)
            back_s = back - t0 if back else float("nan")
            gevent.sleep(args.steady)
            pubs.halt()
            window = pubs.log[start:]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not settled(window, clients):
                gevent.sleep(0.25)
            rows, lost = count(window, clients)
            drops = sum(c.drops for c in clients) - drops_before
            nr, ep = Counter[str](), Counter[str]()
            for c in clients:
                nr.update(c.not_recovered)
                ep.update(c.epoch_changed)
                c.not_recovered.clear()
                c.epoch_changed.clear()
            results.append((fault, rows, nr, back_s, fault_done, drops, dict(pubs.refused), ep))
            pubs.refused.clear()
            report(fault, rows, nr, ep, back_s, fault_done, drops, lost, args.json)
            if fault in ("redis_empty", "failover") and fault != faults[-1]:
                if fault == "failover":
                    old_port = next(p for p in redis.ports if p != redis.primary())
                    redis.run_redis(old_port, replica_of=redis.primary())
                redis.wait_synced()
        summary(results, clients)
        total_lost = sum(r[1][k]["lost"] for r in results for k in KINDS)
        total_dup = sum(r[1][k]["duplicated"] for r in results for k in KINDS)
        print(f"TOTAL lost={total_lost} duplicated={total_dup}", flush=True)
        return 1 if total_lost or total_dup else 0
    finally:
        stop[0] = True
        if proxy is not None:
            proxy.stop()
        end_all()
        if args.keep_logs:
            log(f"logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def wait_for_back(clients: list[Client], since: float, timeout: float) -> float | None:
    """When every client is connected and has received a broadcast published after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.up and c.heard > since for c in clients):
            return time.monotonic()
        gevent.sleep(0.05)
    return None


def report(fault: str, rows: dict[str, Counter[str]], nr: Counter[str], ep: Counter[str], back: float,
           took: float, drops: int, lost: list[str], as_json: bool) -> None:  # fmt: skip
    print(f"\n{fault}: {drops} connections dropped; every client back {back:.1f} s after the fault "
          f"(the fault itself took {took:.1f} s)", flush=True)  # fmt: skip
    print("| stream | published | expected | delivered | lost | duplicated | excused | recovered: false "
          "| new epoch live |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for k in KINDS:
        r = rows[k]
        print(f"| {k} | {r['published']} | {r['expected']} | {r['delivered']} | {r['lost']} | "
              f"{r['duplicated']} | {r['excused']} | {nr[k]} | {ep[k]} |")  # fmt: skip
    for line in NOT_RECOVERED[:5]:
        print(f"  recovered: false: {line}", flush=True)
    NOT_RECOVERED.clear()
    for line in lost[:10]:
        print(f"  LOST {line}", flush=True)
    if len(lost) > 10:
        print(f"  ... {len(lost) - 10} more lost", flush=True)
    if as_json:
        print(json.dumps({"fault": fault, "back_s": back, "drops": drops,
                          "rows": {k: dict(rows[k]) for k in KINDS}, "not_recovered": dict(nr),
                          "new_epoch_live": dict(ep)}), flush=True)  # fmt: skip


def summary(results: list[Any], clients: list[Client]) -> None:
    skipped, unpositioned = Counter[str](), Counter[str]()
    for c in clients:
        skipped.update(c.skipped)
        unpositioned.update(c.unpositioned)
    print("\n| fault | lost | duplicated | excused | recovered: false answers | new epoch seen live | back (s) |")
    print("|---|---|---|---|---|---|---|")
    for fault, rows, nr, back, _took, _drops, _refused, ep in results:
        lost = sum(rows[k]["lost"] for k in KINDS)
        dup = sum(rows[k]["duplicated"] for k in KINDS)
        exc = sum(rows[k]["excused"] for k in KINDS)
        print(f"| {fault} | {lost} | {dup} | {exc} | {sum(nr.values())} | {sum(ep.values())} | {back:.1f} |")
    why = Counter[str]()
    for c in clients:
        why.update(c.why)
    print(f"\nwhat ended each connection attempt: {dict(why)}")
    if skipped:
        print(f"\nlive offset jumps within one epoch (a gap seen without a resume): {dict(skipped)}")
    if unpositioned:
        print(f"messages received without offset/epoch (the history refused them): {dict(unpositioned)}")
    refused = Counter[str]()
    for r in results:
        refused.update(r[6])
    if refused:
        print(f"publishes the API refused (not counted as published): {dict(refused)}")


if __name__ == "__main__":
    sys.exit(main())
