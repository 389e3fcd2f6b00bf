"""wsapp.client, the terminal client: run as a real subprocess against a real server."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any

import pytest

from helpers import ROOT, Server, chat_client, free_port, make_token, recv_json, recv_until

TIMEOUT = 30.0  # a new Python process starts, imports and connects: slow on a loaded machine
CLOSED_1000 = "* closed: code 1000"


def client_env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WSAPP_TOKEN"}
    if token is not None:
        env["WSAPP_TOKEN"] = token
    return env


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """`python -m wsapp.client ARGS` with stdin, stdout and stderr on pipes, read line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsapp.client", *args],
            cwd=ROOT,
            env=env or client_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: dict[str, queue.Queue[str | None]] = {"out": queue.Queue(), "err": queue.Queue()}
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.threads = [self._pump(self.proc.stdout, "out"), self._pump(self.proc.stderr, "err")]

    def _pump(self, stream: IO[str], name: str) -> threading.Thread:
        def run() -> None:
            for line in stream:
                self.lines[name].put(line.rstrip("\n"))
            self.lines[name].put(None)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def line(self, name: str = "out", timeout: float = TIMEOUT) -> str | None:
        """The next line of stdout ("out") or stderr ("err"); None at EOF."""
        try:
            return self.lines[name].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on std{name} within {timeout} s") from None

    def json(self) -> dict[str, Any]:
        line = self.line()
        assert line is not None and line.startswith("< "), line
        return json.loads(line[2:])  # type: ignore[no-any-return]

    def connected(self) -> Client:
        line = self.line("err")
        assert line is not None and line.startswith("* connected to ws://"), line
        return self

    def type(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines))
        self.proc.stdin.flush()

    def eof(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def rest(self, name: str) -> list[str]:
        """Every remaining line of a stream, up to its EOF."""
        out = []
        while (line := self.line(name)) is not None:
            out.append(line)
        return out

    def wait(self) -> int:
        return self.proc.wait(TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for thread in self.threads:
            thread.join(TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass


@pytest.fixture
def spawn() -> Any:
    started: list[Client] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Client:
        started.append(Client(*args, env=env))
        return started[-1]

    yield start
    for client in started:
        client.close()


def log_line(server: Server, pattern: str, timeout: float = TIMEOUT) -> str:
    """The first server log line matching `pattern` (the log is written as things happen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line matches {pattern!r}")


def test_help_documents_token_commands_and_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wsapp.client", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0
    for text in (
        "WSAPP_TOKEN",
        "Authorization: Bearer",
        "--subprotocol",
        "/direct ID TEXT",
        "/join ROOM",
        "/room ROOM TEXT",
        "/broadcast TEXT",
        "/binary HEX",
        "/quit",
        "3 handshake refused",
        "--cacert FILE",
        "--insecure",
    ):
        assert text in out.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["ws://127.0.0.1:1/ws/echo", "--cacert", __file__], "--cacert and --insecure apply to wss:// URLs only"),
        (["ws://127.0.0.1:1/ws/echo", "--insecure"], "--cacert and --insecure apply to wss:// URLs only"),
        (["wss://127.0.0.1:1/ws/echo", "--cacert", "/nonexistent/ca.pem"], "--cacert /nonexistent/ca.pem: no such"),
        (["wss://127.0.0.1:1/ws/echo", "--cacert", __file__, "--insecure"], "not allowed with argument"),
    ],
)
def test_tls_options_that_make_no_sense_are_usage_errors(args: list[str], expected: str) -> None:
    """(The wss:// round trips with --cacert and --insecure run through nginx in test_nginx.py.)"""
    out = subprocess.run(
        [sys.executable, "-m", "wsapp.client", *args],
        cwd=ROOT,
        env=client_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr.splitlines()[-1]


def test_echo_round_trip_then_eof_closes_with_1000(server: Server, spawn: Any) -> None:
    who = unique("echo")
    client = spawn(f"{server.ws_url}/ws/echo", "--token", make_token(who)).connected()
    for text in ("hello", "héllo ✓ 🎉", '{"type": "not chat here"}'):
        client.type(text)
        assert client.line() == f"< {text}"
    client.type("/binary 0102ff", "/raw /join is sent as it is", "/join r")
    assert client.line() == "< [binary 3 bytes] 0102ff"
    assert client.line() == "< /join is sent as it is"
    assert client.line("err") == "error: unknown command /join (chat commands need --chat); /raw TEXT sends TEXT as is"
    client.eof()
    assert client.rest("err") == [CLOSED_1000]
    assert client.rest("out") == []
    assert client.wait() == 0
    assert "route=echo" in log_line(server, rf"disconnect client={who} .* code=1000 ")


def test_token_from_env_and_as_subprotocol(server: Server, spawn: Any) -> None:
    who = unique("env")
    client = spawn(f"{server.ws_url}/ws/echo", "--subprotocol", env=client_env(make_token(who))).connected()
    client.type("/quit")
    assert client.rest("err") == [CLOSED_1000]
    assert client.wait() == 0
    log_line(server, rf"connect client={who} .* token_from=subprotocol")
    log_line(server, rf"disconnect client={who} .* code=1000 ")


def test_chat_helpers_reach_other_clients(server: Server, spawn: Any) -> None:
    me, other = unique("carol"), unique("dave")
    peer = chat_client(server, other)
    client = spawn(f"{server.ws_url}/ws/chat", "--token", make_token(me)).connected()
    welcome = client.json()
    assert (welcome["type"], welcome["client_id"]) == ("welcome", me)

    client.type("/join lobby")
    assert client.json() == {"type": "joined", "room": "lobby", "members": [me], "offset": 0, "epoch": ""}
    peer.send(json.dumps({"type": "join", "room": "lobby"}))
    joined = recv_json(peer)
    assert (joined["type"], joined["room"], sorted(joined["members"])) == ("joined", "lobby", sorted([me, other]))
    assert client.json() == {"type": "presence", "room": "lobby", "event": "join", "client_id": other}

    client.type("/room lobby hi all")
    msg = recv_json(peer)
    assert {k: msg[k] for k in ("type", "room", "from", "data")} == {
        "type": "room",
        "room": "lobby",
        "from": me,
        "data": "hi all",
    }
    assert client.json()["data"] == "hi all"  # room messages reach the sender too

    client.type(f"/direct {other} psst, just you")
    msg = recv_until(peer, lambda m: m["type"] == "direct")
    assert (msg["from"], msg["to"], msg["data"]) == (me, other, "psst, just you")

    client.type("a plain line is a broadcast")
    msg = recv_until(peer, lambda m: m["type"] == "broadcast")
    assert (msg["from"], msg["data"]) == (me, "a plain line is a broadcast")

    peer.send(json.dumps({"type": "direct", "to": me, "data": {"n": 1}}))
    msg = client.json()
    while msg["type"] == "broadcast":  # our own broadcast comes back to us first
        msg = client.json()
    assert (msg["type"], msg["from"], msg["data"]) == ("direct", other, {"n": 1})

    client.type("/leave lobby")
    assert recv_until(peer, lambda m: m["type"] == "presence") == {
        "type": "presence",
        "room": "lobby",
        "event": "leave",
        "client_id": me,
    }

    client.type(f"/direct {unique('nobody')} hello?", "/direct", "/frobnicate")
    msg = client.json()
    assert (msg["type"], msg["code"]) == ("error", "not_connected")
    assert client.line("err") == "error: usage: /direct ID TEXT"
    assert client.line("err") == "error: unknown command /frobnicate; see --help"
    client.eof()
    assert client.rest("err") == [CLOSED_1000]
    assert client.wait() == 0
    peer.close()


def test_sigint_closes_with_1000_and_exits_0(server: Server, spawn: Any) -> None:
    who = unique("sigint")
    client = spawn(f"{server.ws_url}/ws/echo", "--token", make_token(who)).connected()
    client.type("still here")
    assert client.line() == "< still here"  # the main thread now waits on stdin
    client.proc.send_signal(signal.SIGINT)
    assert client.rest("err") == [CLOSED_1000]
    assert client.wait() == 0
    log_line(server, rf"disconnect client={who} .* code=1000 ")


def test_ctrl_c_on_a_terminal_closes_with_1000(server: Server) -> None:
    """Ctrl+C typed on a real (pseudo-)terminal: the line discipline sends SIGINT to the client."""
    who = unique("tty")
    master, slave = pty.openpty()
    # make the pty the client's controlling terminal, as a shell would
    become_tty = (
        "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "os.execv(sys.executable, [sys.executable, '-m', 'wsapp.client', *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", become_tty, f"{server.ws_url}/ws/echo", "--token", make_token(who)],
        cwd=ROOT,
        env=client_env(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""

    def expect(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + TIMEOUT
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([master], [], [], left)[0], f"no {text!r} in {seen!r}"
            try:
                seen += os.read(master, 4096)
            except OSError:  # EIO: the client has exited and closed the terminal
                raise AssertionError(f"no {text!r} in {seen!r}") from None

    try:
        expect("* connected to ")
        os.write(master, b"typed on a tty\r")
        expect("< typed on a tty")
        os.write(master, b"\x03")  # Ctrl+C
        expect(CLOSED_1000)
        assert proc.wait(TIMEOUT) == 0
        assert b"Traceback" not in seen
        log_line(server, rf"disconnect client={who} .* code=1000 ")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        os.close(master)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--token", make_token("mallory", secret="not-the-server-secret-0123456789-abcdef")],
            "error: handshake refused: HTTP 401 invalid_token: the token's signature does not verify",
        ),
        ([], "error: handshake refused: HTTP 401 missing_token: "),
        (
            ["--token", make_token("web"), "--origin", "https://evil.example"],
            "error: handshake refused: HTTP 403 origin_not_allowed: ",
        ),
        (["--token", make_token("late", ttl=-3600)], "error: handshake refused: HTTP 401 token_expired"),
    ],
)
def test_refused_handshake_prints_status_and_error_code(server: Server, args: list[str], expected: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wsapp.client", f"{server.ws_url}/ws/chat", *args],
        cwd=ROOT,
        env=client_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 3
    assert out.stdout == ""
    assert out.stderr.startswith(expected), out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_no_server_exits_1() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws/echo"
    out = subprocess.run(
        [sys.executable, "-m", "wsapp.client", url, "--token", make_token()],
        cwd=ROOT,
        env=client_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: cannot connect to {url}: "), out.stderr


def test_server_close_prints_code_and_reason_and_exits_1(server: Server, spawn: Any) -> None:
    """Binary on chat: the server closes 1003; the client exits by itself, stdin still open."""
    who = unique("bin")
    client = spawn(f"{server.ws_url}/ws/chat", "--token", make_token(who)).connected()
    assert client.json()["type"] == "welcome"
    client.type("/binary 00ff")
    assert client.rest("err") == ["* closed by server: code 1003, reason 'chat takes JSON text frames, not binary'"]
    assert client.rest("out") == []
    assert client.wait() == 1
    log_line(server, rf"disconnect client={who} .* code=1003 ")


def test_message_too_big_closes_1009(server: Server, spawn: Any) -> None:
    client = spawn(f"{server.ws_url}/ws/echo", "--token", make_token(unique("big"))).connected()
    client.type("x" * 65537)
    assert client.rest("err") == ["* closed by server: code 1009, reason 'message too big'"]
    assert client.wait() == 1


class FakeServer:
    """A bare one-connection WebSocket server, for what wsapp cannot be made to do on cue."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/ws/echo"
        self.conn: socket.socket | None = None

    def accept(self) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(TIMEOUT)
        request = b""
        while b"\r\n\r\n" not in request:
            request += self.conn.recv(4096)
        key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
        assert key is not None
        accept = base64.b64encode(hashlib.sha1(key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")  # fmt: skip

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        assert self.conn is not None and len(payload) < 126
        self.conn.sendall(bytes([0x80 * fin | opcode, len(payload)]) + payload)

    def recv(self) -> tuple[int, bytes]:
        """One frame from the client (always masked): (opcode, payload)."""
        assert self.conn is not None
        head = self._exactly(2)
        assert head[1] & 0x80, "client frames must be masked"
        length = head[1] & 0x7F
        assert length < 126
        mask, data = self._exactly(4), self._exactly(length)
        return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def _exactly(self, n: int) -> bytes:
        assert self.conn is not None
        buf = b""
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            assert chunk, "the client closed the connection"
            buf += chunk
        return buf

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def fake() -> Any:
    srv = FakeServer()
    yield srv
    srv.close()


def test_pings_fragments_and_a_server_close_1000(fake: FakeServer, spawn: Any) -> None:
    client = spawn(fake.url, "--token", make_token())
    fake.accept()
    client.connected()
    fake.send(0x9, b"are you there")
    assert fake.recv() == (0xA, b"are you there")  # pong, same payload
    fake.send(0x1, b"frag", fin=False)
    fake.send(0x0, b"mented")
    fake.send(0x2, b"")
    assert client.line() == "< fragmented"
    assert client.line() == "< [binary 0 bytes]"
    fake.send(0x8, (1000).to_bytes(2, "big") + b"bye")
    assert fake.recv() == (0x8, (1000).to_bytes(2, "big"))  # the close is answered with its code
    assert client.rest("err") == ["* closed by server: code 1000, reason 'bye'"]
    assert client.wait() == 0


def test_connection_lost_without_a_close_frame_exits_1(fake: FakeServer, spawn: Any) -> None:
    client = spawn(fake.url, "--token", make_token())
    fake.accept()
    client.connected()
    assert fake.conn is not None
    fake.conn.close()
    err = client.rest("err")
    assert len(err) == 1 and err[0].startswith("* connection lost (1006): "), err
    assert client.wait() == 1


def test_unanswered_close_gives_up_after_one_second(fake: FakeServer, spawn: Any) -> None:
    client = spawn(fake.url, "--token", make_token())
    fake.accept()
    client.connected()
    client.eof()
    started = time.monotonic()
    assert fake.recv() == (0x8, (1000).to_bytes(2, "big"))  # and the fake never answers
    assert client.rest("err") == ["* no close frame from the server within 1 s"]
    assert client.wait() == 0
    assert time.monotonic() - started > 0.8  # it waited (load can only make it later: no upper bound)


def test_state_file_resumes_rooms_and_missed_messages(server: Server, spawn: Any, tmp_path: Any) -> None:
    """--state FILE: the client keeps its rooms and positions; run again after being away, it
    resumes with ?resume=1 and gets what it missed, in order, before anything new."""
    me, other = unique("erin"), unique("frank")
    state = str(tmp_path / "state.json")
    peer = chat_client(server, other)
    peer.send(json.dumps({"type": "join", "room": "den", "id": "j"}))
    recv_until(peer, lambda m: m.get("id") == "j")
    first = spawn(f"{server.ws_url}/ws/chat", "--token", make_token(me), "--state", state).connected()
    assert first.json()["type"] == "welcome"
    first.type("/join den")
    assert first.json()["type"] == "joined"
    peer.send(json.dumps({"type": "room", "room": "den", "data": "before", "id": "b"}))
    assert first.json()["data"] == "before"
    recv_until(peer, lambda m: m.get("id") == "b")
    first.eof()
    assert first.wait() == 0
    assert json.loads(open(state).read())["rooms"] == ["den"]  # noqa: SIM115 - read whole
    # while it is away: a room message and a direct message (kept for it: seen a moment ago)
    peer.send(json.dumps({"type": "room", "room": "den", "data": "missed", "id": "m"}))
    recv_until(peer, lambda m: m.get("id") == "m")
    peer.send(json.dumps({"type": "direct", "to": me, "data": "psst", "id": "d"}))
    assert recv_until(peer, lambda m: m.get("id") == "d") == {"type": "ack", "id": "d", "delivered": 0, "stored": True}

    again = spawn(f"{server.ws_url}/ws/chat", "--token", make_token(me), "--state", state).connected()
    assert again.line("err") == f"* resuming from {state}"
    assert again.json()["type"] == "welcome"
    got = [again.json() for _ in range(3)]
    assert [(m["type"], m.get("data")) for m in got] == [("direct", "psst"), ("room", "missed"), ("resumed", None)]
    assert got[2]["rooms"]["den"]["recovered"] is True
    assert again.line("err") == "* recovered 2 messages"
    peer.send(json.dumps({"type": "room", "room": "den", "data": "live"}))  # the room was joined again
    assert again.json()["data"] == "live"
    again.eof()
    assert again.wait() == 0
    peer.close()


def test_state_file_from_another_epoch_says_what_could_not_be_recovered(
    server: Server, spawn: Any, tmp_path: Any
) -> None:
    me = unique("gina")
    state = tmp_path / "state.json"
    # positions from a history this server never had (a restarted worker): a new epoch
    state.write_text(json.dumps({"positions": {"room:den": {"offset": 7, "epoch": "gone"}}, "rooms": ["den"]}))
    client = spawn(f"{server.ws_url}/ws/chat", "--token", make_token(me), "--state", str(state)).connected()
    assert client.line("err") == f"* resuming from {state}"
    assert client.json()["type"] == "welcome"
    resumed = client.json()
    assert resumed["type"] == "resumed" and resumed["rooms"]["den"]["recovered"] is False
    assert client.line("err") == "* recovered 0 messages"
    assert client.line("err") == "* could not recover #den: reload"
    client.eof()
    assert client.wait() == 0
    saved = json.loads(state.read_text())
    assert saved["rooms"] == ["den"] and saved["positions"]["room:den"]["epoch"] != "gone"  # the server's own now
