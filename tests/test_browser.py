"""The demo page in a real browser (Debian's chromium driven by Playwright).

Each test starts its own gunicorn in demo-token mode and drives the page the way a
person would: get a token, connect, join rooms, send. The assertions look only at what
the page shows (stable ids and data-testid attributes), never at the page's JS state.

Without /usr/bin/chromium (or Playwright) the tests skip, except under CI=true, where
they fail: CI must run them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, RedisProcess, Server, delivery, free_port, http, make_token, unavailable

CHROMIUM = "/usr/bin/chromium"
# every run saves its screenshots here (git ignores it); to refresh the README's copies:
# WSAPP_SCREENSHOTS=docs/screenshots bash scripts/test.sh tests/test_browser.py
SCREENSHOTS = ROOT / os.environ.get("WSAPP_SCREENSHOTS", "test-artifacts/screenshots")
TIMEOUT_MS = 10_000

try:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]


def _unavailable() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def launch(playwright: Playwright, executable: str = CHROMIUM, attempts: int = 2) -> Browser:
    """Start Chromium, once more if the first start fails (a fresh CI machine has seen
    Chromium die with SIGTRAP at its first launch). Each launch gets a new, empty
    --user-data-dir: Playwright makes a temporary profile per launch, so nothing the
    failed start left behind is reused."""
    for attempt in range(1, attempts + 1):
        try:
            return playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
        except PlaywrightError as exc:
            if attempt == attempts:
                raise
            print(f"Chromium did not start (attempt {attempt}), trying again: {str(exc).splitlines()[0]}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    why = _unavailable()
    if why:
        unavailable(why)
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def test_browser_launch_survives_one_failed_start(tmp_path: Path) -> None:
    """A stand-in for Chromium that dies with SIGTRAP the first time, then runs the real one."""
    why = _unavailable()
    if why:
        unavailable(why)
    calls = tmp_path / "calls"
    flaky = tmp_path / "flaky-chromium"
    flaky.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> "{calls}"\n'
        f'if [ "$(wc -l < "{calls}")" -eq 1 ]; then kill -TRAP $$; fi\n'
        f'exec {CHROMIUM} "$@"\n'
    )
    flaky.chmod(0o755)
    with sync_playwright() as p:
        b = launch(p, str(flaky))
        try:
            page = b.new_page()
            page.set_content("<p id='ok'>up</p>")
            assert page.inner_text("#ok") == "up"
        finally:
            b.close()
    first, second = calls.read_text().splitlines()
    dirs = [re.search(r"--user-data-dir=(\S+)", line) for line in (first, second)]
    assert dirs[0] and dirs[1] and dirs[0].group(1) != dirs[1].group(1)  # a fresh profile for the retry
    with sync_playwright() as p:  # and a launch that always fails still fails, after two tries
        flaky.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\nkill -TRAP $$\n')
        with pytest.raises(PlaywrightError):
            launch(p, str(flaky))
    assert len(calls.read_text().splitlines()) == 4


@pytest.fixture
def demo_server(start_server: Callable[..., Server]) -> Server:
    return start_server(WSAPP_DEMO_TOKENS="1", WSAPP_RATE_LIMIT="0")


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Pages in their own contexts (separate storage, like two people); JS errors fail the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(**kw: Any) -> Page:
        ctx = browser.new_context(**kw)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # nothing may be loaded from another site: the page must work offline
        page.route(
            "**/*",
            lambda route: route.continue_() if route.request.url.startswith("http://127.0.0.1") else route.abort(),
        )
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(page: Page, server: Server) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#chat-state")).to_have_attribute("data-state", "idle")


def get_demo_token(page: Page, client_id: str, admin: bool = False) -> None:
    page.fill("#client-id", client_id)
    page.set_checked("#admin", admin)
    page.click("#get-token")
    expect(page.get_by_test_id("token-info")).to_contain_text(f"“{client_id}”")
    expect(page.get_by_test_id("token-info")).to_contain_text("admin" if admin else "not admin")


def connect_chat(page: Page, client_id: str) -> None:
    page.click("#chat-connect")
    expect(page.get_by_test_id("chat-state")).to_have_attribute("data-state", "open")
    expect(page.get_by_test_id("chat-me")).to_contain_text(f"You are {client_id}")


def join_room(page: Page, room: str) -> None:
    page.fill("#room-name", room)
    page.press("#room-name", "Enter")
    expect(page.locator(f'[data-testid="room"][data-room="{room}"]')).to_be_visible()


def members(page: Page, room: str) -> Any:
    return page.locator(f'[data-testid="room"][data-room="{room}"] [data-testid="member"]')


def send_chat(page: Page, kind: str, text: str, *, to: str = "", room: str = "") -> None:
    page.select_option("#send-kind", kind)
    if to:
        page.fill("#send-to", to)
    if room:
        page.select_option("#send-room", room)
    page.fill("#send-text", text)
    page.press("#send-text", "Enter")  # Enter sends
    expect(page.locator("#send-text")).to_have_value("")


def messages(page: Page, kind: str) -> Any:
    return page.locator(f'[data-testid="chat-msg"][data-kind="{kind}"]')


def test_two_pages_chat_rooms_broadcast_and_direct(demo_server: Server, new_page: Callable[..., Page]) -> None:
    alice, bob = new_page(viewport={"width": 1280, "height": 900}), new_page()
    for page, name in ((alice, "alice"), (bob, "bob")):
        open_page(page, demo_server)
        get_demo_token(page, name)
        connect_chat(page, name)

    # rooms: alice joins first and sees bob arrive (presence); bob sees alice (joined)
    join_room(alice, "lobby")
    expect(members(alice, "lobby")).to_have_text(["alice (you)"])
    join_room(bob, "lobby")
    expect(members(bob, "lobby")).to_have_text(["alice", "bob (you)"])
    expect(members(alice, "lobby")).to_have_text(["alice (you)", "bob"])

    # broadcast reaches both pages, sender included
    send_chat(alice, "broadcast", "hello everyone")
    for page in (alice, bob):
        expect(messages(page, "broadcast").filter(has_text="hello everyone")).to_contain_text("alice:")

    # a room message
    send_chat(bob, "room", "hi lobby", room="lobby")
    expect(messages(alice, "room").filter(has_text="hi lobby")).to_contain_text("#lobby")

    # a direct message: the receiver sees who sent it, the sender sees its ack
    send_chat(bob, "direct", "psst, alice", to="alice")
    got = messages(alice, "direct").filter(has_text="psst, alice")
    expect(got).to_contain_text("bob → alice:")
    expect(got).to_have_attribute("data-from", "bob")
    sent = messages(bob, "direct-out").filter(has_text="psst, alice")
    expect(sent.get_by_test_id("delivery")).to_have_text("delivered to 1 connection")
    expect(messages(bob, "direct")).to_have_count(0)  # a direct message is not copied to others

    # a direct message to nobody is reported, not silently dropped
    send_chat(bob, "direct", "anyone?", to="nobody-here")
    expect(messages(bob, "direct-out").filter(has_text="anyone?").get_by_test_id("delivery")).to_have_text(
        "not delivered: not_connected"
    )
    expect(messages(bob, "error").filter(has_text="not_connected")).to_have_count(1)

    # screenshot of the chat view for the README, taken while bob is still in the lobby
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    alice.locator("#chat-view").screenshot(path=str(SCREENSHOTS / "chat.png"))
    alice.screenshot(path=str(SCREENSHOTS / "page.png"), full_page=True)

    # bob leaves: alice's member list follows the presence frame
    bob.locator('[data-testid="room"][data-room="lobby"] button').click()
    expect(bob.locator('[data-testid="room"]')).to_have_count(0)
    expect(members(alice, "lobby")).to_have_text(["alice (you)"])

    # bob disconnects: his page shows the close code and reason, and does not reconnect
    bob.click("#chat-disconnect")
    expect(bob.get_by_test_id("chat-state")).to_have_attribute("data-state", "closed")
    expect(bob.get_by_test_id("chat-close")).to_have_attribute("data-code", "1000")
    expect(bob.get_by_test_id("chat-retry")).to_have_text("—")


def test_http_api_reaches_the_page_live(demo_server: Server, new_page: Callable[..., Page]) -> None:
    carol = new_page()
    open_page(carol, demo_server)
    get_demo_token(carol, "carol")
    connect_chat(carol, "carol")
    join_room(carol, "news")

    # an HTTP broadcast from outside the browser appears on the page
    admin = make_token("ops", admin=True)
    res = http(demo_server.url, "POST", "/api/broadcast", {"data": "deploy at noon"}, token=admin)
    assert res.status == 200 and delivery(res.body) == {"delivered": 1}
    expect(messages(carol, "broadcast").filter(has_text="deploy at noon")).to_contain_text("ops:")
    res = http(demo_server.url, "POST", "/api/broadcast", {"data": {"n": 1}, "room": "news"}, token=admin)
    assert res.status == 200 and delivery(res.body) == {"delivered": 1}
    expect(messages(carol, "room").filter(has_text='{"n":1}')).to_contain_text("#news")

    # the page's HTTP panel sends over HTTP to a second page, which receives it live
    dave = new_page()
    open_page(dave, demo_server)
    get_demo_token(dave, "dave")
    connect_chat(dave, "dave")

    carol.select_option("#http-endpoint", "send")
    carol.fill("#http-to", "dave")
    carol.fill("#http-data", "via /api/send")
    curl = carol.get_by_test_id("http-curl")
    expect(curl).to_contain_text(f"curl -sS -X POST '{demo_server.url}/api/send'")
    expect(curl).to_contain_text("Authorization: Bearer $TOKEN")
    expect(curl).to_contain_text('\'{"data":"via /api/send","to":"dave"}\'')
    carol.press("#http-data", "Enter")
    expect(carol.get_by_test_id("http-result")).to_have_attribute("data-status", "200")
    expect(carol.get_by_test_id("http-result")).to_contain_text('"delivered":1')
    got = messages(dave, "direct").filter(has_text="via /api/send")
    expect(got).to_contain_text("carol → dave:")

    # a non-admin token may not broadcast: the panel shows the API's 403
    carol.select_option("#http-endpoint", "broadcast")
    carol.click("#http-submit")
    expect(carol.get_by_test_id("http-result")).to_have_attribute("data-status", "403")
    expect(carol.get_by_test_id("http-result")).to_contain_text("forbidden")


def test_echo(demo_server: Server, new_page: Callable[..., Page]) -> None:
    page = new_page()
    open_page(page, demo_server)
    get_demo_token(page, "erin")
    page.select_option("#token-offer", "pair")  # ["bearer", token]: the server selects "bearer"
    page.click("#echo-connect")
    expect(page.get_by_test_id("echo-state")).to_have_attribute("data-state", "open")
    page.fill("#echo-input", "ping ünïcode ✓")
    page.press("#echo-input", "Enter")
    expect(page.get_by_test_id("echo-msg")).to_have_text(["← ping ünïcode ✓"])


@pytest.mark.parametrize(
    ("token_kind", "error"),
    [("bad_signature", "invalid_token"), ("expired", "token_expired"), ("none", "missing_token")],
)
def test_refused_handshake_shows_the_reason_and_does_not_retry(
    demo_server: Server, new_page: Callable[..., Page], token_kind: str, error: str
) -> None:
    token = {
        "bad_signature": make_token("mallory", secret="not-the-server-secret-0123456789abcdef"),
        "expired": make_token("mallory", ttl=-3600),
        "none": "",
    }[token_kind]
    page = new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    open_page(page, demo_server)
    page.fill("#token", token)
    page.click("#chat-connect")

    state = page.get_by_test_id("chat-state")
    expect(state).to_have_attribute("data-state", "refused")
    refusal = page.get_by_test_id("chat-refusal")
    expect(refusal).to_be_visible()
    expect(refusal).to_have_attribute("data-error", error)
    expect(refusal).to_contain_text(f"Handshake refused. {error}:")
    expect(page.get_by_test_id("chat-close")).to_have_attribute("data-code", "1006")
    # a token the server refuses is not retried: no countdown, the Connect button is back
    expect(page.get_by_test_id("chat-retry")).to_have_text("—")
    expect(page.locator("#chat-connect")).to_be_enabled()
    page.wait_for_timeout(1500)  # longer than the first backoff step: nothing must happen
    expect(state).to_have_attribute("data-state", "refused")
    assert sockets == [demo_server.ws_url + "/ws/chat"]
    if token_kind == "bad_signature":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("#conn-panel").screenshot(path=str(SCREENSHOTS / "refused.png"))


def test_valid_token_refused_for_another_reason_is_retried_with_backoff(
    start_server: Callable[..., Server], new_page: Callable[..., Page]
) -> None:
    # one connection per client id: a second tab with the same id is refused with 429
    srv = start_server(WSAPP_DEMO_TOKENS="1", WSAPP_RATE_LIMIT="0", WSAPP_MAX_CONNECTIONS_PER_CLIENT="1")
    first, second = new_page(), new_page()
    for page in (first, second):
        open_page(page, srv)
        page.fill("#token", make_token("frank"))
    connect_chat(first, "frank")
    second.click("#chat-connect")
    expect(second.get_by_test_id("chat-refusal")).to_have_attribute("data-error", "token_ok")
    expect(second.get_by_test_id("chat-refusal")).to_contain_text("too many connections")
    expect(second.get_by_test_id("chat-state")).to_have_attribute("data-state", "retrying")
    # attempt 1, or a later one: each retry before the first tab lets go is refused again
    expect(second.get_by_test_id("chat-retry")).to_contain_text(re.compile(r"attempt \d+\)"))
    # once the first tab lets go, the retry gets in
    first.click("#chat-disconnect")
    expect(second.get_by_test_id("chat-state")).to_have_attribute("data-state", "open", timeout=15_000)
    expect(second.get_by_test_id("chat-refusal")).to_be_hidden()


def test_phone_width_and_keyboard_only(demo_server: Server, new_page: Callable[..., Page]) -> None:
    page = new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    open_page(page, demo_server)

    # keyboard only: the client id field, Enter gets a token; Tab reaches Connect; Enter connects
    page.focus("#client-id")
    page.keyboard.press("Control+A")
    page.keyboard.type("gina")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("token-info")).to_contain_text("“gina”")
    focus_order = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id")
        focus_order.append(focused)
        if focused == "chat-connect":
            break
    assert focus_order[-1] == "chat-connect", focus_order
    assert focus_order.index("token") < focus_order.index("token-offer")  # reading order
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("chat-state")).to_have_attribute("data-state", "open")
    expect(page.locator("#chat-disconnect")).to_be_focused()  # focus is not lost to <body>
    page.focus("#room-name")
    page.keyboard.press("Enter")
    expect(members(page, "lobby")).to_have_text(["gina (you)"])
    page.focus("#send-text")
    page.keyboard.type("typed, not clicked")
    page.keyboard.press("Enter")
    expect(messages(page, "broadcast").filter(has_text="typed, not clicked")).to_have_count(1)

    # nothing is wider than the phone
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a 390px screen"
    page.locator("#chat-view").scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-phone.png"))


def test_server_going_away_is_shown_and_retried_with_backoff(
    start_server: Callable[..., Server], new_page: Callable[..., Page]
) -> None:
    srv = start_server(WSAPP_DEMO_TOKENS="1", WSAPP_RATE_LIMIT="0", WSAPP_SHUTDOWN_TIMEOUT="2")
    page = new_page()
    open_page(page, srv)
    get_demo_token(page, "hank")
    connect_chat(page, "hank")
    srv.stop()
    # the server says goodbye with 1001 (its draining close); the page shows code and reason
    expect(messages(page, "system").filter(has_text="closed")).to_have_text(re.compile("1001 server shutting down"))
    expect(page.get_by_test_id("chat-close")).to_have_attribute("data-code", re.compile(r"^100[16]$"))
    expect(page.get_by_test_id("chat-summary")).to_contain_text(re.compile(r"last close 100[16]"))
    # ... and the page keeps trying, with a growing delay, telling why it cannot get in
    expect(page.get_by_test_id("chat-refusal")).to_have_attribute("data-error", "unreachable")
    expect(page.get_by_test_id("chat-state")).to_have_attribute("data-state", "retrying")
    # "attempt 2" or later: the page shows each attempt only until the next, so a slow check may see a later one
    expect(page.get_by_test_id("chat-retry")).to_contain_text(re.compile(r"attempt ([2-9]|\d\d+)\)"))


def test_token_expiring_while_connected_closes_4401_without_retry(
    start_server: Callable[..., Server], new_page: Callable[..., Page]
) -> None:
    srv = start_server(WSAPP_RATE_LIMIT="0")  # no demo token route: the page cannot refresh its token
    page = new_page()
    open_page(page, srv)
    page.fill("#token", make_token("ivy", ttl=2))
    connect_chat(page, "ivy")
    expect(page.get_by_test_id("chat-close")).to_have_attribute("data-code", "4401")
    expect(page.get_by_test_id("chat-reason")).to_have_text("token expired")
    expect(page.get_by_test_id("chat-state")).to_have_attribute("data-state", "closed")
    expect(page.get_by_test_id("chat-refusal")).to_have_attribute("data-error", "token_expired")
    page.wait_for_timeout(1500)  # longer than the first backoff step: no reconnect with a dead token
    expect(page.get_by_test_id("chat-state")).to_have_attribute("data-state", "closed")
    expect(page.get_by_test_id("chat-retry")).to_have_text("—")


def test_the_page_refreshes_its_token_before_it_expires(demo_server: Server, new_page: Callable[..., Page]) -> None:
    """A short-lived token: the page gets a new one (the demo route) and sends `refresh`, so
    the connection outlives the first token's expiry: no 4401, still served."""
    ttl = 6
    expires = time.time() + ttl
    page = new_page()
    open_page(page, demo_server)
    page.fill("#token", make_token("jill", ttl=ttl))
    connect_chat(page, "jill")
    expect(messages(page, "system").filter(has_text="token refreshed")).to_have_count(1)
    # past the first token's expiry (the heartbeat closes within a second of it) ...
    page.wait_for_timeout(max(0, (expires + 2 - time.time()) * 1000))
    # ... the same connection is still open and served
    send_chat(page, "broadcast", "still here")
    expect(messages(page, "broadcast").filter(has_text="still here")).to_have_count(1)
    expect(page.get_by_test_id("chat-state")).to_have_attribute("data-state", "open")
    expect(messages(page, "system").filter(has_text="closed")).to_have_count(0)


