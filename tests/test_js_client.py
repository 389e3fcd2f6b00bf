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


# ---- wsapp.js's rules, one at a time, under Node with a stand-in WebSocket ---------------
# No server: the test plays the server's side of each socket (open, frames, close), so a
# rule is checked exactly (what the client offered, sent, and reported), with no timing.

FAKE = """
import { WsappClient } from "%(module)s";
class FakeWS {
  static all = [];
  constructor(url, protocols) {
    this.url = url; this.protocols = protocols; this.readyState = 0; this.sent = []; FakeWS.all.push(this);
  }
  send(data) { this.sent.push(data); }
  close(code = 1000, reason = "") { this.drop(code, reason); }
  open() { this.readyState = 1; this.onopen && this.onopen(); }
  frame(obj) { this.onmessage && this.onmessage({ data: typeof obj === "string" ? obj : JSON.stringify(obj) }); }
  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose && this.onclose({ code, reason }));
  }
}
const jwt = (claims) => "eyJhbGciOiJIUzI1NiJ9." + Buffer.from(JSON.stringify(claims)).toString("base64url") + ".sig";
const LATER = Math.floor(Date.now() / 1000) + 3600;
const until = async (check, what) => {
  const deadline = Date.now() + 5000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("not within 5 s: " + what);
    await new Promise((r) => setTimeout(r, 1));
  }
};
const statuses = [];
const make = (options) => new WsappClient("ws://127.0.0.1:1/ws/chat", {
  WebSocket: FakeWS, backoffBaseMs: 1, backoffMaxMs: 2,
  onStatus: (s) => statuses.push({ status: s.status, code: s.code, error: s.error, retry: s.delay !== undefined }),
  ...options,
});
const socket = async (n) => { await until(() => FakeWS.all.length >= n, `socket ${n}`); return FakeWS.all[n - 1]; };
const welcome = (ws, extra = {}) => {
  ws.open();
  ws.frame({ type: "welcome", client_id: "ann", conn_id: "c" + FakeWS.all.length, ...extra });
};
const out = (o) => { console.log(JSON.stringify({ ...o, statuses, sockets: FakeWS.all.length })); process.exit(0); };
const scenarios = {
  async unsolicited_joined() {
    const c = make({ getToken: () => jwt({ sub: "ann", exp: LATER }) });
    let ws = await socket(1);
    welcome(ws, { streams: { broadcast: { offset: 0, epoch: "e" }, direct: { offset: 0, epoch: "e" } } });
    ws.frame({ type: "joined", room: "ops", members: ["ann"], offset: 5, epoch: "e" }); // no join was asked
    const rooms = [...c.rooms];
    ws.drop(1006);
    ws = await socket(2);
    welcome(ws);
    await until(() => ws.sent.length > 0, "the resume frame");
    out({ rooms, url: ws.url, resume: JSON.parse(ws.sent[0]) });
  },
  async members_cleared_on_close() {
    const c = make({ getToken: () => null, reconnect: false });
    const ws = await socket(1);
    welcome(ws);
    ws.frame({ type: "joined", room: "ops", members: ["ann", "bo"] });
    const before = [...c.members.keys()];
    ws.drop(1001);
    await until(() => c.status === "closed", "closed");
    out({ before, after: [...c.members.keys()], rooms: [...c.rooms] });
  },
  async refusal_hook_stops() {
    const calls = [];
    make({ getToken: () => "opaque", onRefusal: (d) => { calls.push([d.code, d.token]); return calls.length < 2; } });
    (await socket(1)).drop(1006);
    (await socket(2)).drop(1006);
    await until(() => statuses.some((s) => s.status === "refused"), "refused");
    out({ calls });
  },
  async token_expired_same_token() {
    const token = jwt({ sub: "ann", exp: LATER });
    const c = make({ getToken: () => token });
    const ws = await socket(1);
    welcome(ws);
    ws.drop(4401, "token expired");
    await until(() => c.status === "closed", "closed");
    out({});
  },
  async token_expired_new_token() {
    const tokens = [jwt({ sub: "ann", exp: LATER }), jwt({ sub: "ann", exp: LATER + 1 })];
    let i = 0;
    make({ getToken: () => tokens[Math.min(i++, 1)] });
    const ws = await socket(1);
    welcome(ws);
    ws.drop(4401, "token expired");
    const next = await socket(2);
    out({ offered: next.protocols, second: next.protocols[0] === tokens[1] });
  },
  async bearer() {
    make({ getToken: () => "opaque-token", bearer: true });
    const ws = await socket(1);
    out({ offered: ws.protocols });
  },
  async raw() {
    const c = make({ getToken: () => null, raw: true });
    const data = [];
    const frames = [];
    c.on("data", (d) => data.push(d));
    c.on("message", (m) => frames.push(m));
    let ws = await socket(1);
    ws.open();
    const open = c.status;
    ws.frame("plain text");
    ws.frame({ type: "room", room: "r", data: 1, offset: 3, epoch: "e" });
    const sent = c.sendRaw("as is");
    ws.drop(1006);
    ws = await socket(2);
    ws.open();
    const wrote = FakeWS.all[0].sent;
    out({ open, data, frames, sent, wrote, url: ws.url, offered: ws.protocols, positions: c.positions.size });
  },
  async close_before_open() {
    const c = make({ getToken: () => "t" });
    await socket(1);
    c.close();
    await until(() => statuses.length >= 2, "a status after close()");
    out({});
  },
  async no_reconnect() {
    const c = make({ getToken: () => null, reconnect: false });
    welcome(await socket(1));
    FakeWS.all[0].drop(Number(process.argv[3]), "the server ended it");
    await until(() => c.status === "closed", "closed");
    out({});
  },
  async refresh_with_a_token() {
    const c = make({ getToken: () => { throw new Error("not asked: refresh() was given the token"); } });
    c.getToken = () => jwt({ sub: "ann", exp: LATER });
    const ws = await socket(1);
    welcome(ws);
    let refreshed = 0;
    c.on("refreshed", () => (refreshed += 1));
    const promise = c.refresh("eyJ.new.token");
    const frame = JSON.parse(ws.sent[ws.sent.length - 1]);
    ws.frame({ type: "ack", id: frame.id, delivered: 0 });
    const ack = await promise;
    out({ frame: { type: frame.type, token: frame.token }, ack: ack.type, refreshed });
  },
  async expired_first_then_retry() {
    make({ getToken: () => jwt({ sub: "ann", exp: 1 }) });
    (await socket(1)).drop(1006); // the server refused it (the client does not decide the first time)
    await until(() => statuses.some((s) => s.status === "refused"), "refused");
    out({});
  },
};
await scenarios[process.argv[2]]();
"""


