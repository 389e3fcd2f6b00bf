"""Per-connection budget: a token bucket that also measures debt. No I/O.

`connection.WebSocket` charges one token per frame the client sends, whatever its kind
(data, continuation, ping, pong, close). Within the rate plus its burst a frame passes.
Over it, it is refused (`LIMITED`: a data message reaches the route as `RateLimited`
and gets a `rate_limited` error frame, a ping gets no pong) and still costs a token,
so a client that keeps sending digs a debt; once the debt passes another burst it is
`CLOSE`d with 1008. A client that slows down pays the debt back and is fine again.
A rate <= 0 turns the budget off (`WebSocket` then keeps no limiter at all).

The HTTP API uses the same bucket with HTTP's rule (`RateLimiter.wait`): a request over
the budget is refused (429 with `Retry-After`) and costs nothing, so a client that waits
as told is served. `RateTable` keeps one bucket per key (the API: per client id), at most
`max_keys` of them: past the cap the least recently used bucket is dropped. A bucket idle
for `burst / rate` seconds is full again, as good as a new one, so dropping it loses
nothing; only more than `max_keys` keys busy within that time (2 s by default) could get
a fresh bucket early.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

OK, LIMITED, CLOSE = 0, 1, 2


class RateLimiter:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic() if now is None else now

    def check(self, now: float | None = None) -> int:
        if self.rate <= 0:
            return OK
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        if self.tokens >= 0:
            return OK
        return CLOSE if self.tokens < -self.burst else LIMITED

    def wait(self, now: float | None = None) -> float:
        """HTTP's rule: take a whole token if there is one and return 0.0; else take nothing
        and return the seconds until there is one (> 0)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def retry_after(wait: float) -> int:
    """`wait` seconds as a `Retry-After` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


MAX_KEYS = 10_000


class RateTable:
    """One `RateLimiter` per key, made on the key's first request, at most `max_keys` kept
    (least recently used dropped first). Any greenlet or thread may call `wait`: nothing in
    it switches, and a lock covers the dict for threaded servers."""

    __slots__ = ("rate", "burst", "max_keys", "_buckets", "_lock")

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, RateLimiter] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def wait(self, key: str, now: float | None = None) -> float:
        """0.0: `key`'s request may go (it took a token); else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                while len(self._buckets) >= self.max_keys:
                    self._buckets.popitem(last=False)
                bucket = self._buckets[key] = RateLimiter(self.rate, self.burst, now)
            else:
                self._buckets.move_to_end(key)
            return bucket.wait(now)
