"""KiB per idle chat connection, without the Go load generator: the `idle` row's method.

Starts wsapp as `bench/run.py` does (same settings, pinned to the server core), opens
20 chat connections as warm-up and closes them, reads the worker's VmRSS, opens N idle
chat connections (raw sockets from this process, a token per client id in `?token=`,
each one's `welcome` read), waits 1 s and reads VmRSS again: (after - before) / N.

    .venv/bin/python bench/idle_memory.py [--conns 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the same Server and wsapp settings)


def open_chat(port: int, client_id: str) -> socket.socket:
    """One chat connection, handshake done and `welcome` read; the socket stays open."""
    now = int(time.time())
    token = jwt.encode({"sub": client_id, "iat": now, "exp": now + 3600}, run.SECRET, algorithm="HS256")
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(
        (
            f"GET /ws/chat?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"welcome" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed before welcome: {data[:300]!r}")
        data += chunk
    if not data.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no 101: {data[:300]!r}")
    return sock


def measure(conns: int) -> float:
    stack = next(s for s in run.stacks("") if s.name == "wsapp")
    server = run.Server(stack).start()
    try:
        for s in [open_chat(server.port, f"w{i}") for i in range(20)]:
            s.close()
        time.sleep(0.5)
        before = server.rss_kib()
        held = [open_chat(server.port, f"i{i}") for i in range(conns)]
        time.sleep(1.0)
        after = server.rss_kib()
        for s in held:
            s.close()
        return (after - before) / conns
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    values = [measure(args.conns) for _ in range(args.reps)]
    print(" ".join(f"{v:.2f}" for v in values), f"median {statistics.median(values):.2f} KiB per idle chat conn")


if __name__ == "__main__":
    main()
