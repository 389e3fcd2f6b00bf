"""Log lines: client text escaped, tokens redacted, one record one line (pure: no server)."""

from __future__ import annotations

import io
import logging

import pytest

from helpers import make_token
from wsapp import logsafe

TOKEN = make_token("secret-holder")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("alice", "alice"),
        ("ünïcødé ok 漢字 😀", "ünïcødé ok 漢字 😀"),
        ("a b", "a b"),
        ("x\r\n2026-01-01 INFO forged", "x\\x0d\\x0a2026-01-01 INFO forged"),
        ("tab\there", "tab\\x09here"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # ANSI
        ("c1\x85\x9b", "c1\\x85\\x9b"),  # NEL and CSI
        ("\u202eevil\u202c", "\\u202eevil\\u202c"),  # bidi override
        ("\u2066iso\u2069", "\\u2066iso\\u2069"),
        ("\u200f\u200e\u061c", "\\u200f\\u200e\\u061c"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("lone\ud800", "lone\\ud800"),  # not even encodable
        ("zw\u200b\ufeff", "zw\\u200b\\ufeff"),
        ("\U000e0041tag", "\\U000e0041tag"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert logsafe.escape(raw) == shown
    assert logsafe.escape(raw).isprintable()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (f"GET /ws/echo?token={TOKEN} HTTP/1.1", "GET /ws/echo?token=[redacted] HTTP/1.1"),
        (f"/x?a=1&token={TOKEN}&b=2", "/x?a=1&token=[redacted]&b=2"),
        ("/x?token=opaque-not-a-jwt&b=2", "/x?token=[redacted]&b=2"),
        ("access_token=abc; other=1", "access_token=[redacted]; other=1"),
        ("Cookie: ACCESS_TOKEN=abc", "Cookie: ACCESS_TOKEN=[redacted]"),
        ("id_token=abc", "id_token=[redacted]"),
        (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer [redacted]"),
        ("('AUTHORIZATION', 'Bearer abcdefghijklmnop')", "('AUTHORIZATION', 'Bearer [redacted]')"),
        ("authorization: basic dXNlcjpwYXNzd29yZA==", "authorization: basic [redacted]"),
        (f"proto={TOKEN}", "proto=[redacted]"),
        (f"'bearer, {TOKEN}'", "'bearer, [redacted]'"),
        ("token_from=header client=alice", "token_from=header client=alice"),
        ("the 'bearer' subprotocol must be followed by the token", None),
        ("offered bearer last", None),
        ("eyJhbGciOiJIUzI1NiJ9.e30.", "[redacted]"),  # alg none: no signature
    ],
)
def test_redact(raw: str, shown: str | None) -> None:
    assert logsafe.redact(raw) == (raw if shown is None else shown)


def test_redact_a_token_split_by_escaping_attempts() -> None:
    # the token's payload alone (what a test greps for) never survives either
    payload = TOKEN.split(".")[1]
    assert payload not in logsafe.safe(f"x={TOKEN}\r\n")
    assert payload not in logsafe.safe(f"?token={TOKEN}")


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logsafe.install(logger)
    logsafe.install(logger)  # idempotent
    assert sum(isinstance(f, logsafe.SafeLogFilter) for f in handler.filters) == 1
    return logger, out


def test_filter_covers_child_loggers_args_and_messages() -> None:
    parent, out = _logger("logsafe-test")
    child = logging.getLogger("logsafe-test.connections")  # propagates to the parent's handler
    child.info("connect client=%s addr=%s", "mallory\r\nINFO logsafe-test: forged", "\x1b[2J")
    parent.warning("dict %(who)s", {"who": "\u202eevil"})
    parent.info(f"f-string {TOKEN}")
    parent.info("repr %r", "a\u2066b")  # %r leaves bidi controls raw: the filter does not
    lines = out.getvalue().splitlines()
    assert lines == [
        "INFO logsafe-test.connections: connect client=mallory\\x0d\\x0aINFO logsafe-test: forged addr=\\x1b[2J",
        "WARNING logsafe-test: dict \\u202eevil",
        "INFO logsafe-test: f-string [redacted]",
        "INFO logsafe-test: repr 'a\\u2066b'",
    ]


def test_filter_indents_tracebacks_and_escapes_them() -> None:
    logger, out = _logger("logsafe-test-exc")
    try:
        raise ValueError(f"bad room\nINFO logsafe-test-exc: forged {TOKEN}\x1b[0m")
    except ValueError:
        logger.exception("session failed client=%s", "bob")
    lines = out.getvalue().splitlines()
    assert lines[0] == "ERROR logsafe-test-exc: session failed client=bob"
    assert lines[1] == "    Traceback (most recent call last):" and len(lines) > 4
    assert all(line.startswith("    ") for line in lines[1:])
    assert any("forged [redacted]\\x1b[0m" in line for line in lines)
    assert TOKEN not in out.getvalue()


def test_filter_keeps_a_record_with_a_bad_format_string() -> None:
    logger, out = _logger("logsafe-test-bad")
    logger.info("two %s %s", "only-one")
    assert "two %s %s" in out.getvalue() and "only-one" in out.getvalue()


def test_filter_runs_once_per_record_across_handlers() -> None:
    logger, out = _logger("logsafe-test-two")
    second = io.StringIO()
    handler = logging.StreamHandler(second)
    logger.addHandler(handler)
    logsafe.install(logger)
    logger.info("x=%s", "a\\x0a\n")
    assert second.getvalue() == "x=a\\x0a\\x0a\n"
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    tb = second.getvalue().splitlines()[2:]
    assert tb[0] == "    Traceback (most recent call last):"  # indented once, not once per handler
    assert tb[-1] == "    ValueError: boom"


def test_stack_info_is_indented_too() -> None:
    logger, out = _logger("logsafe-test-stack")
    logger.info("where", stack_info=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "INFO logsafe-test-stack: where"
    assert lines[1] == "    Stack (most recent call last):" and len(lines) > 3
    assert all(line.startswith("    ") for line in lines[1:])


def test_escape_widths() -> None:
    assert logsafe._escape_char("\x00") == "\\x00"
    assert logsafe._escape_char("\xff") == "\\xff"
    assert logsafe._escape_char("\u0100") == "\\u0100"
    assert logsafe._escape_char("\uffff") == "\\uffff"
    assert logsafe._escape_char("\U00010000") == "\\U00010000"


def test_redact_a_token_without_its_signature_and_nothing_that_merely_looks_similar() -> None:
    head, payload, _ = TOKEN.split(".")
    assert logsafe.redact(f"x {head}.{payload} y") == "x [redacted] y"
    assert logsafe.redact("eyeglass.example.com eyJ") == "eyeglass.example.com eyJ"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [("eyJab.cd", True), ("eyJab.c", False), ("eyJa.cd", False), ("eyJab.cd.", True), ("xeyJab.cd", True)],
)
def test_jwt_shape_boundaries(text: str, redacted: bool) -> None:
    assert (logsafe.REDACTED in logsafe.redact(text)) is redacted
