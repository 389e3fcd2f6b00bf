"""What history costs: memory per retained message, and fan-out with history on and off.

    .venv/bin/python bench/history.py                       # 1,000 subscribers, 100 broadcasts
    .venv/bin/python bench/history.py --subscribers 200 --messages 100 --skip-fanout

Memory (no server needed but a redis-server for its half):
  in-process  `MemoryHistory` filled with N streams x M messages of a typical chat frame,
              measured with tracemalloc (Python's own allocations, frames included), next
              to what the store counts against `WSAPP_HISTORY_BYTES`
  Redis       the same messages through the publish script (`Bus.publish_at`), measured
              as the growth of Redis's `used_memory`
Fan-out: `bench/cross_node_fanout.py`'s two setups (one node; two nodes on Redis), each with
history on (the default) and off (`WSAPP_HISTORY_SIZE=0`): latency of paced broadcasts and
deliveries/s of a flood, every process on this machine (compare rows of one run).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cross_node_fanout as fanout  # noqa: E402  (patches gevent first)

from wsapp import history, protocol  # noqa: E402
from wsapp.redis.bus import Bus  # noqa: E402
from wsapp.redis.connect import connect  # noqa: E402
from wsapp.registry import Target  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog, a typical line of chat"  # 67 characters


def message(i: int) -> dict[str, Any]:
    return protocol.room_message("lobby", f"user{i % 50}", {"text": TEXT, "n": i})


def memory_in_process(streams: int, per_stream: int) -> dict[str, float]:
    h = history.MemoryHistory(per_stream, 3600, streams + 1, 1 << 40)
    prefixes = [history.body_prefix(message(i)) for i in range(per_stream)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for s in range(streams):
        for prefix in prefixes:
            h.append(f"room:r{s}", prefix)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    n = streams * per_stream
    frame = sum(len(f) for st in h._streams.values() for _o, _t, f in st.entries) / n
    return {"bytes_per_message": used / n, "frame_bytes": frame, "counted_per_message": h.nbytes / n}


def memory_redis(url: str, streams: int, per_stream: int) -> dict[str, float]:
    bus = Bus(connect(url, 5.0), "bench")
    client = bus.client
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    prefixes = [history.body_prefix(message(i)) for i in range(per_stream)]
    for s in range(streams):
        target = Target("room", f"r{s}")
        for prefix in prefixes:
            bus.publish_at(target, f"room:r{s}", prefix, 0, True, per_stream, 3600)
    after = int(client.info("memory")["used_memory"])
    client.close()
    n = streams * per_stream
    return {"bytes_per_message": (after - before) / n}


class _Sink:
    """A connection that takes every frame at once (the hot path without the sockets)."""

    conn_id = "sink"

    def send_frame(self, frame: bytes) -> bool:
        return True


def hot_path(subscribers: int, messages: int) -> dict[str, float]:
    """Microseconds per broadcast to `subscribers` queued connections, history on and off:
    the server's own cost (encode, number, keep, queue), no sockets."""
    import time

    from wsapp.backplane import InProcessBackplane
    from wsapp.hub import Hub
    from wsapp.registry import Peer, Registry

    out = {}
    for label, store in (("on", history.MemoryHistory(100, 300, 10000, 64 << 20)), ("off", None)):
        registry = Registry(subscribers + 1, 10)
        for i in range(subscribers):
            registry.add(Peer(_Sink(), f"s{i}", False, 0.0, "", "chat"))  # type: ignore[arg-type]
        hub = Hub(registry, InProcessBackplane(registry, store))
        data = {"text": TEXT}
        start = time.perf_counter()
        for _ in range(messages):
            hub.broadcast("bench", data)
        out[label] = (time.perf_counter() - start) / messages * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="streams filled for the memory figures")
    parser.add_argument("--per-stream", type=int, default=100, help="messages per stream (default 100)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100, help="broadcasts in the flood phase")
    parser.add_argument("--posters", type=int, default=4)
    parser.add_argument("--paced", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument(
        "--off-first", action="store_true", help="run history off first (the order matters on a busy machine)"
    )
    args = parser.parse_args()

    hot = hot_path(1000, 2000)
    print(
        f"\nhot path, one broadcast queued on 1,000 connections: history on {hot['on']:.0f} µs, "
        f"off {hot['off']:.0f} µs ({hot['on'] / hot['off']:.2f}x)"
    )
    hot1 = hot_path(1, 50000)
    print(f"hot path, one message to one connection: history on {hot1['on']:.1f} µs, off {hot1['off']:.1f} µs")
    mem = memory_in_process(args.streams, args.per_stream)
    redis_proc, url = fanout.start_redis()
    try:
        rmem = memory_redis(url, args.streams, args.per_stream)
    finally:
        redis_proc.stop()
    print(f"\nmemory, {args.streams} streams x {args.per_stream} messages, frame {mem['frame_bytes']:.0f} bytes:\n")
    print("| store | bytes per retained message | counted against WSAPP_HISTORY_BYTES |")
    print("|---|---|---|")
    print(f"| in-process (tracemalloc) | {mem['bytes_per_message']:.0f} | {mem['counted_per_message']:.0f} |")
    print(f"| Redis Streams (used_memory) | {rmem['bytes_per_message']:.0f} | - |")
    if args.skip_fanout:
        return

    rows: list[dict[str, Any]] = []
    setups: list[tuple[str, dict[str, str]]] = [("history on", {}), ("history off", {"WSAPP_HISTORY_SIZE": "0"})]
    for label, env in reversed(setups) if args.off_first else setups:
        procs: list[fanout.Proc] = []
        try:
            node, port = fanout.start_node(extra_env=env)
            procs.append(node)
            rows += [dict(r, setup=f"one node, {label}") for r in fanout.bench_setup([("node A", port)], args)]
            node.stop()
            procs.remove(node)
            redis_proc, url = fanout.start_redis()
            procs.append(redis_proc)
            (node_a, port_a), (node_b, port_b) = fanout.start_node(url, env), fanout.start_node(url, env)
            procs += [node_a, node_b]
            two = fanout.bench_setup([("node A", port_a), ("node B", port_b)], args)
            rows += [dict(r, setup=f"two nodes on Redis, {label}") for r in two if r["group"] == "all"]
        finally:
            for p in reversed(procs):
                p.stop()
    print(
        f"\n{args.subscribers} subscribers; paced: {args.paced} broadcasts at {args.rate:g}/s; "
        f"flood: {args.messages} broadcasts from {args.posters} HTTP clients; cores: {os.cpu_count()}\n"
    )
    print("| setup | phase | delivered | deliveries/s | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rate = f"{r['deliveries_per_s']:,.0f}" if r["deliveries_per_s"] is not None else "-"
        print(
            f"| {r['setup']} | {r['phase']} | {r['delivered']} | {rate} | "
            f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
