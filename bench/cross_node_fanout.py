"""Cross-node fan-out through the Redis backplane, next to the single-node figure.

    .venv/bin/python bench/cross_node_fanout.py                      # 200 subscribers, 300 broadcasts
    .venv/bin/python bench/cross_node_fanout.py --subscribers 1000 --messages 200

It starts what it needs on free 127.0.0.1 ports and stops it at the end:
  single   one gunicorn (one gevent worker), no Redis: the in-process backplane
  redis    a redis-server and two gunicorn nodes (one worker each) on it
Subscribers connect to /ws/chat (half on node A, half on node B in the Redis setup).
The publisher POSTs /api/broadcast on node A (the single node), in two phases:
  paced    `--rate` broadcasts per second: latency with no queueing
  flood    `--messages` broadcasts from `--posters` concurrent HTTP clients: deliveries/s
Latency is from just before the POST to the subscriber reading the frame (one clock:
everything runs on this machine). Deliveries/s is the deliveries a group received over
the time from the first POST to its last delivery. The subscribers run in this one
Python process (gevent), so at high counts the figures can be client-bound: compare
rows of one run, not runs on different machines.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import jwt  # noqa: E402
import websocket  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(client_id: str, admin: bool = False) -> str:
    claims: dict[str, Any] = {"sub": client_id, "exp": int(time.time()) + 3600}
    if admin:
        claims["roles"] = ["admin"]
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Proc:
    """A child process in its own session, stopped with SIGTERM (then SIGKILL) at the end."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="wsapp-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def start_redis() -> tuple[Proc, str]:
    port = free_port()
    proc = Proc([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None, 10, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def start_node(redis_url: str = "", extra_env: dict[str, str] | None = None) -> tuple[Proc, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSAPP_")}
    env.update({"WSAPP_HOST": "127.0.0.1", "WSAPP_PORT": str(port), "WSAPP_JWT_SECRET": SECRET,
                "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0", "WSAPP_SEND_QUEUE": "100000",
                "WSAPP_SHUTDOWN_TIMEOUT": "2", "WSAPP_LOG_LEVEL": "WARNING",
                "WSAPP_INSTANCE_PATH": tempfile.mkdtemp(prefix="wsapp-bench-")})  # fmt: skip
    if redis_url:
        env["WSAPP_REDIS_URL"] = redis_url
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app", "--access-logfile", "/dev/null"]
    proc = Proc(argv, env)

    def ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200

    wait_for(ready, 30, f"gunicorn on port {port}")
    return proc, port


@dataclass
class Group:
    """The subscribers of one node and what they received."""

    name: str
    latencies: list[float] = field(default_factory=list)
    last_at: float = 0.0


def subscribe(port: int, client_id: str, group: Group, phase: list[str]) -> websocket.WebSocket:
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/chat", timeout=30,
                                     header=[f"Authorization: Bearer {token(client_id)}"])  # fmt: skip
    assert json.loads(ws.recv())["type"] == "welcome"

    def read() -> None:  # one reader greenlet per subscriber
        try:
            while True:
                msg = json.loads(ws.recv())
                now = time.time()
                if msg.get("type") == "broadcast" and msg["data"].get("phase") == phase[0]:
                    group.latencies.append(now - msg["data"]["t"])
                    group.last_at = now
        except (websocket.WebSocketException, OSError, ValueError):  # closed at the end
            return

    gevent.spawn(read)
    return ws


def publish(port: int, count: int, rate: float, posters: int, phase: str) -> None:
    admin = token("bench", admin=True)
    todo = iter(range(count))

    def poster() -> None:  # one keep-alive HTTP connection per poster
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in todo:
            if rate:
                gevent.sleep(max(0.0, start + i / rate - time.monotonic()))
            body = json.dumps({"data": {"phase": phase, "seq": i, "t": time.time()}})
            conn.request("POST", "/api/broadcast", body, {"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {admin}"})  # fmt: skip
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"broadcast answered {resp.status}")

    start = time.monotonic()
    gevent.joinall([gevent.spawn(poster) for _ in range(1 if rate else posters)], raise_error=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else float("nan")


def run_phase(groups: list[Group], port: int, args: argparse.Namespace, phase: list[str], name: str,
              subscribers: dict[str, int]) -> list[dict[str, Any]]:  # fmt: skip
    for g in groups:
        g.latencies.clear()
        g.last_at = 0.0
    phase[0] = name
    count = args.paced if name == "paced" else args.messages
    started = time.time()
    publish(port, count, args.rate if name == "paced" else 0, args.posters, name)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and any(len(g.latencies) < count * subscribers[g.name] for g in groups):
        gevent.sleep(0.05)
    rows = []
    for g in groups:
        expected = count * subscribers[g.name]
        span = max(g.last_at - started, 1e-9)
        rows.append({"phase": name, "group": g.name, "subscribers": subscribers[g.name],
                     "delivered": f"{len(g.latencies)}/{expected}",
                     "deliveries_per_s": len(g.latencies) / span if name == "flood" else None,
                     "p50_ms": pct(g.latencies, 50), "p90_ms": pct(g.latencies, 90),
                     "p99_ms": pct(g.latencies, 99)})  # fmt: skip
    if len(groups) > 1:  # the whole cluster's figure, to set against the single node's
        every = [x for g in groups for x in g.latencies]
        span = max(max(g.last_at for g in groups) - started, 1e-9)
        rows.append({"phase": name, "group": "all", "subscribers": sum(subscribers.values()),
                     "delivered": f"{len(every)}/{count * sum(subscribers.values())}",
                     "deliveries_per_s": len(every) / span if name == "flood" else None,
                     "p50_ms": pct(every, 50), "p90_ms": pct(every, 90), "p99_ms": pct(every, 99)})  # fmt: skip
    return rows


def bench_setup(ports: list[tuple[str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Subscribers split evenly over `ports` (name, port); publish on the first."""
    phase = ["warmup"]
    groups = {name: Group(name) for name, _ in ports}
    subscribers = {name: 0 for name, _ in ports}
    sockets = []
    for i in range(args.subscribers):
        name, port = ports[i % len(ports)]
        sockets.append(subscribe(port, f"sub{i}", groups[name], phase))
        subscribers[name] += 1
    try:
        publish(ports[0][1], 5, 0, 1, "warmup")
        gevent.sleep(0.5)
        rows = run_phase(list(groups.values()), ports[0][1], args, phase, "paced", subscribers)
        rows += run_phase(list(groups.values()), ports[0][1], args, phase, "flood", subscribers)
        return rows
    finally:
        for ws in sockets:
            ws.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=200, help="WebSocket subscribers (default 200)")
    parser.add_argument("--messages", type=int, default=300, help="broadcasts in the flood phase (default 300)")
    parser.add_argument("--posters", type=int, default=4, help="concurrent HTTP publishers when flooding")
    parser.add_argument("--paced", type=int, default=100, help="broadcasts in the paced phase (default 100)")
    parser.add_argument("--rate", type=float, default=50, help="paced broadcasts per second (default 50)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for a phase's deliveries")
    args = parser.parse_args()
    if args.subscribers < 2 or args.messages * args.subscribers > 2_000_000:
        parser.error("need 2..N subscribers and at most 2,000,000 deliveries per phase")

    rows: list[dict[str, Any]] = []
    procs: list[Proc] = []
    try:
        node, port = start_node()
        procs.append(node)
        rows += [dict(r, setup="single node, in-process") for r in bench_setup([("node A", port)], args)]
        node.stop()
        procs.remove(node)

        redis_proc, url = start_redis()
        procs.append(redis_proc)
        (node_a, port_a), (node_b, port_b) = start_node(url), start_node(url)
        procs += [node_a, node_b]
        for r in bench_setup([("node A", port_a), ("node B", port_b)], args):
            where = {"node A": "Redis, same node as publisher", "node B": "Redis, cross-node"}.get(
                r["group"], "Redis, both nodes"
            )
            rows.append(dict(r, setup=where))
    finally:
        for p in reversed(procs):
            p.stop()

    print(f"\n{args.subscribers} subscribers; paced: {args.paced} broadcasts at {args.rate:g}/s; "
          f"flood: {args.messages} broadcasts from {args.posters} HTTP clients; cores: {os.cpu_count()}\n")  # fmt: skip
    print("| setup | phase | subscribers | delivered | deliveries/s | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['deliveries_per_s']:,.0f}" if r["deliveries_per_s"] is not None else "-"
        print(f"| {r['setup']} | {r['phase']} | {r['subscribers']} | {r['delivered']} | {rate} | "
              f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
