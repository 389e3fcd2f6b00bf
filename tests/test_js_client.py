"""wsapp.js, the JavaScript client, for real: served by the blueprint, run in Debian's
Chromium (Playwright) and under Node against real gunicorn processes.

The page is any page of the server's origin (`/healthz`); each test imports `/wsapp.js`
in it and keeps what the client reports in `window.seen`, which the test polls."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_browser import _unavailable, launch

from helpers import ROOT, RedisProcess, Server, delivery, free_port, http, make_token, unavailable

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None  # type: ignore[assignment]

TIMEOUT_MS = 15_000

# the page's side: a client per name, everything it reports kept in window.seen[name]
SETUP = """
async ([name, url, tokens, options]) => {
  const { WsappClient } = await import("/wsapp.js");
  window.seen = window.seen || {};
  window.clients = window.clients || {};
  const seen = { status: [], room: [], direct: [], resumed: [], gap: [], refreshed: 0, welcome: 0 };
  window.seen[name] = seen;
  let i = 0;
  const client = new WsappClient(url, {
    getToken: () => tokens[Math.min(i++, tokens.length - 1)],
    onStatus: (s) => seen.status.push(s),
    backoffBaseMs: 200,
    backoffMaxMs: 1000,
    ...options,
  });
  client.on("room", (m) => seen.room.push(m.data));
  client.on("direct", (m) => seen.direct.push(m.data));
  client.on("resumed", (r) => seen.resumed.push({ recovered: r.recovered, replayed: r.replayed, gaps: r.gaps }));
  client.on("gap", (g) => seen.gap.push(g.stream));
  client.on("refreshed", () => (seen.refreshed += 1));
  client.on("welcome", () => (seen.welcome += 1));
  window.clients[name] = client;
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    why = _unavailable()
    if why:
        unavailable(why)
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_client(page: Page, srv: Server, name: str, tokens: list[str], **options: Any) -> None:
    if not page.url.startswith(srv.url):
        page.goto(srv.url + "/healthz")
    page.evaluate(SETUP, [name, srv.ws_url + "/ws/chat", tokens, options])


def seen(page: Page, name: str) -> dict[str, Any]:
    return page.evaluate("(name) => JSON.parse(JSON.stringify(window.seen[name]))", name)  # type: ignore[no-any-return]


def wait_seen(
    page: Page, name: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = seen(page, name)
        if check(got):
            return got
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}; seen {got}"
        page.wait_for_timeout(50)


def is_open(s: dict[str, Any]) -> bool:
    return bool(s["status"]) and s["status"][-1]["status"] == "open"


def call(page: Page, name: str, method: str, *args: Any) -> Any:
    """`client[method](...args)`'s promise: its value, or {"rejected": code}."""
    return page.evaluate(
        "async ([name, method, args]) => { try { return await window.clients[name][method](...args); }"
        " catch (e) { return { rejected: e.code || String(e) }; } }",
        [name, method, list(args)],
    )


def test_the_blueprint_serves_the_client_with_an_etag(server: Server) -> None:
    with urllib.request.urlopen(server.url + "/wsapp.js", timeout=10) as resp:
        body, etag, kind = resp.read(), resp.headers["ETag"], resp.headers["Content-Type"]
    assert body == (ROOT / "wsapp" / "static" / "wsapp.js").read_bytes()
    assert kind.startswith("text/javascript") and etag
    assert http(server.url, "GET", "/wsapp.js", headers={"If-None-Match": etag}).status == 304


def test_connect_join_and_exchange_in_a_room(server: Server, page: Page) -> None:
    open_client(page, server, "alice", [make_token("alice")], rooms=["lobby"])
    open_client(page, server, "bob", [make_token("bob")])
    wait_seen(page, "alice", is_open, "alice open")
    wait_seen(page, "bob", is_open, "bob open")
    joined = call(page, "bob", "join", "lobby")
    assert joined["type"] == "ack"
    ack = call(page, "bob", "room", "lobby", {"text": "hi alice"})
    assert (ack["type"], ack["delivered"]) == ("ack", 2)
    wait_seen(page, "alice", lambda s: s["room"] == [{"text": "hi alice"}], "alice got the room message")
    # a refused frame rejects its promise with the error's code
    assert call(page, "bob", "direct", "nobody-here", "x") == {"rejected": "not_connected"}
    assert call(page, "bob", "room", "elsewhere", "x")["rejected"] == "not_in_room"
    page.evaluate("() => { window.clients.alice.close(); window.clients.bob.close(); }")
    wait_seen(page, "alice", lambda s: s["status"][-1]["status"] == "closed", "alice closed for good")


def test_an_expired_token_is_not_retried(server: Server, page: Page) -> None:
    open_client(page, server, "old", [make_token("old", ttl=-60)])
    got = wait_seen(page, "old", lambda s: bool(s["status"]) and s["status"][-1]["status"] == "refused", "refused")
    assert got["status"][-1]["error"] == "token_expired" and got["welcome"] == 0


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    return f"redis://127.0.0.1:{redis_server.port}/0"


def test_a_restarted_server_is_reconnected_and_every_missed_message_arrives_once(
    start_server: Callable[..., Server], page: Page, redis_url: str
) -> None:
    """bob's page is on node A; the room and his direct stream get messages through node B
    while A is down; A comes back on its port; the client reconnects by itself, resumes
    and shows each message exactly once, in order."""
    port = free_port()
    env = {"WSAPP_REDIS_URL": redis_url, "WSAPP_RATE_LIMIT": "0", "WSAPP_SHUTDOWN_TIMEOUT": "2"}
    node_a = start_server(WSAPP_PORT=str(port), **env)
    node_b = start_server(**env)
    admin = make_token("ops", admin=True)
    open_client(page, node_a, "bob", [make_token("bob")], rooms=["lobby"])
    wait_seen(page, "bob", is_open, "bob open")
    deadline = time.monotonic() + 15  # node B sees bob in the room (the cluster-wide view)
    while delivery(http(node_b.url, "POST", "/api/broadcast", {"room": "lobby", "data": "before"}, admin).body) != {
        "delivered": 1
    }:
        assert time.monotonic() < deadline, "node B never reached bob's room"
        time.sleep(0.1)
    wait_seen(page, "bob", lambda s: s["room"][-1:] == ["before"], "bob got 'before'")
    before = seen(page, "bob")["room"]

    node_a.stop()
    wait_seen(page, "bob", lambda s: s["status"][-1]["status"] == "reconnecting", "bob reconnecting")
    for text in ("away 1", "away 2", "away 3"):
        assert http(node_b.url, "POST", "/api/broadcast", {"room": "lobby", "data": text}, admin).status == 200
    sent = http(node_b.url, "POST", "/api/send", {"to": "bob", "data": "for when you are back"}, admin)
    assert sent.status == 202 and sent.body["stored"] is True
    node_a.start()

    assert seen(page, "bob")["resumed"] == []  # the first connection joined: no replay of older history
    got = wait_seen(page, "bob", lambda s: len(s["resumed"]) == 1, "bob resumed", timeout=30)
    assert got["resumed"][0] == {"recovered": True, "replayed": 4, "gaps": []}
    got = wait_seen(page, "bob", lambda s: len(s["room"]) >= len(before) + 3 and s["direct"], "the replay")
    assert got["room"] == [*before, "away 1", "away 2", "away 3"]
    assert got["direct"] == ["for when you are back"]
    assert got["welcome"] == 2  # one reconnect (the first tries while A was down never opened)
    ack = call(page, "bob", "room", "lobby", "live again")
    assert ack["delivered"] >= 1


def test_a_restart_without_history_says_recovered_false(start_server: Callable[..., Server], page: Page) -> None:
    port = free_port()
    srv = start_server(WSAPP_PORT=str(port), WSAPP_RATE_LIMIT="0", WSAPP_SHUTDOWN_TIMEOUT="2")
    open_client(page, srv, "carl", [make_token("carl")], rooms=["lobby"])
    wait_seen(page, "carl", is_open, "carl open")
    assert delivery(
        http(srv.url, "POST", "/api/broadcast", {"room": "lobby", "data": "x"}, make_token("ops", admin=True)).body
    ) == {"delivered": 1}
    wait_seen(page, "carl", lambda s: s["room"] == ["x"], "carl got x")
    srv.stop()
    srv.start()  # in-process history: gone with the process
    got = wait_seen(page, "carl", lambda s: len(s["resumed"]) == 1, "carl resumed", timeout=30)
    assert got["resumed"][0]["recovered"] is False and "room:lobby" in got["gap"]


def test_the_token_is_refreshed_before_it_expires(start_server: Callable[..., Server], page: Page) -> None:
    srv = start_server(WSAPP_RATE_LIMIT="0")
    ttl = 6
    expires = time.time() + ttl
    open_client(page, srv, "jill", [make_token("jill", ttl=ttl), make_token("jill", ttl=3600)], rooms=["lobby"])
    wait_seen(page, "jill", is_open, "jill open")
    wait_seen(page, "jill", lambda s: s["refreshed"] == 1, "the refresh")
    page.wait_for_timeout(max(0, (expires + 2 - time.time()) * 1000))  # past the first token's exp
    got = seen(page, "jill")
    assert got["welcome"] == 1 and is_open(got)  # the same connection, never closed 4401
    assert call(page, "jill", "room", "lobby", "still here")["type"] == "ack"


NODE_SCRIPT = """
import { WsappClient } from "%(module)s";
const [url, first, second] = process.argv.slice(2);
const tokens = [first, second];
let i = 0;
const client = new WsappClient(url, { getToken: () => tokens[Math.min(i++, 1)], rooms: ["lobby"] });
const out = (o) => console.log(JSON.stringify(o));
client.on("welcome", (m) => out({ welcome: m.client_id }));
client.on("refreshed", async () => {
  out({ refreshed: true });
  setTimeout(async () => {  // past the first token's expiry: still served
    const ack = await client.room("lobby", "from node");
    out({ ack: ack.type, delivered: ack.delivered });
    client.close();
  }, %(after_ms)d);
});
client.on("status", (s) => {
  if (s.status !== "closed" && s.status !== "refused") return;
  out({ status: s.status, code: s.code });
  process.exit(0);
});
"""


def test_under_node_with_a_refresh_before_expiry(start_server: Callable[..., Server], tmp_path: Any) -> None:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (apt-get install nodejs)")
    assert node is not None
    probe = subprocess.run([node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False)
    flags = [] if probe.returncode == 0 else ["--experimental-websocket"]  # Node 20: behind a flag
    srv = start_server(WSAPP_RATE_LIMIT="0")
    ttl = 5
    script = tmp_path / "client.mjs"
    script.write_text(
        NODE_SCRIPT % {"module": (ROOT / "wsapp" / "static" / "wsapp.js").as_uri(), "after_ms": ttl * 1000}
    )
    done = subprocess.run(
        [
            node,
            "--no-warnings",
            *flags,
            str(script),
            srv.ws_url + "/ws/chat",
            make_token("nora", ttl=ttl),
            make_token("nora", ttl=3600),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines == [
        {"welcome": "nora"},
        {"refreshed": True},
        {"ack": "ack", "delivered": 1},
        {"status": "closed", "code": 1000},
    ], done.stdout + done.stderr
