"""A terminal WebSocket client for wsapp, like wscat: `python -m wsapp.client URL [--token T]`.

Lines typed on stdin go out as text frames; frames that arrive are printed as they come.
A reader thread owns receiving; the main thread owns stdin; every send (typed lines, pong
replies, close frames) holds one lock. See `--help` for the commands and exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading
from urllib.parse import urlsplit

import websocket
from websocket import ABNF

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
CLOSE_WAIT_S = 1.0  # how long we wait for the server's close frame after sending ours
HEX_SHOWN = 256  # binary frames: bytes shown as hex before "..."
CHAT_USAGE = {"join": "/join ROOM", "leave": "/leave ROOM", "room": "/room ROOM TEXT", "direct": "/direct ID TEXT"}

EPILOG = """\
token: --token, else the WSAPP_TOKEN environment variable (better: a command line is visible
  to other users). It is sent as "Authorization: Bearer <token>"; with --subprotocol it is
  offered as the subprotocol pair "bearer, <token>" instead, the way a browser sends it.

output: frames received are printed on stdout as "< TEXT"; binary ones as
  "< [binary N bytes] HEX". Status lines ("* ...") and errors go to stderr.

commands (any URL):
  /binary HEX        send a binary frame, e.g. /binary 0102ff
  /raw TEXT          send TEXT verbatim (a JSON frame on chat, or a line starting with /)
  /quit              close (as Ctrl+C or Ctrl+D/EOF do: close 1000, wait 1 s for the reply)
chat mode (on by default when the URL path ends in /ws/chat; see --chat/--no-chat):
  TEXT               a plain line is a broadcast: {"type":"broadcast","data":"TEXT"}
  /broadcast TEXT    the same
  /direct ID TEXT    {"type":"direct","to":"ID","data":"TEXT"}
  /join ROOM, /leave ROOM, /room ROOM TEXT
  TEXT goes as a JSON string; send other JSON with /raw, e.g. /raw {"type":"join","room":"r","id":"1"}
outside chat mode a plain line is sent as it is.

