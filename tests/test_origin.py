"""The Origin and Host rules (pure), table-driven: every shape a browser or an attacker sends."""

from __future__ import annotations

import pytest

from wsapp.errors import HandshakeRejected
from wsapp.origin import HostPort, check_host, check_origin, is_loopback, normalise_origin, parse_host, parse_origin


def refused(origin: str | None, host: str | None, allowed: tuple[str, ...] = ()) -> bool:
    try:
        check_origin(origin, host, allowed)
    except HandshakeRejected as err:
        assert (err.status, err.code) == (403, "origin_not_allowed")
        return True
    return False


# (Origin, Host) pairs the default rule (WSAPP_ALLOWED_ORIGINS unset) allows
SAME_HOST = [
    (None, "example.com"),  # not a browser
    ("http://localhost:8000", "localhost:8000"),
    ("https://Example.COM", "example.com"),  # host case
    ("HTTPS://example.com", "EXAMPLE.com"),  # scheme case
    ("https://example.com:443", "example.com"),  # default port written out
    ("https://example.com", "example.com:443"),
    ("http://example.com", "example.com:80"),
    ("http://example.com:80", "example.com"),
    ("http://127.0.0.1:8000", "127.0.0.1:8000"),
    ("http://[::1]:8000", "[::1]:8000"),
    ("http://[0:0::1]:8000", "[::1]:8000"),  # IPv6 compared in canonical form
    ("http://[2001:DB8::1]", "[2001:db8::1]"),
    ("http://example.com:8000/some/path", "example.com:8000"),  # a path is ignored
    ("http://example.com:8000?q=1#f", "example.com:8000"),
    ("http://example.com.", "example.com."),  # fully qualified, on both sides
]


@pytest.mark.parametrize(("origin", "host"), SAME_HOST)
def test_default_rule_allows_the_same_host(origin: str | None, host: str) -> None:
    assert not refused(origin, host)


# (Origin, Host) pairs the default rule refuses: other hosts, ports, schemes, and every
# malformed Origin (unparsable, userinfo, bad ports)
OTHER_OR_MALFORMED = [
    ("http://evil.com", "example.com"),
    ("http://localhost:9000", "localhost:8000"),  # port differs
    ("https://example.com", "example.com:80"),  # https's default is 443
    ("http://example.com", "example.com:443"),
    ("http://example.com.evil.com", "example.com"),
    ("http://example.com", "example.com.evil.com"),
    ("http://example.com.", "example.com"),  # not the same name
    ("null", "example.com"),  # opaque
    ("", "example.com"),
    ("file://", "example.com"),
    ("ws://example.com", "example.com"),  # not a web page's origin
    ("chrome-extension://abc", "abc"),
    ("example.com", "example.com"),  # no scheme
    ("//example.com", "example.com"),
    ("http://", "example.com"),
    ("http://[::1", "[::1]"),  # unparsable (urlsplit raises: once a 500)
    ("http://[::1]x:80", "[::1]:80"),
    ("http://[::1%25eth0]:80", "[::1]:80"),  # IPv6 zone
    ("http://[example.com]", "example.com"),
    ("http://::1:80", "::1:80"),  # IPv6 without brackets
    ("http://evil@example.com", "example.com"),  # userinfo
    ("http://evil@example.com:8000", "example.com:8000"),
    ("http://user:pass@example.com", "example.com"),
    ("http://@example.com", "example.com"),
    ("http://example.com:", "example.com"),  # empty port
    ("http://example.com:abc", "example.com"),  # non-numeric port
    ("http://example.com:+80", "example.com:80"),
    ("http://example.com:-80", "example.com"),
    ("http://example.com: 80", "example.com:80"),
    ("http://example.com:0", "example.com:0"),  # out of range
    ("http://example.com:65536", "example.com:65536"),
    ("http://example.com:99999", "example.com:99999"),
    ("http://example.com:123456", "example.com:123456"),
    ("http://example.com:8000:8000", "example.com:8000"),
    ("http://exa mple.com", "exa mple.com"),  # characters outside a host name
    ("http://example.com\r\nX: y", "example.com"),
    ("http://example.com\\@evil.com", "example.com"),
    ("http://éxample.com", "éxample.com"),  # non-ASCII (browsers send punycode)
    ("http://" + "a" * 300, "a" * 300),  # too long
    ("http://example.com", None),  # no Host at all
    ("http://example.com", ""),
    ("http://example.com", "example.com:abc"),  # malformed Host
    ("http://example.com", "evil@example.com"),
]


