"""Operations against a real gunicorn: graceful shutdown, metrics, logs."""

from __future__ import annotations

import json
import re
import signal
import socket
import time

from helpers import Reader, Server, chat_client, http, make_token, raw_handshake, read_close, unavailable, ws_connect


def test_sigterm_closes_clients_1001_refuses_new_handshakes_and_exits_in_time(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_SHUTDOWN_TIMEOUT="4")
    a, b = chat_client(srv, "sd-a"), ws_connect(srv, "/ws/echo", make_token("sd-b"))
    # a client that will never answer the close frame
    status, _, _, stuck = raw_handshake(srv.port, "/ws/chat", {"Authorization": f"Bearer {make_token('stuck')}"})
    assert status == 101
    # a keep-alive HTTP connection opened before the signal
    keep = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    keep.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
    first = b""
    while b'{"status":"ok"}' not in first:
        first += keep.recv(4096)
    srv.signal(signal.SIGTERM)
    assert read_close(a) == (1001, "server shutting down")
    assert read_close(b)[0] == 1001
    # readiness fails at once, so a load balancer stops sending new clients here
    keep.sendall(f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
    ready = ""
    while not ready.rstrip().endswith("}"):  # the whole JSON body
        chunk = keep.recv(4096).decode()
        assert chunk, ready
        ready += chunk
    assert ready.startswith("HTTP/1.1 503") and "shutting down" in ready
    # a handshake arriving now (on the open connection) is refused 503 shutting_down
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    keep.sendall(
        (
            f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {make_token('late')}\r\n\r\n"
        ).encode()
    )
    answer = ""
    while "shutting_down" not in answer:
        chunk = keep.recv(4096).decode()
        assert chunk, answer
        answer += chunk
    assert answer.startswith("HTTP/1.1 503") and '"error": "shutting_down"' in answer
    keep.close()
    assert srv.proc is not None
    code = srv.proc.wait(timeout=10)
    assert code == 0
    # in time: the worker ended by itself (gunicorn's worker logs "Worker exiting" only when its run
    # returns; one killed at the graceful timeout never does), not asserted by the clock
    assert "Worker exiting (pid:" in srv.log()
    assert "graceful timeout" not in srv.log().lower()  # we finished before gunicorn had to kill
    assert "disconnect client=stuck" in srv.log()
    stuck.close()


def test_graceful_timeout_follows_the_setting() -> None:
    import os
    import subprocess
    import sys

    from helpers import ROOT, SECRET

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy; c = runpy.run_path('gunicorn.conf.py'); "
            "print(c['graceful_timeout'], c['workers'], c['worker_class'], c['bind'])",
        ],
        cwd=ROOT,
        env={**os.environ, "WSAPP_SHUTDOWN_TIMEOUT": "7", "WSAPP_PORT": "9123", "WSAPP_JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["9", "1", "gevent", "127.0.0.1:9123"]


def test_bad_setting_stops_startup_naming_the_variable() -> None:
    srv = Server(env={"WSAPP_MAX_MESSAGE_BYTES": "lots", "WSAPP_WORKERS": "3"})
    try:
        srv.start(timeout=10)
        raise AssertionError("started with bad settings")
    except RuntimeError as err:
        text = str(err)
    assert "WSAPP_MAX_MESSAGE_BYTES='lots'" in text and "WSAPP_WORKERS" in text and "WSAPP_REDIS_URL" in text


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name{labels}` in Prometheus text (labels in any order)."""
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


def test_metrics_count_connections_messages_refusals_and_evictions(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_RATE_LIMIT="0", WSAPP_PING_INTERVAL="0.2", WSAPP_PING_TIMEOUT="5")
    a = Reader(chat_client(srv, "m-a"))
    b = chat_client(srv, "m-b")
    a.send(type="broadcast", data="x" * 100, id=1)
    a.next(lambda m: m["type"] == "ack")
    http(srv.url, "GET", "/api/clients", token="bad")  # not a handshake refusal
    for _ in range(2):
        status, _, _, sock = raw_handshake(srv.port, "/ws/chat", {})
        sock.close()
        assert status == 401
    b.send_binary(b"\x00")  # closed 1003
    read_close(b)
    deadline = time.monotonic() + 15
    while True:  # a heartbeat tick flushes the traffic counters; b's session ends after its close
        text = http(srv.url, "GET", "/metrics").body
        settled = _metric(text, "wsapp_received_bytes_total") > 100 and (
            _metric(text, "wsapp_connections_closed_total", route="chat", code="1003") == 1
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _metric(text, "wsapp_connections_open", route="chat") == 1
    assert _metric(text, "wsapp_connections_opened_total", route="chat") == 2
    assert _metric(text, "wsapp_connections_closed_total", route="chat", code="1003") == 1
    assert _metric(text, "wsapp_handshakes_refused_total", error="missing_token") == 2
    assert _metric(text, "wsapp_messages_received_total") >= 2
    assert _metric(text, "wsapp_received_bytes_total") > 100
    assert _metric(text, "wsapp_messages_sent_total") >= 4  # welcomes, broadcast x2, ack
    assert "wsapp_slow_consumer_evictions_total" in text and "wsapp_send_queue_depth" in text
    a.ws.close()


def test_metrics_refused_outside_the_allowed_networks(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_METRICS_ALLOW="10.9.9.0/24")
    r = http(srv.url, "GET", "/metrics")
    assert (r.status, r.body["error"]) == (403, "forbidden")
    # a forwarded address is believed only from a trusted proxy (127.0.0.1 is one by default)
    assert http(srv.url, "GET", "/metrics", headers={"X-Forwarded-For": "10.9.9.7"}).status == 200


def test_connect_and_disconnect_log_lines_and_forwarded_address(server: Server) -> None:
    ws = ws_connect(server, "/ws/chat", make_token("logme"), header=["X-Forwarded-For: 203.0.113.9, 127.0.0.1"])
    ws.recv()
    ws.close()
    deadline = time.monotonic() + 15
    while "disconnect client=logme" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in server.log().splitlines() if "client=logme" in line]
    assert re.search(r"connect client=logme conn=\S+ route=chat addr=203\.0\.113\.9", lines[0])
    assert re.search(
        r"disconnect client=logme conn=\S+ route=chat addr=203\.0\.113\.9 duration=[0-9.]+s code=1000", lines[1]
    )


def _wait_for_log(srv: Server, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := srv.log()):
        assert time.monotonic() < deadline, f"{needle!r} never logged:\n{text}"
        time.sleep(0.05)
    return text


def test_ctrl_c_drains_like_sigterm(start_server) -> None:  # type: ignore[no-untyped-def]
    import os

    srv: Server = start_server(WSAPP_SHUTDOWN_TIMEOUT="4")
    a = chat_client(srv, "int-a")
    b = ws_connect(srv, "/ws/echo", make_token("int-b"))
    assert srv.proc is not None
    _wait_for_log(srv, "connect client=int-b")
    # Ctrl+C in a terminal: SIGINT to the whole foreground process group (master and worker)
    os.killpg(srv.proc.pid, signal.SIGINT)
    assert read_close(a) == (1001, "server shutting down")
    assert read_close(b)[0] == 1001
    assert srv.proc.wait(timeout=10) == 0
    log = srv.log()
    assert "disconnect client=int-a" in log and "disconnect client=int-b" in log
    assert log.count("shutting down: closing") == 1  # SIGINT, then the master's SIGTERM: one drain
    assert "Quick shutdown" not in log and "graceful timeout" not in log.lower()
    a.close()
    b.close()


def test_sigint_to_the_master_alone_drains_too(start_server) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server(WSAPP_SHUTDOWN_TIMEOUT="4")
    a = chat_client(srv, "int-c")
    srv.signal(signal.SIGINT)  # e.g. `kill -INT <master>`
    assert read_close(a) == (1001, "server shutting down")
    assert srv.proc is not None and srv.proc.wait(timeout=10) == 0
    assert "disconnect client=int-c" in srv.log()
    a.close()


def _worker_pid(srv: Server) -> int:
    match = re.search(r"Booting worker with pid: (\d+)", _wait_for_log(srv, "Booting worker"))
    assert match
    return int(match.group(1))


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no limit line")


def test_descriptor_soft_limit_is_raised_to_the_hard_limit_and_logged_once() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 64
    if hard != resource.RLIM_INFINITY and hard <= low + 100:
        unavailable(f"the hard descriptor limit ({hard}) leaves no room to test")
    # gunicorn starts with the low soft limit, as from systemd (set in the child only: this
    # process's own descriptors, however many earlier tests left, do not count)
    srv = Server(env={"WSAPP_RATE_LIMIT": "0", "WSAPP_MAX_CONNECTIONS_PER_CLIENT": "200"}, nofile_soft=low)
    srv.start()
    held = []
    try:
        assert srv.proc is not None and _soft_nofile(srv.proc.pid) == hard
        assert _soft_nofile(_worker_pid(srv)) == hard
        log = srv.log()
        assert log.count(f"descriptor limit (RLIMIT_NOFILE) raised from {low} to {hard}") == 1
        assert log.count("RLIMIT_NOFILE") == 1
        # more idle WebSockets than the old soft limit had descriptors, and one more still connects
        held = [ws_connect(srv, "/ws/echo", make_token("fd")) for _ in range(low + 16)]
        late = ws_connect(srv, "/ws/echo", make_token("late"))
        late.send("still served")
        assert late.recv() == "still served"
        late.close()
    finally:
        for ws in held:
            ws.close()
        srv.stop()


def test_a_draining_worker_publishes_nothing_through_the_http_api(start_server) -> None:  # type: ignore[no-untyped-def]
    """Once SIGTERM is in, a send or broadcast could reach no one (connections closing) and
    be kept nowhere (the backplane stops): 503 shutting_down, to publish through another."""
    srv: Server = start_server(WSAPP_SHUTDOWN_TIMEOUT="4")
    status, _, _, stuck = raw_handshake(srv.port, "/ws/chat", {"Authorization": f"Bearer {make_token('stuck')}"})
    assert status == 101  # never answers the close: the drain lasts its budget
    keep = socket.create_connection(("127.0.0.1", srv.port), timeout=5)

    def ask(request: str) -> str:
        keep.sendall(request.encode())
        answer = ""
        while not answer.rstrip().endswith("}"):
            chunk = keep.recv(4096).decode()
            assert chunk, answer
            answer += chunk
        return answer

    host = f"Host: 127.0.0.1:{srv.port}\r\n"
    assert ask(f"GET /healthz HTTP/1.1\r\n{host}\r\n").startswith("HTTP/1.1 200")
    srv.signal(signal.SIGTERM)
    while not ask(f"GET /readyz HTTP/1.1\r\n{host}\r\n").startswith("HTTP/1.1 503"):
        pass  # the drain has begun
    body = json.dumps({"to": "stuck", "data": "late"})
    answer = ask(
        f"POST /api/send HTTP/1.1\r\n{host}Authorization: Bearer {make_token('ops', admin=True)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    assert answer.startswith("HTTP/1.1 503") and '"error": "shutting_down"' in answer, answer
    keep.close()
    stuck.close()
