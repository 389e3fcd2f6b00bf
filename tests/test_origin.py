"""The Origin rule (pure)."""

from __future__ import annotations

import pytest

from wsapp.errors import HandshakeRejected
from wsapp.origin import check_origin


def refused(origin: str | None, host: str | None, allowed: tuple[str, ...] = ()) -> bool:
    try:
        check_origin(origin, host, allowed)
    except HandshakeRejected as err:
        assert (err.status, err.code) == (403, "origin_not_allowed")
        return True
    return False


def test_unset_allows_missing_origin_and_same_host() -> None:
    assert not refused(None, "example.com")
    assert not refused("http://localhost:8000", "localhost:8000")
    assert not refused("https://Example.COM", "example.com")  # default port and case
    assert not refused("https://example.com:443", "example.com")


def test_unset_refuses_other_hosts_ports_and_opaque() -> None:
    assert refused("http://evil.com", "example.com")
    assert refused("http://localhost:9000", "localhost:8000")
    assert refused("http://example.com.evil.com", "example.com")
    assert refused("null", "example.com")
    assert refused("file://", "example.com")


def test_configured_list_is_exact() -> None:
    allowed = ("https://app.example.com",)
    assert not refused("https://app.example.com", "api.example.com", allowed)
    assert refused("http://app.example.com", "api.example.com", allowed)  # scheme differs
    assert refused("https://app.example.com:8443", "api.example.com", allowed)
    # a configured list replaces the same-host rule
    assert refused("https://api.example.com", "api.example.com", allowed)


@pytest.mark.parametrize("origin", ["https://anything.example", "null", "http://x:1"])
def test_star_allows_all(origin: str) -> None:
    assert not refused(origin, "example.com", ("*",))
