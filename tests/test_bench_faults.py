"""bench/faults.py runs: a tiny configuration (a few clients, one fault) counts 0 lost, 0 duplicated.

The benchmark starts its own Redis primary, replica and three sentinels, two gunicorn
nodes and a proxy on loopback ports, and ends them by pid; this test only runs it and
reads its output.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import REDIS_SERVER, unavailable

ROOT = Path(__file__).resolve().parent.parent


def test_the_fault_benchmark_counts_nothing_lost_through_a_node_kill() -> None:
    if subprocess.run(["which", REDIS_SERVER], capture_output=True).returncode and not Path(REDIS_SERVER).exists():
        unavailable("redis-server")
    argv = [sys.executable, "bench/faults.py", "--clients", "4", "--rooms", "2", "--faults", "kill9", "--steady", "1"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    text = out.stdout
    assert "TOTAL lost=0 duplicated=0" in text, text + out.stderr[-3000:]
    assert out.returncode == 0
    rows = re.findall(r"^\| (broadcast|room|direct) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
    assert {r[0] for r in rows} == {"broadcast", "room", "direct"}
    for _kind, published, expected, delivered, lost, duplicated in rows:
        assert int(published) > 0 and int(expected) > 0  # traffic ran through the fault
        assert int(delivered) == int(expected) and (lost, duplicated) == ("0", "0")
    assert re.search(r"kill9: \d+ connections dropped", text) and "kill9: 0 connections" not in text
