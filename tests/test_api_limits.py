"""Issue 18, part 6: the HTTP API is paced per client id (429 `rate_limited` with
`Retry-After`), its buckets are bounded in number, and `to` is bounded like a client id.
The bucket and its table are pure (`wsapp.ratelimit`); the routes run in real gunicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import Server, chat_client, delivery, http, make_token, recv_json
from wsapp.ratelimit import MAX_KEYS, RateLimiter, RateTable, retry_after
from wsapp.settings import Settings, SettingsError

BASE = {"WSAPP_JWT_SECRET": "s" * 32}

# ---- the bucket, HTTP's rule (pure) ---------------------------------------------------


def test_a_burst_passes_then_the_next_waits_one_token_and_a_refusal_costs_nothing() -> None:
    bucket = RateLimiter(rate=10, burst=3, now=0.0)
    assert [bucket.wait(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.wait(0.0) == pytest.approx(0.1)  # one token at 10/s
    for _ in range(50):  # refused again and again: no debt
        assert bucket.wait(0.05) == pytest.approx(0.05)
    assert bucket.wait(0.1) == 0.0  # served once the wait it was told has passed
    assert bucket.wait(0.1) > 0


def test_the_bucket_refills_at_the_rate_up_to_the_burst_only() -> None:
    bucket = RateLimiter(rate=2, burst=4, now=0.0)
    for _ in range(4):
        assert bucket.wait(0.0) == 0.0
    assert bucket.wait(1.0) == 0.0 and bucket.wait(1.0) == 0.0  # 2 tokens in 1 s
    assert bucket.wait(1.0) == pytest.approx(0.5)
    assert sum(bucket.wait(1000.0) == 0.0 for _ in range(10)) == 4  # a long idle refills the burst only


def test_rate_zero_turns_the_bucket_and_the_table_off() -> None:
    assert all(RateLimiter(0, 1, now=0.0).wait(0.0) == 0.0 for _ in range(1000))
    table = RateTable(0, 1)
    assert all(table.wait(f"id-{i}", 0.0) == 0.0 for i in range(1000))
    assert len(table) == 0  # nothing kept when off


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.02, 1), (1.0, 1), (1.01, 2), (99.5, 100)])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header


# ---- the table of buckets (pure) ------------------------------------------------------


def test_each_key_has_its_own_bucket() -> None:
    table = RateTable(rate=1, burst=2)
    assert [table.wait("a", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert table.wait("b", 0.0) == 0.0 and table.wait("b", 0.0) == 0.0
    assert table.wait("b", 0.0) > 0 and table.wait("a", 0.0) > 0


def test_the_table_keeps_at_most_max_keys_dropping_the_least_recently_used() -> None:
    table = RateTable(rate=1, burst=1, max_keys=3)
    for key in ("a", "b", "c"):
        table.wait(key, 0.0)
    table.wait("a", 0.0)  # a used again (refused): b is now the least recently used
    table.wait("d", 0.0)
    assert len(table) == 3 and "b" not in table and {"a", "c", "d"} == {k for k in "abcd" if k in table}
    assert table.wait("a", 0.0) > 0  # a kept its empty bucket
    table.wait("e", 0.0)
    assert "c" not in table and len(table) == 3


def test_many_keys_never_grow_the_table_past_its_bound() -> None:
    table = RateTable(rate=50, burst=100)
    assert table.max_keys == MAX_KEYS == 10_000
    for i in range(MAX_KEYS + 2_500):
        table.wait(f"client-{i}", i / 1000)
    assert len(table) == MAX_KEYS
    assert "client-0" not in table and f"client-{MAX_KEYS + 2_499}" in table
    with pytest.raises(ValueError):
        RateTable(1, 1, max_keys=0)


# ---- settings (pure) ------------------------------------------------------------------


def test_the_api_rate_follows_chats_unless_set() -> None:
    s = Settings.from_env(BASE)
    assert (s.api_rate_limit, s.api_rate_burst) == (s.rate_limit, s.rate_burst) == (50.0, 100.0)
    s = Settings.from_env({**BASE, "WSAPP_RATE_LIMIT": "0"})
    assert s.api_rate_limit == 0
    s = Settings.from_env({**BASE, "WSAPP_RATE_LIMIT": "0", "WSAPP_API_RATE_LIMIT": "5"})
    assert (s.api_rate_limit, s.api_rate_burst) == (5.0, 10.0)
    s = Settings.from_env({**BASE, "WSAPP_API_RATE_LIMIT": "5", "WSAPP_API_RATE_BURST": "7"})
    assert (s.api_rate_limit, s.api_rate_burst) == (5.0, 7.0)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"WSAPP_API_RATE_LIMIT": "fast"}, "wsapp: invalid setting WSAPP_API_RATE_LIMIT='fast': must be a number"),
        (
            {"WSAPP_API_RATE_LIMIT": "-1"},
            "wsapp: invalid setting WSAPP_API_RATE_LIMIT='-1': must be a number of at least 0",
        ),
        (
            {"WSAPP_API_RATE_BURST": "0.5"},
            "wsapp: invalid setting WSAPP_API_RATE_BURST='0.5': must be a number of at least 1",
        ),
    ],
)
def test_a_bad_api_rate_is_one_line_naming_it(env: dict[str, str], line: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({**BASE, **env})
    assert err.value.lines() == [line]


# ---- the routes (real gunicorn) -------------------------------------------------------


@pytest.fixture(scope="module")
def paced() -> Iterator[Server]:
    """A budget of 3 requests, refilled at one per 100 s: what passes does not depend on
    how fast the machine is."""
    srv = Server(env={"WSAPP_API_RATE_LIMIT": "0.01", "WSAPP_API_RATE_BURST": "3"}).start()
    yield srv
    srv.stop()


def test_past_its_budget_a_client_id_gets_429_with_retry_after_and_nothing_is_sent(paced: Server) -> None:
    sink = chat_client(paced, "lim-sink")
    sender = make_token("lim-a")
    for n in range(3):
        r = http(paced.url, "POST", "/api/send", {"to": "lim-sink", "data": n}, sender)
        assert (r.status, delivery(r.body)) == (200, {"delivered": 1})
    for n in range(3, 6):
        r = http(paced.url, "POST", "/api/send", {"to": "lim-sink", "data": n}, sender)
        assert (r.status, r.body["error"]) == (429, "rate_limited")
        assert "'lim-a'" in r.body["message"] and "WSAPP_API_RATE_LIMIT" in r.body["message"]
        assert r.headers["Content-Type"] == "application/json"
        assert 90 <= int(r.headers["Retry-After"]) <= 100  # one token at 0.01/s
    # another client id has its own budget; the sink got 0, 1, 2 and then this, nothing else
    r = http(paced.url, "POST", "/api/send", {"to": "lim-sink", "data": "other"}, make_token("lim-b"))
    assert r.status == 200
    assert [recv_json(sink)["data"] for _ in range(4)] == [0, 1, 2, "other"]
    sink.close()


def test_the_budget_is_the_client_ids_whatever_the_token_admin_included(paced: Server) -> None:
    admin = make_token("lim-ops", admin=True)
    for _ in range(3):
        assert http(paced.url, "POST", "/api/broadcast", {"data": 1}, admin).status == 200
    r = http(paced.url, "POST", "/api/broadcast", {"data": 1}, admin)
    assert (r.status, r.body["error"]) == (429, "rate_limited")  # admin tokens are not exempt
    # a new token for the same client id, and every API route, share that budget
    again = make_token("lim-ops", admin=True, ttl=600)
    assert http(paced.url, "GET", "/api/clients", token=again).status == 429
    assert http(paced.url, "POST", "/api/send", {"to": "x", "data": 1}, again).status == 429
    # unauthenticated and health requests are not counted against anyone
    assert http(paced.url, "GET", "/api/clients").status == 401
    assert all(http(paced.url, "GET", "/healthz").status == 200 for _ in range(5))


def test_refused_requests_count_too_and_the_body_is_not_read(paced: Server) -> None:
    user = make_token("lim-user")  # not admin: 403, and each 403 costs a token
    for _ in range(3):
        assert http(paced.url, "POST", "/api/broadcast", {"data": 1}, user).status == 403
    r = http(paced.url, "POST", "/api/send", raw=b"{not json", token=user, headers={"Content-Type": "application/json"})
    assert (r.status, r.body["error"]) == (429, "rate_limited")  # not 400: refused before the body


@pytest.fixture(scope="module")
def offline() -> Iterator[Server]:
    srv = Server(env={"WSAPP_API_RATE_LIMIT": "0", "WSAPP_STORE_OFFLINE": "1"}).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("length", [257, 60_000])
def test_a_to_longer_than_a_client_id_is_400_and_not_stored(offline: Server, length: int) -> None:
    r = http(offline.url, "POST", "/api/send", {"to": "x" * length, "data": "never"}, make_token("lim-c"))
    assert (r.status, r.body["error"]) == (400, "bad_request")
    assert r.body["message"] == "'to' is longer than 256 characters, a client id's limit"  # not echoed back


def test_a_to_of_256_characters_is_a_client_id_and_is_stored(offline: Server) -> None:
    to = "y" * 256
    r = http(offline.url, "POST", "/api/send", {"to": to, "data": "kept"}, make_token("lim-c"))
    assert (r.status, delivery(r.body)) == (202, {"delivered": 0, "stored": True})
