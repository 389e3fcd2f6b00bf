"""What a join and a leave cost as the client holds more rooms, with and without Redis.

    .venv/bin/python bench/rooms.py [--held 0,1000,10000] [--redis-server /usr/bin/redis-server]

Runs the hub, the registry and the backplane in this process (no sockets to clients):
for each count of rooms already held, one client joins and leaves a fresh room 500
times and the median and p99 per operation are printed. With Redis it starts its own
redis-server on a free port. The claim under test (docs/security.md): the cost does not
grow with the rooms held. The cap (`WSAPP_MAX_ROOMS`) is lifted here to show that.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsapp.backplane import Backplane, InProcessBackplane  # noqa: E402
from wsapp.hub import Hub  # noqa: E402
from wsapp.registry import Peer, Registry  # noqa: E402
from wsapp.settings import Settings  # noqa: E402

OPS = 500


class _Ws:
    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    def send_frame(self, frame: bytes) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(backplane: Backplane, registry: Registry, held: int) -> tuple[float, float]:
    hub = Hub(registry, backplane)
    peer = Peer(_Ws(f"c{held}"), f"client-{held}", False, 0.0, "", "chat")  # type: ignore[arg-type]
    hub.connect(peer)
    for i in range(held):
        hub.join(peer, f"held-{i}", held + 1)
    samples = []
    for i in range(OPS):
        start = time.perf_counter()
        hub.join(peer, f"fresh-{i}", held + 1)
        hub.leave(peer, f"fresh-{i}")
        samples.append((time.perf_counter() - start) / 2)
    hub.disconnect(peer)
    samples.sort()
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", default="0,1000,10000")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    args = parser.parse_args()
    counts = [int(n) for n in args.held.split(",")]

    registry = Registry(10, 10)
    print("backplane    rooms held   join/leave median   p99")
    for held in counts:
        median, p99 = measure(InProcessBackplane(registry), registry, held)
        print(f"in-process   {held:>10}   {median:>12.3f} ms   {p99:.3f} ms")

    if not Path(args.redis_server).exists():
        print("redis-server not found: Redis rows skipped")
        return
    port = _free_port()
    proc = subprocess.Popen(
        [args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        from wsapp.redis.backplane import RedisBackplane

        settings = Settings.from_env({"WSAPP_JWT_SECRET": "x" * 40, "WSAPP_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        deadline = time.monotonic() + 10
        backplane: Any = None
        while backplane is None or not backplane.healthy:
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not come up")
            registry = Registry(10, 10)
            backplane = RedisBackplane(registry, settings)
            backplane.start()
            if not backplane.healthy:
                backplane.stop()
                time.sleep(0.1)
        for held in counts:
            median, p99 = measure(backplane, registry, held)
            print(f"redis        {held:>10}   {median:>12.3f} ms   {p99:.3f} ms")
        backplane.stop()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
