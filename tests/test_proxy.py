"""What X-Forwarded-For is believed (pure): only IP addresses appended by trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from wsapp.proxy import address_allowed, client_address, parse_ip

TRUSTED = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"), ipaddress.ip_network("10.0.0.0/8"))


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", " 203.0.113.9 ", "203.0.113.9"),
        ("::1", "2001:DB8:0::1", "2001:db8::1"),  # canonical form
        ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the first untrusted from the right
        ("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.1.2.3", "203.0.113.9"),  # through two proxies
        ("127.0.0.1", "10.1.2.3, 10.1.2.4", "10.1.2.3"),  # all trusted: the leftmost
        ("127.0.0.1", "203.0.113.9,, ", "203.0.113.9"),  # empty entries skipped
        ("203.0.113.50", "10.9.9.9", "203.0.113.50"),  # an untrusted peer's header is ignored
        ("not-an-ip", "10.9.9.9", "not-an-ip"),
        # a hop that is not an IP address is not believed: the proxy that passed it on is the answer
        ("127.0.0.1", "evil\r\nINFO forged", "127.0.0.1"),
        ("127.0.0.1", "\x1b[31m1.2.3.4", "127.0.0.1"),
        ("127.0.0.1", "example.com", "127.0.0.1"),
        ("127.0.0.1", "unknown", "127.0.0.1"),
        ("127.0.0.1", "1.2.3.4:5678", "127.0.0.1"),  # a port is not an address
        ("127.0.0.1", "[2001:db8::1]", "127.0.0.1"),
        ("127.0.0.1", "fe80::1%eth0", "127.0.0.1"),  # a zone could carry anything
        ("127.0.0.1", "fe80::1%\x1b[31m", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9, garbage, 10.1.2.3", "10.1.2.3"),  # stops at the first non-IP
        ("127.0.0.1", "garbage, 203.0.113.9", "203.0.113.9"),  # left of the client: never read
        ("127.0.0.1", "1.2.3.4.5", "127.0.0.1"),
        ("127.0.0.1", "127.1", "127.0.0.1"),
    ],
)
def test_client_address(peer: str, xff: str | None, client: str) -> None:
    assert client_address(peer, xff, TRUSTED) == client


def test_nothing_trusted_means_the_peer() -> None:
    assert client_address("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "ok"),
    [("1.2.3.4", True), (" ::1 ", True), ("::ffff:1.2.3.4", True), ("1.2.3", False), ("", False), ("fe80::1%1", False)],
)
def test_parse_ip(text: str, ok: bool) -> None:
    assert (parse_ip(text) is not None) is ok


def test_address_allowed() -> None:
    assert address_allowed("10.200.0.1", TRUSTED)
    assert address_allowed("::1", TRUSTED)
    assert not address_allowed("11.0.0.1", TRUSTED)
    assert not address_allowed("garbage", TRUSTED)
    assert not address_allowed("10.0.0.1", ())
