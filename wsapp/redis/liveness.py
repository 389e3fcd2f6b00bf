"""Which nodes count: this process's copy of the nodes' deadlines (the sorted set
`wsapp:{nodes}`, node -> deadline in Redis server time), no I/O. `Bus` refreshes it with
every heartbeat and read of that set; readers drop the counts of nodes past their
deadline, and a heartbeat that sees a dead node reaps it (`Bus.reap`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


class Liveness:
    """Which nodes count: a copy of the nodes' deadlines, in Redis server time.

    Refreshed by every heartbeat (and, for readers that beat no heart, when older than
    `max_age_s`). A node missing from a fresh copy is dead: a node registers before it
    writes any presence, and its entries outlive it only until it is reaped."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.deadlines: dict[str, int] = {}
        self._skew_ms = 0.0  # Redis server time minus this process's monotonic clock
        self._fetched = -1e18  # monotonic seconds of the last copy
        self.absent: set[str] = set()  # nodes seen in presence but not in the copy
        self._dead: list[str] = []  # `dead()` as last computed, valid until `_recheck_ms`
        self._recheck_ms = float("-inf")

    def update(self, now_ms: int, flat: list[Any]) -> None:
        self._fetched = time.monotonic()
        self.absent = set()
        self._recheck_ms = float("-inf")
        self._skew_ms = now_ms - self._fetched * 1000
        self.deadlines = {n.decode(): int(float(d)) for n, d in zip(flat[::2], flat[1::2], strict=True)}

    def stale(self, nodes: Iterable[str] = ()) -> bool:
        """Read the table again? When it is older than `max_age_s`, or a node is unknown:
        registered after the copy, or dead and reaped (then read again at most every 0.2 s)."""
        age = time.monotonic() - self._fetched
        if age > self.max_age_s:
            return True
        unknown = [n for n in nodes if n not in self.deadlines]
        return bool(unknown) and (age > 0.2 or not self.absent.issuperset(unknown))

    def missing(self, nodes: Iterable[str]) -> None:
        """`nodes` are not in a copy just read: dead (until a later copy says otherwise)."""
        self.absent.update(n for n in nodes if n not in self.deadlines)

    def alive(self, node: str) -> bool:
        deadline = self.deadlines.get(node)
        return deadline is not None and deadline > time.monotonic() * 1000 + self._skew_ms

    def dead(self) -> list[str]:
        """Nodes past their deadline. Asked on every publish: the list is computed again only
        when the copy changed or the next deadline has passed, not once per message."""
        now = time.monotonic() * 1000 + self._skew_ms
        if now >= self._recheck_ms:
            self._dead = [n for n, d in self.deadlines.items() if d <= now]
            self._recheck_ms = min((d for d in self.deadlines.values() if d > now), default=float("inf"))
        return self._dead
