"""Many senders, one receiver; and a client that never reads. Real gunicorn, real sockets."""

from __future__ import annotations

import hashlib
import json
import threading
import time

from helpers import Server, chat_client, delivery, http, make_token, raw_handshake, recv_json, recv_until

SENDERS_WS = 12
SENDERS_HTTP = 12
PER_SENDER = 15


def payload(sender: str, seq: int) -> dict[str, object]:
    size = 1000 + (seq * 7919 + len(sender) * 104729) % 59000  # up to ~60 KB, varied
    body = (hashlib.sha256(f"{sender}/{seq}".encode()).hexdigest() * (size // 64 + 1))[:size]
    return {"sender": sender, "seq": seq, "body": body}


def test_many_concurrent_senders_large_messages_arrive_whole_once_in_order(start_server) -> None:  # type: ignore[no-untyped-def]
    # the one receiver reads in Python: its queue may hold every message at once (~40 MB)
    srv: Server = start_server(WSAPP_RATE_LIMIT="0", WSAPP_SEND_QUEUE="1024", WSAPP_SEND_QUEUE_BYTES="67108864")
    receiver = chat_client(srv, "sink")
    errors: list[BaseException] = []

    def ws_sender(i: int) -> None:
        try:
            ws = chat_client(srv, f"ws-{i}")
            for seq in range(PER_SENDER):
                ws.send(json.dumps({"type": "direct", "to": "sink", "data": payload(f"ws-{i}", seq)}))
            ws.close()  # the server handles its frames in order, before the close
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def http_sender(i: int) -> None:
        try:
            tok = make_token(f"http-{i}")
            for seq in range(PER_SENDER):
                r = http(srv.url, "POST", "/api/send", {"to": "sink", "data": payload(f"http-{i}", seq)}, tok)
                assert r.status == 200, r.body
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ws_sender, args=(i,)) for i in range(SENDERS_WS)]
    threads += [threading.Thread(target=http_sender, args=(i,)) for i in range(SENDERS_HTTP)]
    for t in threads:
        t.start()
    expected = (SENDERS_WS + SENDERS_HTTP) * PER_SENDER
    seen: dict[str, list[int]] = {}
    for _ in range(expected):
        msg = recv_json(receiver, timeout=30)
        assert msg["type"] == "direct", msg
        data = msg["data"]
        assert data == payload(data["sender"], data["seq"])  # whole and uncorrupted
        assert msg["from"] == data["sender"]
        seen.setdefault(data["sender"], []).append(data["seq"])
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(seen) == SENDERS_WS + SENDERS_HTTP
    for seqs in seen.values():
        assert seqs == list(range(PER_SENDER))  # each exactly once, in that sender's order
    receiver.close()


def test_a_client_that_never_reads_is_closed_and_others_keep_receiving(start_server) -> None:  # type: ignore[no-untyped-def]
    # the evicted client is given WSAPP_PING_TIMEOUT to read its close frame: it never does
    srv: Server = start_server(
        WSAPP_RATE_LIMIT="0", WSAPP_SEND_QUEUE="32", WSAPP_PING_TIMEOUT="1", WSAPP_PING_INTERVAL="600"
    )
    # the stalled client: a raw socket with a tiny receive window that never reads
    status, _, _, stalled = raw_handshake(
        srv.port, "/ws/chat", {"Authorization": f"Bearer {make_token('stalled')}"}, rcvbuf=4096
    )
    assert status == 101
    others = [chat_client(srv, f"reader-{i}") for i in range(50)]
    admin, sender = make_token("ops", admin=True), make_token("flooder")
    flood = "z" * 60000
    evicted_after = None
    for n in range(400):  # ~24 MB at most: more than the kernel buffers of one connection hold
        r = http(srv.url, "POST", "/api/send", {"to": "stalled", "data": flood}, sender)
        if r.status == 202:  # queue full: it was closed and takes no more (kept for its resume)
            assert delivery(r.body) == {"delivered": 0, "stored": True}
            evicted_after = n
            break
        assert r.status == 200
        if n % 20 == 0:
            r = http(srv.url, "POST", "/api/broadcast", {"data": {"n": n}}, admin)
            for ws in others:  # every reader gets it promptly: nobody waits on the stalled one
                assert recv_until(ws, lambda m: m["type"] == "broadcast", timeout=5)["data"] == {"n": n}
    assert evicted_after is not None
    r = http(srv.url, "POST", "/api/broadcast", {"data": "after"}, admin)
    for ws in others:
        assert recv_until(ws, lambda m: m["type"] == "broadcast", timeout=5)["data"] == "after"
    # the stalled one was evicted as a slow consumer; everyone else got all 60 in order
    log_deadline = time.monotonic() + 10
    while "client=stalled" not in _disconnect_lines(srv) and time.monotonic() < log_deadline:
        time.sleep(0.1)
    line = _disconnect_lines(srv)
    assert "client=stalled" in line and "code=1008" in line and "slow consumer" in line
    listed = {c["client_id"] for c in http(srv.url, "GET", "/api/clients", token=admin).body["clients"]}
    assert "stalled" not in listed and "reader-0" in listed
    for ws in others:
        ws.close()
    stalled.close()


