"""The per-connection rate limit (pure)."""

from wsapp.ratelimit import CLOSE, LIMITED, OK, RateLimiter


def test_burst_then_limited_then_close_if_it_goes_on() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    assert [lim.check(0.0) for _ in range(5)] == [OK] * 5
    verdicts = [lim.check(0.0) for _ in range(6)]
    assert verdicts[:5] == [LIMITED] * 5 and verdicts[5] == CLOSE


def test_slowing_down_recovers() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    for _ in range(7):
        lim.check(0.0)
    assert lim.check(0.0) == LIMITED
    assert lim.check(2.0) == OK  # two seconds at 10/s pays the debt back


def test_steady_rate_within_limit_is_never_limited() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    assert all(lim.check(i * 0.1) == OK for i in range(100))


def test_zero_rate_turns_it_off() -> None:
    lim = RateLimiter(rate=0, burst=1, now=0.0)
    assert all(lim.check(0.0) == OK for _ in range(1000))
