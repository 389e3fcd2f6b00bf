"""Connection life against a real gunicorn: heartbeats, token expiry, limits, rate limits, compression."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib

import websocket

from helpers import (
    Reader,
    Server,
    chat_client,
    http,
    make_token,
    raw_handshake,
    read_close,
    recv_json,
    recv_until,
    ws_connect,
)

ADMIN = make_token("ops", admin=True)


def masked(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False, mask: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    head = (
        bytes((first, bit | n))
        if n < 126
        else (struct.pack("!BBH", first, bit | 126, n) if n < 65536 else struct.pack("!BBQ", first, bit | 127, n))
    )
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frames(sock: socket.socket, rest: bytes = b"", timeout: float = 5) -> list[tuple[int, bytes]]:
    """Read server frames until the close frame or EOF."""
    sock.settimeout(timeout)
    buf, out = rest, []
    while True:
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            out.append((buf[0] & 0x0F, buf[off : off + n]))
            buf = buf[off + n :]
            if out[-1][0] == 8:
                return out
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        buf += chunk


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for op, data in frames:
        if op == 8:
            return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
    return None


def clients(srv: Server) -> dict[str, int]:
    return {c["client_id"]: c["connections"] for c in http(srv.url, "GET", "/api/clients", token=ADMIN).body["clients"]}


def test_silent_client_is_closed_after_ping_timeout_and_leaves_registry_and_rooms(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_PING_INTERVAL="0.3", WSAPP_PING_TIMEOUT="1.5")
    watcher = Reader(chat_client(srv, "watcher"))
    watcher.send(type="join", room="hb")
    watcher.next()
    # a raw client that keeps TCP open but never answers pings
    status, _, rest, silent = raw_handshake(srv.port, "/ws/chat", {"Authorization": f"Bearer {make_token('silent')}"})
    assert status == 101
    silent.sendall(masked(1, b'{"type":"join","room":"hb"}'))
    assert watcher.next(lambda m: m["type"] == "presence")["event"] == "join"
    frames = read_frames(silent, rest, timeout=5)
    assert (9, b"") in frames  # it was pinged
    assert watcher.next(lambda m: m["type"] == "presence", timeout=15) == {
        "type": "presence",
        "room": "hb",
        "event": "leave",
        "client_id": "silent",
    }
    assert "silent" not in clients(srv)
    assert "disconnect client=silent" in srv.log()
    # the watcher answers pings (its reader thread replies at once) and outlives two more timeouts
    time.sleep(3.5)  # time passing is the point here, not a synchronisation
    watcher.send(type="broadcast", data="alive", id=1)
    assert watcher.next(lambda m: m["type"] == "ack")["delivered"] == 1
    silent.close(), watcher.ws.close()


def test_expired_token_closes_4401(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_JWT_LEEWAY="0")
    ws = ws_connect(srv, "/ws/chat", make_token("short-lived", ttl=5))
    assert recv_json(ws)["type"] == "welcome"
    assert read_close(ws, timeout=15) == (4401, "token expired")


def test_rate_limit_sends_errors_then_closes_1008(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0.01", WSAPP_RATE_BURST="5")  # no refill during the test
    ws = chat_client(srv, "spammer")
    other = chat_client(srv, "calm")
    for i in range(40):
        try:
            ws.send(json.dumps({"type": "leave", "room": "x", "id": i}))
        except (BrokenPipeError, ConnectionResetError, websocket.WebSocketConnectionClosedException):
            break
    seen, code = [], None
    ws.settimeout(5)
    while code is None:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0]
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            seen.append(json.loads(data))
    assert [m["id"] for m in seen if m["type"] == "ack"] == [0, 1, 2, 3, 4]  # the burst passed
    # then errors, each answering its frame's id, then the close
    assert [m["id"] for m in seen if m.get("code") == "rate_limited"] == [5, 6, 7, 8, 9]
    assert code == 1008
    other.send(json.dumps({"type": "broadcast", "data": "unaffected", "id": 1}))
    assert recv_until(other, lambda m: m["type"] == "ack")["delivered"] == 1
    other.close()


def test_unmasked_frame_is_a_protocol_error_1002(server: Server) -> None:
    status, _, rest, sock = raw_handshake(server.port, "/ws/echo", {"Authorization": f"Bearer {make_token()}"})
    assert status == 101
    sock.sendall(masked(1, b"hello", mask=False))
    assert close_code(read_frames(sock, rest)) == 1002
    sock.close()


def test_reserved_opcode_is_1002_and_fragment_rules(server: Server) -> None:
    for bad in (masked(0x3, b"x"), masked(0, b"orphan continuation"), masked(9, b"x" * 126)):
        status, _, rest, sock = raw_handshake(server.port, "/ws/echo", {"Authorization": f"Bearer {make_token()}"})
        sock.sendall(bad)
        assert close_code(read_frames(sock, rest)) == 1002
        sock.close()


def test_compression_off_by_default_and_negotiated_when_on(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_COMPRESSION="1", WSAPP_MAX_MESSAGE_BYTES="10000")
    hdrs = {
        "Authorization": f"Bearer {make_token()}",
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
    }
    status, resp, rest, sock = raw_handshake(srv.port, "/ws/echo", hdrs)
    assert status == 101 and resp["sec-websocket-extensions"].startswith("permessage-deflate")
    body = b"compressible " * 500  # 6500 bytes, under the limit
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    sock.sendall(masked(2, (c.compress(body) + c.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv1=True))
    sock.settimeout(5)
    buf = rest
    while len(buf) < 4:
        buf += sock.recv(65536)
    # the echo may come back compressed or not; read one frame and inflate if RSV1
    first, n = buf[0], buf[1] & 0x7F
    off = 2
    if n == 126:
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    while len(buf) < off + n:
        buf += sock.recv(65536)
    payload = buf[off : off + n]
    if first & 0x40:
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    assert payload == body
    # a small compressed frame that inflates past the limit: 1009
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    bomb = (c.compress(b"a" * 50000) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(bomb) < 1000
    sock.sendall(masked(2, bomb, rsv1=True))
    assert close_code(read_frames(sock, buf[off + n :])) == 1009
    sock.close()


def test_a_flood_does_not_grow_server_memory(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0")
    worker = _worker_pid(srv)
    ws = chat_client(srv, "flooder")
    ws.send(json.dumps({"type": "leave", "room": "warmup", "pad": "p" * 60000}))
    before = _rss_kib(worker)
    frame = json.dumps({"type": "leave", "room": "x", "pad": "p" * 60000})  # answered with nothing
    deadline = time.monotonic() + 20
    sent = 0
    while sent < 2000 and time.monotonic() < deadline:  # ~120 MB, as fast as TCP takes it
        ws.send(frame)
        sent += 1
    ws.send(json.dumps({"type": "leave", "room": "x", "id": "last"}))
    assert recv_until(ws, lambda m: m["type"] == "ack", timeout=60)["id"] == "last"
    grown = _rss_kib(worker) - before
    assert sent >= 500
    assert grown < 40 * 1024, f"worker grew {grown} KiB while receiving {sent * 60} KB"
    ws.close()


def _worker_pid(srv: Server) -> int:
    import re

    match = re.search(r"Booting worker with pid: (\d+)", srv.log())
    assert match
    return int(match.group(1))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
