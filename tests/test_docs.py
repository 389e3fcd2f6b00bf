"""docs/protocol.md keeps up with the code: every error code with its HTTP status, every
chat error code, every close code the server sends, every route; and the README points
at it (a clone has no ../shared)."""

from __future__ import annotations

import re

import pytest

from helpers import ROOT
from wsapp.errors import FRAME_ERRORS, HTTP_ERRORS, CloseCode

PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    """The text under a `#`/`##`/`###` heading, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", PROTOCOL, re.M | re.S)
    assert match, f"docs/protocol.md has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]
    return [row for row in rows if len(row) > 1 and not set(row[0]) <= {"-", ":"}]


def test_every_http_error_code_is_listed_with_its_status() -> None:
    listed: dict[str, set[int]] = {}
    for status, codes, *_ in table_rows(section("Error codes and their HTTP statuses"))[1:]:
        for code in re.findall(r"`([a-z_]+)`", codes):
            listed.setdefault(code, set()).add(int(status))
    for code, (status, _message) in HTTP_ERRORS.items():
        assert status in listed.get(code, set()), f"{code} ({status}) is not in docs/protocol.md"


def test_every_chat_error_code_is_listed() -> None:
    listed = {re.sub(r"`", "", row[0]) for row in table_rows(section("Error frames"))[1:]}
    assert listed == set(FRAME_ERRORS)


SENT = [c for name, c in vars(CloseCode).items() if name.isupper() and c not in (CloseCode.NO_STATUS, 1006)]


@pytest.mark.parametrize("code", SENT)
def test_every_close_code_the_server_sends_is_listed(code: int) -> None:
    listed = {int(row[0]) for row in table_rows(section("Close codes the server sends"))[1:]}
    assert code in listed


def test_every_route_is_listed() -> None:
    routes = set()
    for path in [*(ROOT / "wsapp").rglob("*.py"), ROOT / "app.py"]:  # app.py adds /ws/echo
        routes |= set(re.findall(r"\.(?:get|post|route)\(\"(/[^\"]*)\"", path.read_text()))
    assert {"/ws/echo", "/api/send", "/healthz", "/api/demo/token"} <= routes
    table = section("Routes")
    for route in routes:
        assert f" {route}`" in table, f"{route} is not in the routes table of docs/protocol.md"


def test_the_readme_links_the_protocol_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/protocol.md" in readme
    assert "../shared" not in readme
