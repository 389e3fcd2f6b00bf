"""Per-connection budget: a token bucket that also measures debt. No I/O.

`connection.WebSocket` charges one token per frame the client sends, whatever its kind
(data, continuation, ping, pong, close). Within the rate plus its burst a frame passes.
Over it, it is refused (`LIMITED`: a data message reaches the route as `RateLimited`
and gets a `rate_limited` error frame, a ping gets no pong) and still costs a token,
so a client that keeps sending digs a debt; once the debt passes another burst it is
`CLOSE`d with 1008. A client that slows down pays the debt back and is fine again.
A rate <= 0 turns the budget off (`WebSocket` then keeps no limiter at all).
"""

from __future__ import annotations

import time

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