def _disconnect_lines(srv: Server) -> str:
    return "\n".join(line for line in srv.log().splitlines() if "disconnect" in line and "client=stalled" in line)


def _masked_text(text: str) -> bytes:
    payload, mask = text.encode(), b"\x0a\x0b\x0c\x0d"
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_an_evicted_client_leaves_its_rooms_at_once_and_still_gets_its_1008(start_server) -> None:  # type: ignore[no-untyped-def]
    # the evicted client gets WSAPP_PING_TIMEOUT (30 s here) to read its close frame; its
    # rooms hear `leave` at the eviction, not when that time is up
    srv: Server = start_server(
        WSAPP_RATE_LIMIT="0", WSAPP_SEND_QUEUE="8", WSAPP_PING_TIMEOUT="30", WSAPP_PING_INTERVAL="60"
    )
    watcher = chat_client(srv, "watcher")
    watcher.send(json.dumps({"type": "join", "room": "evict-room", "id": "w"}))
    recv_until(watcher, lambda m: m["type"] == "ack")
    status, _, _, stalled = raw_handshake(
        srv.port, "/ws/chat", {"Authorization": f"Bearer {make_token('stalled')}"}, rcvbuf=4096
    )
    assert status == 101
    stalled.sendall(_masked_text('{"type":"join","room":"evict-room"}'))
    assert recv_until(watcher, lambda m: m["type"] == "presence")["client_id"] == "stalled"

    sender, flood = make_token("flooder"), "z" * 60000
    for _ in range(400):
        r = http(srv.url, "POST", "/api/send", {"to": "stalled", "data": flood}, sender)
        if r.status == 202:  # evicted: out of the registry already (kept for its resume)
            break
        assert r.status == 200
    else:
        raise AssertionError("the stalled client was never evicted")
    left = recv_until(watcher, lambda m: m["type"] == "presence", timeout=10)
    assert left == {"type": "presence", "room": "evict-room", "event": "leave", "client_id": "stalled"}
    listed = {
        c["client_id"] for c in http(srv.url, "GET", "/api/clients", token=make_token("a", admin=True)).body["clients"]
    }
    assert listed == {"watcher"}

    # now it reads again: whole frames, then the 1008 close frame (the socket was not cut)
    stalled.settimeout(10)
    data = b""
    while True:
        chunk = stalled.recv(1 << 20)
        assert chunk, "EOF before the close frame"
        data += chunk
        code = _close_code(data)
        if code is not None:
            break
    assert code == 1008
    stalled.close(), watcher.close()


def _close_code(data: bytes) -> int | None:
    """Walk whole server frames in `data`; the close frame's code once it is complete."""
    pos = 0
    while pos + 2 <= len(data):
        n, head = data[pos + 1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        if pos + head + n > len(data):
            return None
        if data[pos] & 0x0F == 0x8:
            return int.from_bytes(data[pos + head : pos + head + 2], "big")
        pos += head + n
    return None
