"""Bystander latency while another connection floods: the figure behind "fairness".

    .venv/bin/python bench/flood.py                 # every flood kind, 5 s each
    .venv/bin/python bench/flood.py --seconds 10 --kinds pong,ping

One gunicorn (gevent worker, as shipped) per row. A flooder process sends one frame
kind as fast as the kernel takes it (tiny frames: the most parsing per byte), while a
bystander on another connection does echo round trips of 64 bytes, one at a time; the
table gives the bystander's round-trip latency (p50 / p99 / max) during the flood and
how the flood ended. Rows with `WSAPP_RATE_LIMIT=0` show the reader's yield alone (the
flood is never closed); rows with the default budget show the flooder closed 1008.
The flooder runs in its own process so the bystander's timings do not share its GIL.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import Server, make_token, raw_handshake, ws_connect  # noqa: E402

PING, PONG, TEXT, CONT = 0x9, 0xA, 0x1, 0x0
# kind: (opcode of an opening non-final frame or None, the repeated frame's opcode, payload, fin)
KINDS: dict[str, tuple[int | None, int, bytes, bool]] = {
    "pong": (None, PONG, b"", True),
    "ping": (None, PING, b"p", True),
    "text": (None, TEXT, b"t", True),
    "continuation": (TEXT, CONT, b"", False),  # one message that never ends
}


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + key + body


def flooder(port: int, kind: str, seconds: float) -> None:
    """Child process: flood `kind` for `seconds`; when the server closes the connection,
    connect again and go on (a persistent attacker)."""
    opening, op, payload, fin = KINDS[kind]
    frame = masked(op, payload, fin)
    chunk = frame * (65536 // len(frame))
    end = time.monotonic() + seconds
    sent = connections = 0
    while time.monotonic() < end:
        status, _, _, sock = raw_handshake(port, "/ws/echo", {"Authorization": f"Bearer {make_token('flooder')}"})
        assert status == 101
        connections += 1
        try:
            if opening is not None:
                sock.sendall(masked(opening, b"", fin=False))
            while time.monotonic() < end:
                sock.sendall(chunk)
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0] and not sock.recv(1 << 20):
                    break  # closed by the server
        except OSError:
            pass
        sock.close()
    print(f"{sent / 1e6:.0f} MB, {connections} conn", flush=True)


def bystander(srv: Server, seconds: float, pace_s: float) -> list[float]:
    ws = ws_connect(srv, "/ws/echo", make_token("bystander"))
    ws.settimeout(60)
    msg = "x" * 64
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        ws.send(msg)
        assert ws.recv() == msg
        samples.append((time.perf_counter() - t0) * 1000)
        if pace_s:
            time.sleep(pace_s)  # stay within the bystander's own budget
    ws.close()
    return samples


def run(kind: str | None, rate_limit: str, seconds: float) -> dict[str, object]:
    env = {"WSAPP_INSTANCE_PATH": tempfile.mkdtemp(prefix="wsapp-flood-")}
    if rate_limit:
        env["WSAPP_RATE_LIMIT"] = rate_limit
    srv = Server(env=env).start()
    try:
        worker = re.findall(r"Booting worker with pid: (\d+)", srv.log())
        proc = None
        if kind:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--flooder", str(srv.port), kind, str(seconds + 1)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # the flood gets going before the first sample
        samples = bystander(srv, seconds, 0.0 if rate_limit == "0" else 0.025)
        out = proc.communicate(timeout=60)[0].strip() if proc else ""
        killed = re.findall(r"Booting worker with pid: (\d+)", srv.log()) != worker
        closes = sorted(set(re.findall(r"disconnect client=flooder .*code=(\d+)", srv.log())))
    finally:
        srv.stop()
    q = statistics.quantiles(samples, n=100)
    return {
        "kind": kind or "(no flood)",
        "rate": rate_limit or "default (50/s, burst 100)",
        "n": len(samples),
        "p50": q[49],
        "p99": q[98],
        "max": max(samples),
        "flood": out,
        "ended": f"closed {', '.join(closes)}" if closes else "not closed",
        "worker_replaced": killed,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flooder", nargs=3, metavar=("PORT", "KIND", "SECONDS"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args()
    if args.flooder:
        flooder(int(args.flooder[0]), args.flooder[1], float(args.flooder[2]))
        return 0
    rows = [run(None, "0", args.seconds)]
    for kind in args.kinds.split(","):
        rows.append(run(kind, "0", args.seconds))
        rows.append(run(kind, "", args.seconds))
    print(
        "| flood | WSAPP_RATE_LIMIT | echoes | p50 ms | p99 ms | max ms | flooder sent | flood ended | worker replaced |"  # noqa: E501
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['rate']} | {r['n']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} "
            f"| {r['flood']} | {r['ended']} | {'yes' if r['worker_replaced'] else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
