"""bench/run.py's report on made-up figures (pure: no server, no load generator, no npm):
a ratio of wsapp to every peer, the ceiling (Bun) marked and given as a ratio too, and a
printed reason for every cell a stack sits out."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest

from bench import run

NEW_PEERS = ("picows", "Granian", "Bun", "Socket.IO-node")


@pytest.fixture(autouse=True)
def _no_instance_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """run.stacks() makes wsapp's instance folder: here, under pytest's tmp_path."""
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **_kw: str(tmp_path))


def _stacks(names: tuple[str, ...] | None = None) -> list[run.Stack]:
    sts = run.stacks("redis://127.0.0.1:1/0")
    return [s for s in sts if names is None or s.name in names]


def _summary(sts: list[run.Stack], wls: list[run.Workload], values: dict[str, float]) -> dict[str, Any]:
    return {
        s.name: {w.key: ({"value": values[s.name]} if w.runs_on(s) else {"not_run": True}) for w in wls} for s in sts
    }


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]


def test_the_new_peers_are_stacks_of_the_run() -> None:
    names = [s.name for s in _stacks()]
    for peer in (*NEW_PEERS, "Socket.IO-node+Redis"):
        assert peer in names
    assert run.CEILING == "Bun"


def test_a_ratio_to_every_peer_and_to_the_ceiling() -> None:
    sts = _stacks(("wsapp", "websockets", "picows", "Bun"))
    wls = [w for w in run.workloads(quick=True) if w.key in ("echo", "latency")]
    # echo: msg/s, higher is better; latency: µs, lower is better (the same made-up numbers)
    summary = _summary(sts, wls, {"wsapp": 100.0, "websockets": 50.0, "picows": 200.0, "Bun": 400.0})
    rows = _rows(run.table(wls, sts, summary, "ratios"))
    assert rows[0] == ["workload", "wsapp vs websockets", "wsapp vs picows", "wsapp vs Bun (ceiling)"]
    echo, latency = rows[2], rows[3]
    assert echo[1:] == ["2.00×", "0.50×", "0.25×"]
    assert latency[1:] == ["0.50×", "2.00×", "4.00×"]
    figures = _rows(run.table(wls, sts, summary, "figures"))
    assert "Bun (ceiling)" in figures[0]


def test_a_redis_peer_is_set_against_wsapp_with_redis() -> None:
    sts = _stacks(("wsapp", "wsapp+Redis", "Socket.IO-node+Redis"))
    wls = [w for w in run.workloads(quick=True) if w.key == "storm"]
    values = {"wsapp": 1.0, "wsapp+Redis": 2.0, "Socket.IO-node+Redis": 8.0}
    rows = _rows(run.table(wls, sts, _summary(sts, wls, values), "ratios"))
    assert rows[0][1] == "wsapp+Redis vs Socket.IO-node+Redis"
    assert rows[2][1] == "4.00×"  # seconds, lower is better: 8 / 2


@pytest.mark.parametrize("key", [w.key for w in run.workloads(quick=True)])
def test_every_empty_cell_has_its_reason(key: str) -> None:
    sts = _stacks()
    wl = next(w for w in run.workloads(quick=True) if w.key == key)
    text = run.empty_cells([wl], sts, {})
    for s in sts:
        if s.extra or wl.runs_on(s):
            continue
        line = next((ln for ln in text.splitlines() if ln.startswith(f"- {s.name}, {key}: ")), None)
        assert line is not None, f"{s.name} sits out {key} with no line"
        assert wl.why_not.get(s.name), f"{s.name} sits out {key} without a reason of its own"


def test_the_new_peers_run_every_row_they_serve() -> None:
    sts = {s.name: s for s in _stacks()}
    for wl in run.workloads(quick=True):
        for peer in NEW_PEERS:
            assert wl.runs_on(sts[peer]) or peer in wl.why_not, (peer, wl.key)


def test_the_cross_node_rows_say_why_socket_io_is_not_there() -> None:
    text = run.empty_cells(run.workloads(quick=True), _stacks(), {})
    assert "Socket.IO-node+Redis, the cross-node rows: " in text


def test_a_server_not_installed_is_a_reason_not_a_failure() -> None:
    ghost = run.Stack("ghost", "plain", ["/nonexistent/bun", "bench/peers/bun_app.js"])
    sts = [*_stacks(("wsapp",)), ghost]
    missing = run.missing_stacks(sts)
    assert list(missing) == ["ghost"]
    assert "not installed" in missing["ghost"]
    assert "- ghost: every row: " in run.empty_cells(run.workloads(quick=True), sts, missing)


def test_only_wsapp_is_said_to_check_a_token() -> None:
    for s in _stacks():
        assert ("JWT" in s.auth) == s.name.startswith("wsapp"), s.name