@pytest.mark.parametrize(("origin", "host"), OTHER_OR_MALFORMED)
def test_default_rule_refuses_other_and_malformed_origins(origin: str, host: str | None) -> None:
    assert refused(origin, host)


def test_configured_list_is_exact() -> None:
    allowed = ("https://app.example.com",)
    assert not refused("https://app.example.com", "api.example.com", allowed)
    assert not refused("https://APP.example.com:443", "api.example.com", allowed)  # case, default port
    assert not refused("https://app.example.com/path", "api.example.com", allowed)  # path ignored
    assert refused("http://app.example.com", "api.example.com", allowed)  # scheme differs
    assert refused("https://app.example.com:8443", "api.example.com", allowed)
    assert refused("https://app.example.com.evil", "api.example.com", allowed)
    # a configured list replaces the same-host rule
    assert refused("https://api.example.com", "api.example.com", allowed)
    assert refused("null", "api.example.com", allowed)
    assert not refused(None, "api.example.com", allowed)  # not a browser


def test_configured_list_normalises_its_own_entries() -> None:
    allowed = ("https://app.example.com:443", "http://[0::1]:8000", "not an origin")
    assert not refused("https://app.example.com", "x", allowed)
    assert not refused("http://[::1]:8000", "x", allowed)
    assert refused("not an origin", "x", allowed)  # a malformed entry matches nothing


MALFORMED_ORIGINS = [o for o, _ in OTHER_OR_MALFORMED if o not in ("null",) and normalise_origin(o) is None]


@pytest.mark.parametrize("origin", MALFORMED_ORIGINS)
def test_malformed_origins_are_refused_with_an_allow_list_and_with_star(origin: str) -> None:
    # an entry the malformed value would be taken for by a lenient parser
    allowed = ("http://example.com", "http://example.com:8000", "https://example.com")
    assert refused(origin, "example.com", allowed)
    assert refused(origin, "example.com", ("*",))


def test_userinfo_is_malformed_even_when_the_host_part_is_allowed() -> None:
    assert refused("http://evil@app.example.com", "x", ("http://app.example.com",))


@pytest.mark.parametrize("origin", ["https://anything.example", "null", "http://x:1", "http://[::1]"])
def test_star_allows_all_well_formed_origins(origin: str) -> None:
    assert not refused(origin, "example.com", ("*",))


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("Example.COM", 80, HostPort("example.com", 80)),
        ("example.com:8080", 80, HostPort("example.com", 8080)),
        ("example.com:1", 0, HostPort("example.com", 1)),
        ("example.com:65535", 0, HostPort("example.com", 65535)),
        ("example.com:00080", 0, HostPort("example.com", 80)),
        ("127.0.0.1", 443, HostPort("127.0.0.1", 443)),
        ("[::1]", 0, HostPort("[::1]", 0)),
        ("[0:0:0:0:0:0:0:1]:8000", 0, HostPort("[::1]", 8000)),
        ("my_host.internal.", 0, HostPort("my_host.internal.", 0)),
        ("a" * 253, 0, HostPort("a" * 253, 0)),
    ],
)
def test_parse_host_accepts(text: str, default: int, expected: HostPort) -> None:
    assert parse_host(text, default) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":80",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:x",
        "example.com:+1",
        "example.com:123456",
        "user@example.com",
        "exa mple.com",
        "example..com",
        ".example.com",
        "example.com/path",
        "[::1",
        "[::1]80",
        "[::1]:",
        "[nothex]",
        "[::1%eth0]",
        "::1",
        "éxample.com",
        "a" * 254,
        "example.com\x00",
    ],
)
def test_parse_host_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host(text, 80)


