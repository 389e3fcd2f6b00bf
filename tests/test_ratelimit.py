"""The per-connection budget (pure): a token bucket that measures debt."""

from __future__ import annotations

import pytest

from wsapp.ratelimit import CLOSE, LIMITED, OK, RateLimiter


def test_burst_then_limited_then_close_if_it_goes_on() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    assert [lim.check(0.0) for _ in range(5)] == [OK] * 5
    verdicts = [lim.check(0.0) for _ in range(6)]
    assert verdicts[:5] == [LIMITED] * 5 and verdicts[5] == CLOSE


@pytest.mark.parametrize(
    ("burst", "oks", "limited"),
    [(1, 1, 1), (2, 2, 2), (5, 5, 5), (100, 100, 100), (2.5, 2, 3)],
)
def test_exact_boundaries(burst: float, oks: int, limited: int) -> None:
    """`burst` checks pass, the next ones are limited until the debt exceeds `burst`."""
    lim = RateLimiter(rate=1, burst=burst, now=0.0)
    verdicts = [lim.check(0.0) for _ in range(oks + limited + 1)]
    assert verdicts == [OK] * oks + [LIMITED] * limited + [CLOSE]


def test_slowing_down_recovers() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    for _ in range(7):
        lim.check(0.0)
    assert lim.check(0.0) == LIMITED
    assert lim.check(2.0) == OK  # two seconds at 10/s pays the debt back


def test_refill_is_proportional_to_time_and_capped_at_the_burst() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    for _ in range(5):
        assert lim.check(0.0) == OK
    assert lim.check(0.0) == LIMITED  # tokens -1
    assert lim.check(0.2) == OK  # +2 tokens: 1 - 1 = 0, still not negative
    assert lim.check(0.2) == LIMITED
    # a long pause refills to the burst only, not beyond it
    lim = RateLimiter(rate=10, burst=3, now=0.0)
    assert [lim.check(1000.0) for _ in range(4)] == [OK, OK, OK, LIMITED]


def test_steady_rate_within_limit_is_never_limited() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    assert all(lim.check(i * 0.1) == OK for i in range(100))


def test_just_over_the_rate_is_limited_eventually() -> None:
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    verdicts = [lim.check(i * 0.09) for i in range(200)]
    assert LIMITED in verdicts


@pytest.mark.parametrize("rate", [0, -1])
def test_zero_rate_turns_it_off(rate: float) -> None:
    lim = RateLimiter(rate=rate, burst=1, now=0.0)
    assert all(lim.check(0.0) == OK for _ in range(1000))


def test_default_clock_is_monotonic_now() -> None:
    lim = RateLimiter(rate=1000, burst=2)
    assert [lim.check(), lim.check()] == [OK, OK]


def test_verdicts_are_distinct_and_a_new_bucket_is_full() -> None:
    assert len({OK, LIMITED, CLOSE}) == 3
    lim = RateLimiter(rate=10, burst=5, now=0.0)
    assert lim.tokens == 5 and lim.stamp == 0.0