def test_the_page_resumes_after_a_reconnect_and_says_what_it_recovered(
    start_server: Callable[..., Server], new_page: Callable[..., Page]
) -> None:
    port = free_port()  # fixed, so the page finds the restarted server where it was
    srv = start_server(WSAPP_DEMO_TOKENS="1", WSAPP_RATE_LIMIT="0", WSAPP_PORT=str(port), WSAPP_SHUTDOWN_TIMEOUT="2")
    alice, bob = new_page(), new_page()
    for page, name in ((alice, "alice"), (bob, "bob")):
        open_page(page, srv)
        get_demo_token(page, name)
        connect_chat(page, name)
        join_room(page, "lobby")
    send_chat(alice, "room", "before", room="lobby")
    expect(messages(bob, "room").filter(has_text="before")).to_have_count(1)

    # bob goes away; alice goes on talking to the room and to him
    bob.click("#chat-disconnect")
    expect(bob.get_by_test_id("chat-state")).to_have_attribute("data-state", "closed")
    expect(members(alice, "lobby")).to_have_text(["alice (you)"])
    send_chat(alice, "room", "while away 1", room="lobby")
    send_chat(alice, "room", "while away 2", room="lobby")
    send_chat(alice, "direct", "for when you are back", to="bob")
    expect(messages(alice, "direct-out").get_by_test_id("delivery")).to_have_text("kept for when they come back")

    # he comes back: rooms joined again, the three messages replayed once, in order
    connect_chat(bob, "bob")
    expect(bob.locator('[data-testid="chat-msg"][data-kind="recovery"]')).to_have_text(
        [re.compile("recovered 3 messages")]
    )
    expect(messages(bob, "room")).to_have_text([re.compile("before"), re.compile("while away 1"),
                                                re.compile("while away 2")])  # fmt: skip
    expect(messages(bob, "direct").filter(has_text="for when you are back")).to_have_count(1)
    expect(members(bob, "lobby")).to_have_text(["alice", "bob (you)"])

    # the server restarts (no Redis: history is lost): the page reconnects by itself and says so
    srv.stop()
    srv.start()
    lost = bob.locator('[data-testid="chat-msg"][data-kind="recovery"][data-lost="#lobby"]')
    expect(lost).to_have_text(re.compile("could not recover #lobby: reloaded"), timeout=20_000)
    expect(bob.get_by_test_id("chat-state")).to_have_attribute("data-state", "open")
    expect(members(bob, "lobby")).to_contain_text(["bob (you)"])