def test_check_host_refuses_missing_and_malformed_with_403() -> None:
    assert check_host("example.com:8000") == HostPort("example.com", 8000)
    for bad in (None, "", "evil@example.com", "example.com:99999", "[::1"):
        with pytest.raises(HandshakeRejected) as info:
            check_host(bad)
        assert (info.value.status, info.value.code) == (403, "host_not_allowed")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST:8000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("127.255.255.254:1", True),
        ("127.1.2.3", True),
        ("[::1]", True),
        ("[::1]:8000", True),
        ("[0::1]:8000", True),
        ("128.0.0.1", False),
        ("126.255.255.255", False),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("[::2]", False),
        ("[::]", False),
        ("[::ffff:127.0.0.1]", False),  # only the names the brief lists
        ("localhost.", False),
        ("localhost.evil.com", False),
        ("evil.localhost", False),
        ("127.0.0.1.evil.com", False),
        ("evil.com", False),
        ("127.1", False),  # not an address ipaddress reads: no guessing
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(parse_host(host, 0)) is loopback


def _message(origin: str | None, host: str | None, allowed: tuple[str, ...] = ()) -> str:
    with pytest.raises(HandshakeRejected) as info:
        check_origin(origin, host, allowed)
    return info.value.message


def test_each_refusal_says_why() -> None:
    # the message is what a client sees in the 403's JSON and in the refusal log line
    assert _message("null", "a") == "an opaque Origin ('null') is not allowed"
    assert _message("http://[::1", "a") == "Origin 'http://[::1' is malformed: unterminated IPv6 literal"
    assert _message("nope", "a") == "Origin 'nope' is malformed: not scheme://host"
    assert _message("http://a", "a", ("http://b",)) == "Origin 'http://a' is not in WSAPP_ALLOWED_ORIGINS"
    assert _message("ftp://a", "a") == "Origin 'ftp://a' is not a web origin"
    assert _message("http://a", None) == "Origin 'http://a' cannot match a missing Host"
    assert _message("http://a", "a:x") == "Origin 'http://a' cannot match Host 'a:x'"
    assert _message("http://a", "b") == "Origin 'http://a' does not match Host 'b'"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[::1", "unterminated IPv6 literal"),
        ("[::1%lo]", "an IPv6 zone is not a host"),
        ("[::g]", "invalid IPv6 literal"),
        ("[::1]]", "the port is not a number"),
        ("[::1]x", "the port is not a number"),
        ("a_b:", "the port is not a number"),
        ("a b", "not a host name"),
        ("a:0", "the port is out of range"),
        ("a:65536", "the port is out of range"),
        ("a" * 254, "not a host name"),
        ("é", "not a host name"),
    ],
)
def test_parse_host_says_why(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host(text, 80)
    assert str(info.value) == why


def test_check_host_messages_and_result() -> None:
    assert check_host("Example.com") == HostPort("example.com", 0)  # no scheme: no default port
    for host, message in [
        (None, "the request has no Host header"),
        ("", "the request has no Host header"),
        ("a:x", "the Host header 'a:x' is malformed: the port is not a number"),
    ]:
        with pytest.raises(HandshakeRejected) as info:
            check_host(host)
        assert info.value.message == message


def test_parse_origin_and_normalise() -> None:
    assert parse_origin("chrome-extension://abc/x") == ("chrome-extension", HostPort("abc", 0))
    assert parse_origin("WSS://A.b") == ("wss", HostPort("a.b", 443))
    assert normalise_origin(" https://A.example ") == "https://a.example:443"
    assert normalise_origin("http://[::1") is None
    assert str(HostPort("[::1]", 80)) == "[::1]:80"