wss://: the server's certificate is checked against the system's trust store (or the
  bundle SSL_CERT_FILE names); --cacert FILE trusts the PEM certificate(s) in FILE instead,
  e.g. a private CA or a self-signed certificate (like wscat's --ca); --insecure checks
  nothing (like wscat's --no-check): anyone between you and the server can read and change
  the traffic, so only for a test server.

resume (chat): --state FILE keeps, in FILE, the rooms joined and the position (offset, epoch)
  of every stream received (broadcast, direct, each room), written as frames arrive. Started
  again with the same FILE, the client opens the URL with ?resume=1 and sends a resume frame:
  the server joins the rooms again and replays what was missed, in order; the client says
  "* recovered N messages", or "* could not recover #ROOM: reload" for a stream whose gap
  was older than the server's history.

exit status: 0 we closed (Ctrl+C, EOF, /quit) or the server closed with 1000; 1 cannot connect,
  connection lost, or the server closed with another code; 2 bad arguments; 3 handshake refused
  (the HTTP status and the error code from the JSON body are printed).
"""


def status(msg: str) -> None:
    print(f"* {msg}", file=sys.stderr, flush=True)


def error(msg: str) -> bool:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return True


def format_frame(opcode: int, data: bytes) -> str:
    if opcode == ABNF.OPCODE_TEXT:
        return "< " + data.decode("utf-8", "replace")
    more = "..." if len(data) > HEX_SHOWN else ""
    return f"< [binary {len(data)} bytes] {data[:HEX_SHOWN].hex()}{more}".rstrip()


class ResumeState:
    """The rooms and stream positions a chat client has seen, kept in a JSON file so the
    next run can resume. Owned by the reader thread (the main thread only reads `rooms`
    through `frame()` before the reader starts); written whole to a temporary file and
    renamed, so a client killed mid-write leaves the previous state."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.positions: dict[str, dict[str, object]] = {}  # "broadcast", "direct", "room:NAME"
        self.rooms: set[str] = set()
        self.loaded = False
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            self.positions = dict(saved.get("positions", {}))
            self.rooms = set(saved.get("rooms", []))
            self.loaded = True
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            status(f"ignoring the state in {path}: {exc}")

    def frame(self) -> dict[str, object]:
        """The resume frame: every stream it has a position for, its rooms from the start
        when it has none (a room joined but not heard from)."""
        empty = {"offset": 0, "epoch": ""}
        rooms = {room: self.positions.get("room:" + room, empty) for room in sorted(self.rooms)}
        out: dict[str, object] = {"type": "resume", "rooms": rooms}
        for key in ("broadcast", "direct"):
            if key in self.positions:
                out[key] = self.positions[key]
        return out

    def seen(self, msg: object) -> None:
        """Follow one frame from the server; save when something changed."""
        if not isinstance(msg, dict):
            return
        kind = msg.get("type")
        before = (json.dumps(self.positions, sort_keys=True), sorted(self.rooms))
        if kind == "welcome" and isinstance(msg.get("streams"), dict):
            for key, pos in msg["streams"].items():
                self.positions.setdefault(key, pos)  # a resume's own positions win
        elif kind in ("broadcast", "direct", "room") and "offset" in msg:
            key = "room:" + str(msg.get("room")) if kind == "room" else str(kind)
            self.positions[key] = {"offset": msg["offset"], "epoch": msg.get("epoch", "")}
        elif kind == "joined" and isinstance(msg.get("room"), str):
            self.rooms.add(msg["room"])
            if "offset" in msg:
                self.positions.setdefault("room:" + msg["room"], {"offset": msg["offset"], "epoch": msg["epoch"]})
        elif kind == "resumed":
            self._resumed(msg)
        if (json.dumps(self.positions, sort_keys=True), sorted(self.rooms)) != before:
            self.save()

    def left(self, room: str) -> None:
        self.rooms.discard(room)
        self.positions.pop("room:" + room, None)
        self.save()

    def _resumed(self, msg: dict[str, object]) -> None:
        results: dict[str, object] = {k: msg[k] for k in ("broadcast", "direct") if isinstance(msg.get(k), dict)}
        rooms = msg.get("rooms")
        if isinstance(rooms, dict):
            results.update({"room:" + name: r for name, r in rooms.items()})
        replayed, lost = 0, []
        for key, result in results.items():
            if not isinstance(result, dict):
                continue
            label = "#" + key[5:] if key.startswith("room:") else key
            if "error" in result:
                status(f"could not join {label} again: {result['error']}")
                self.rooms.discard(key[5:])
                continue
            self.positions[key] = {"offset": result.get("offset", 0), "epoch": result.get("epoch", "")}
            if result.get("recovered"):
                replayed += int(str(result.get("replayed", 0)))
            else:
                lost.append(label)
        status(f"recovered {replayed} messages")
        for label in lost:
            status(f"could not recover {label}: reload")

    def save(self) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"positions": self.positions, "rooms": sorted(self.rooms)}, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            status(f"cannot save the state to {self.path}: {exc}")


class Client:
    def __init__(self, ws: websocket.WebSocket, chat: bool, state: ResumeState | None = None) -> None:
        self.ws = ws
        self.chat = chat
        self.state = state
        self.send_lock = threading.Lock()
        self.closing = False  # our close frame went out (or is the reply to theirs): send nothing more
        self.reader_done = threading.Event()
        self.finishing = threading.Event()  # the main thread has left its stdin loop
        self.exit_code = EXIT_OK
        # SIGINT handling: the handler runs on the main thread; it raises only while the
        # main thread waits on stdin, so an interrupted send never leaves half a frame.
        self.interrupted = False
        self.interruptible = False
        self.reader = threading.Thread(target=self._read_loop, name="ws-reader", daemon=True)
        signal.signal(signal.SIGINT, self._on_sigint)

    # ---- main thread --------------------------------------------------------------------

    def run(self) -> int:
        self.reader.start()
        try:
            while not self.interrupted:
                self.interruptible = True
                if self.interrupted:  # a signal between the loop test and here did not raise
                    break
                line = sys.stdin.readline()
                self.interruptible = False
                if not line or not self.handle(line.rstrip("\r\n")):
                    break
        except KeyboardInterrupt:
            pass
        self.interruptible = False
        return self.finish()

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        self.interrupted = True
        if self.interruptible:
            raise KeyboardInterrupt

    def handle(self, line: str) -> bool:
        """Send what `line` asks for; False for /quit or once the connection is gone."""
        cmd, _, rest = line[1:].partition(" ") if line.startswith("/") else ("", "", line)
        arg, _, text = rest.partition(" ")
        if cmd == "quit":
            return False
        if cmd == "binary":
            try:
                return self.send(bytes.fromhex(rest), ABNF.OPCODE_BINARY)
            except ValueError:
                return error("/binary takes hex digits, e.g. /binary 0102ff")
        if cmd == "raw" or (not cmd and not self.chat):
            return self.send(rest)
        if not self.chat:
            return error(f"unknown command /{cmd} (chat commands need --chat); /raw TEXT sends TEXT as is")
        chat: dict[str, tuple[bool, dict[str, str]]] = {  # command: (arguments complete, frame)
            "": (True, {"type": "broadcast", "data": rest}),
            "broadcast": (True, {"type": "broadcast", "data": rest}),
            "join": (bool(arg) and not text, {"type": "join", "room": arg}),
            "leave": (bool(arg) and not text, {"type": "leave", "room": arg}),
            "room": (bool(arg), {"type": "room", "room": arg, "data": text}),
            "direct": (bool(arg), {"type": "direct", "to": arg, "data": text}),
        }
        if cmd not in chat:
            return error(f"unknown command /{cmd}; see --help")
        complete, frame = chat[cmd]
        if complete and cmd == "leave" and self.state is not None:
            self.state.left(arg)
        return self.send(json.dumps(frame)) if complete else error(f"usage: {CHAT_USAGE[cmd]}")

    def send(self, payload: str | bytes, opcode: int = ABNF.OPCODE_TEXT) -> bool:
        """Send one frame under the lock; False once the connection is closing or gone."""
        with self.send_lock:
            if self.closing:
                return False
            if opcode == ABNF.OPCODE_CLOSE:
                self.closing = True
            try:
                self.ws.send(payload, opcode)
            except (websocket.WebSocketException, OSError):
                return False  # the reader reports how the connection ended
        return True

    def finish(self) -> int:
        """Close with 1000 unless the server already closed; wait for its close frame."""
        self.finishing.set()
        if not self.reader_done.is_set():
            self.send((1000).to_bytes(2, "big"), ABNF.OPCODE_CLOSE)  # a no-op if the server's close came first
            if not self.reader_done.wait(CLOSE_WAIT_S):
                status(f"no close frame from the server within {CLOSE_WAIT_S:g} s")
        self.ws.shutdown()  # type: ignore[no-untyped-call]
        return self.exit_code

    # ---- reader thread --------------------------------------------------------------------

    def _read_loop(self) -> None:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # Ctrl+C is the main thread's
        try:
            while True:
                frame = self.ws.recv_frame()  # type: ignore[no-untyped-call]
                if frame.opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT):
                    self.ws.cont_frame.validate(frame)
                    self.ws.cont_frame.add(frame)
                    if self.ws.cont_frame.is_fire(frame):
                        opcode, whole = self.ws.cont_frame.extract(frame)
                        print(format_frame(opcode, whole.data), flush=True)
                        if self.state is not None and opcode == ABNF.OPCODE_TEXT:
                            self._follow(whole.data)
                elif frame.opcode == ABNF.OPCODE_PING:
                    self.send(frame.data, ABNF.OPCODE_PONG)
                elif frame.opcode == ABNF.OPCODE_CLOSE:
                    self._on_close(frame.data)
                    return
        except (websocket.WebSocketException, OSError) as exc:
            if not self.closing:
                status(f"connection lost (1006): {exc or type(exc).__name__}")
                self.exit_code = EXIT_ERROR
        finally:
            self.reader_done.set()
            self._wake_main()

    def _follow(self, data: bytes) -> None:
        assert self.state is not None
        try:
            msg = json.loads(data)
        except ValueError:
            return
        self.state.seen(msg)

    def _on_close(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005  # 1005: no code in the frame
        reason = payload[2:].decode("utf-8", "replace")
        we_closed = self.closing
        if not we_closed:  # echo the server's code (RFC 6455 5.5.1)
            self.send(payload[:2] if code not in (1005, 1006, 1015) else b"", ABNF.OPCODE_CLOSE)
        who = "closed" if we_closed else "closed by server"
        status(f"{who}: code {code}" + (f", reason {reason!r}" if reason else ""))
        if not we_closed and code != 1000:
            self.exit_code = EXIT_ERROR

    def _wake_main(self) -> None:
        """Interrupt the main thread's blocking stdin read: the connection is over."""
        main_ident = threading.main_thread().ident
        if not hasattr(signal, "pthread_kill") or main_ident is None:
            return  # (Windows) the main thread notices at its next line of input
        # again until it is seen: a signal landing just before read() starts does not interrupt it
        while not self.finishing.is_set():
            signal.pthread_kill(main_ident, signal.SIGINT)
            self.finishing.wait(0.2)


def refusal(exc: websocket.WebSocketBadStatusException) -> str:
    """ "HTTP 401 invalid_token: <message>" from wsapp's JSON body, else the status line and body."""
    body = (exc.resp_body or b"").decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(body)
        body = f"{parsed['error']}: {parsed.get('message', '')}".rstrip(": ")
    except (ValueError, TypeError, KeyError):
        body = f"{exc.status_message or ''} {body[:200]}".strip()
    return f"HTTP {exc.status_code} {body}".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wsapp.client",
        description="Talk to a wsapp WebSocket (or any other) from a terminal.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("url", help="ws:// or wss:// URL, e.g. ws://127.0.0.1:8000/ws/chat")
    add("--token", default=os.environ.get("WSAPP_TOKEN"), help="JWT (default: $WSAPP_TOKEN)")
    add("--subprotocol", action="store_true", help='offer the token as subprotocols "bearer, <jwt>"')
    add("--chat", action=argparse.BooleanOptionalAction, help="chat mode (default: on when the path ends in /ws/chat)")
    add("--origin", help="send this Origin header (default: none, as a non-browser client)")
    add("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra handshake header")
    add("--timeout", type=float, default=10.0, help="seconds to connect and handshake (default 10)")
    add("--state", metavar="FILE", help="chat: keep rooms and positions in FILE and resume from it (see below)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--cacert", metavar="FILE", help="wss://: trust the PEM certificate(s) in FILE (a private CA)")
    tls.add_argument("--insecure", action="store_true", help="wss://: do not check the certificate (tests only)")
    return parser


def tls_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, object] | None:
    """websocket-client's `sslopt` for --cacert / --insecure; a usage error where they make no sense."""
    if not (args.cacert or args.insecure):
        return None
    if urlsplit(args.url).scheme != "wss":
        parser.error("--cacert and --insecure apply to wss:// URLs only")
    if args.insecure:
        return {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
    if not os.path.isfile(args.cacert) or not os.access(args.cacert, os.R_OK):
        parser.error(f"--cacert {args.cacert}: no such readable file")
    return {"ca_certs": args.cacert}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sslopt = tls_options(parser, args)
    headers: list[str] = list(args.header)
    subprotocols: list[str] | None = None
    if args.token and args.subprotocol:
        subprotocols = ["bearer", args.token]
    elif args.token:
        headers.append(f"Authorization: Bearer {args.token}")
    state = ResumeState(args.state) if args.state else None
    url = args.url
    if state is not None and state.loaded:  # hold our streams until the resume frame
        url += ("&" if urlsplit(url).query else "?") + "resume=1"
    try:
        ws = websocket.create_connection(
            url, timeout=args.timeout, header=headers, subprotocols=subprotocols,
            origin=args.origin, suppress_origin=args.origin is None, sslopt=sslopt,
        )  # fmt: skip
    except websocket.WebSocketBadStatusException as exc:
        error(f"handshake refused: {refusal(exc)}")
        return EXIT_REFUSED
    except ssl.SSLCertVerificationError as exc:
        error(f"cannot connect to {args.url}: {exc.verify_message or exc}; for a private CA or a "
              "self-signed certificate use --cacert FILE (or --insecure, for tests only)")  # fmt: skip
        return EXIT_ERROR
    except (websocket.WebSocketException, OSError, ValueError) as exc:
        error(f"cannot connect to {args.url}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    ws.settimeout(None)
    chat = args.chat if args.chat is not None else urlsplit(args.url).path.rstrip("/").endswith("/ws/chat")
    client = Client(ws, chat, state)  # installs the SIGINT handler before we say we are ready
    status(f"connected to {args.url}{' (chat mode)' if chat else ''}; Ctrl+C or Ctrl+D to close")
    if state is not None and state.loaded:
        status(f"resuming from {args.state}")
        client.send(json.dumps(state.frame()))
    return client.run()


if __name__ == "__main__":
    sys.exit(main())