def test_a_restarted_server_the_page_reconnects_and_shows_every_missed_message_once(
    start_server: Callable[..., Server], new_page: Callable[..., Page], redis_server: RedisProcess
) -> None:
    """Issue 19: bob's page is on node A, alice's on node B (one Redis); they talk in a room;
    A goes down; alice's page and the HTTP API send to the room and to bob; A comes back on
    its port; bob's page reconnects by itself and shows each missed message exactly once,
    in order, with nothing lost."""
    port = free_port()  # fixed, so bob's page finds node A where it was
    env = {
        "WSAPP_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "WSAPP_DEMO_TOKENS": "1",
        "WSAPP_RATE_LIMIT": "0",
        "WSAPP_SHUTDOWN_TIMEOUT": "2",
    }
    node_a = start_server(WSAPP_PORT=str(port), **env)
    node_b = start_server(**env)
    bob, alice = new_page(), new_page()
    for page, name, node in ((bob, "bob", node_a), (alice, "alice", node_b)):
        open_page(page, node)
        get_demo_token(page, name)
        connect_chat(page, name)
        join_room(page, "lobby")
    expect(members(bob, "lobby")).to_have_text(["alice", "bob (you)"])  # across the nodes
    send_chat(alice, "room", "hi bob", room="lobby")
    send_chat(bob, "room", "hi alice", room="lobby")
    expect(messages(alice, "room").filter(has_text="hi alice")).to_have_count(1)
    expect(messages(bob, "room")).to_have_text([re.compile("hi bob"), re.compile("hi alice")])

    node_a.stop()
    expect(bob.get_by_test_id("chat-state")).to_have_attribute("data-state", re.compile("retrying|connecting|refused"))
    expect(members(alice, "lobby")).to_have_text(["alice (you)"])  # bob's connection is gone
    send_chat(alice, "room", "away 1", room="lobby")
    send_chat(alice, "direct", "for when you are back", to="bob")
    expect(messages(alice, "direct-out").get_by_test_id("delivery")).to_have_text("kept for when they come back")
    admin = make_token("ops", admin=True)
    res = http(node_b.url, "POST", "/api/broadcast", {"room": "lobby", "data": "away 2"}, token=admin)
    assert res.status == 200, res.body
    send_chat(alice, "room", "away 3", room="lobby")
    node_a.start()

    recovery = bob.locator('[data-testid="chat-msg"][data-kind="recovery"]')
    expect(recovery).to_have_text([re.compile("recovered 4 messages")], timeout=40_000)
    expect(bob.get_by_test_id("chat-state")).to_have_attribute("data-state", "open")
    expect(messages(bob, "room")).to_have_text(
        [re.compile(t) for t in ("hi bob", "hi alice", "away 1", "away 2", "away 3")]
    )
    expect(messages(bob, "direct").filter(has_text="for when you are back")).to_have_count(1)
    expect(members(bob, "lobby")).to_have_text(["alice", "bob (you)"])
    send_chat(bob, "room", "back", room="lobby")  # and live again, both ways
    expect(messages(alice, "room").filter(has_text="back")).to_have_count(1)
    expect(messages(bob, "room")).to_have_count(6)