def _node() -> tuple[str, list[str]]:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (apt-get install nodejs)")
    assert node is not None
    return node, []


def run_scenario(tmp_path: Any, name: str, *args: str) -> dict[str, Any]:
    node, flags = _node()
    script = tmp_path / "fake.mjs"
    script.write_text(FAKE % {"module": (ROOT / "wsapp" / "static" / "wsapp.js").as_uri()})
    done = subprocess.run([node, *flags, str(script), name, *args], capture_output=True, text=True, timeout=30)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def kinds(got: dict[str, Any]) -> list[str]:
    return [s["status"] + ("+retry" if s["retry"] else "") for s in got["statuses"]]


def test_a_join_the_server_made_is_a_room_the_client_is_in_and_resumes(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "unsolicited_joined")
    assert got["rooms"] == ["ops"]
    assert got["url"].endswith("/ws/chat?resume=1")
    assert got["resume"]["type"] == "resume"
    assert got["resume"]["rooms"] == {"ops": {"offset": 5, "epoch": "e"}}


def test_a_close_empties_the_member_lists_but_keeps_the_rooms_to_resume(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "members_cleared_on_close")
    assert (got["before"], got["after"], got["rooms"]) == (["ops"], [], ["ops"])


def test_on_refusal_false_stops_the_retries(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "refusal_hook_stops")
    assert got["calls"] == [[1006, "opaque"], [1006, "opaque"]]
    assert kinds(got) == ["connecting", "reconnecting+retry", "reconnecting", "refused"]
    assert got["sockets"] == 2


def test_a_4401_with_no_new_token_stops_at_once(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "token_expired_same_token")
    assert kinds(got) == ["connecting", "open", "closed"]
    assert got["statuses"][-1] == {"status": "closed", "code": 4401, "error": "token_expired", "retry": False}
    assert got["sockets"] == 1


def test_a_4401_with_a_new_token_reconnects_with_it(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "token_expired_new_token")
    assert got["second"] is True and len(got["offered"]) == 1
    assert kinds(got)[:3] == ["connecting", "open", "reconnecting+retry"]


def test_bearer_offers_the_token_after_the_bearer_subprotocol(tmp_path: Any) -> None:
    assert run_scenario(tmp_path, "bearer")["offered"] == ["bearer", "opaque-token"]


def test_raw_mode_hands_messages_over_as_they_are_and_never_resumes(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "raw")
    assert got["open"] == "open"  # open at the socket's open: a raw route sends no welcome
    assert got["data"] == ["plain text", '{"type":"room","room":"r","data":1,"offset":3,"epoch":"e"}']
    assert got["frames"] == [] and got["positions"] == 0  # not read as chat frames
    assert got["sent"] is True and got["wrote"] == ["as is"]
    assert got["url"] == "ws://127.0.0.1:1/ws/chat" and got["offered"] == []  # reconnected, no ?resume=1


def test_close_before_the_open_is_closed_not_refused(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "close_before_open")
    assert kinds(got) == ["connecting", "closed"]


@pytest.mark.parametrize("code", ["1001", "1000"])  # 1000 from the server is retried otherwise
def test_reconnect_false_does_not_come_back(tmp_path: Any, code: str) -> None:
    got = run_scenario(tmp_path, "no_reconnect", code)
    assert kinds(got) == ["connecting", "open", "closed"] and got["sockets"] == 1


def test_refresh_with_a_token_sends_that_token(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "refresh_with_a_token")
    assert got["frame"] == {"type": "refresh", "token": "eyJ.new.token"}
    assert (got["ack"], got["refreshed"]) == ("ack", 1)


def test_an_expired_token_goes_to_the_server_once_then_is_not_retried(tmp_path: Any) -> None:
    got = run_scenario(tmp_path, "expired_first_then_retry")
    assert got["sockets"] == 1  # the first connection asked the server
    assert kinds(got) == ["connecting", "reconnecting+retry", "reconnecting", "refused"]
    assert got["statuses"][-1]["error"] == "token_expired"
