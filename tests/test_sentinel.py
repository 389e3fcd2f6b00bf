"""Redis Sentinel: `WSAPP_REDIS_URL=redis+sentinel://...` follows a failover.

A real primary, a replica and three sentinels on loopback ports (started here); two
gunicorn nodes reach the primary through the sentinels. The primary is stopped; once
the sentinels have promoted the replica, both nodes are ready again, a room message
crosses from one node to the other, and history written before the failover (and
replicated) is still there for a resume.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    REDIS_SERVER,
    Server,
    free_port,
    http,
    make_token,
    read_close,
    recv_json,
    recv_until,
    unavailable,
    ws_connect,
)
from wsapp.redis.url import SentinelTarget, sentinel_target

SERVICE = "wsappmain"


def test_the_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    assert sentinel_target("redis+sentinel://127.0.0.1:26379,[::1]:26380/mymaster/2") == SentinelTarget(
        (("127.0.0.1", 26379), ("::1", 26380)), "mymaster", 2
    )
    tls = sentinel_target("rediss+sentinel://ops:p%40ss@h:1/m")
    assert (tls.username, tls.password, tls.tls, tls.db) == ("ops", "p@ss", True, 0)
    for bad in ("redis+sentinel://h/m", "redis+sentinel://h:0/m", "redis+sentinel://h:1/", "redis+sentinel://h:1/m/x"):
        with pytest.raises(ValueError):
            sentinel_target(bad)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except Exception:  # noqa: BLE001 - not there yet
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


class SentinelSet:
    """A primary, a replica and three sentinels watching them, each on a free port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.primary, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _run(self, port: int, *args: str) -> None:
        log = open(self.folder / f"{port}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder
        )

    def start(self) -> None:
        import redis

        plain = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        self._run(self.primary, "--port", str(self.primary), *plain)
        self._run(self.replica, "--port", str(self.replica), *plain, "--replicaof", "127.0.0.1", str(self.primary))
        for port in self.sentinels:
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self._run(port, str(conf), "--sentinel")
        replica = redis.Redis(port=self.replica, socket_timeout=1, decode_responses=True)
        wait_for(lambda: replica.info("replication")["master_link_status"] == "up", "the replica is in sync")
        for port in self.sentinels:
            sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            wait_for(lambda s=sentinel: len(s.sentinel_slaves(SERVICE)) == 1, "each sentinel sees the replica")
            wait_for(lambda s=sentinel: len(s.sentinel_sentinels(SERVICE)) == 2, "each sentinel sees the others")

    def primary_port(self) -> int:
        import redis

        host, port = redis.Redis(port=self.sentinels[0], socket_timeout=1).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def stop(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.stop(port)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    if not Path(REDIS_SERVER).exists() and subprocess.run(["which", REDIS_SERVER], capture_output=True).returncode:
        unavailable("redis-server")
    running = SentinelSet(tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop_all()


def node(url: str) -> Server:
    env = {"WSAPP_REDIS_URL": url, "WSAPP_WORKERS": "1", "WSAPP_RATE_LIMIT": "0", "WSAPP_SHUTDOWN_TIMEOUT": "1",
           "WSAPP_REDIS_HEARTBEAT": "1", "WSAPP_REDIS_PRESENCE_TTL": "3", "WSAPP_API_RATE_LIMIT": "0"}  # fmt: skip
    return Server(env=env, health="/readyz").start()


def call(ws: Any, **frame: Any) -> dict[str, Any]:
    frame["id"] = ident = f"i{time.monotonic_ns()}"
    ws.send(json.dumps(frame))
    return recv_until(ws, lambda m: m.get("id") == ident, timeout=20)


def chat(server: Server, client_id: str, path: str = "/ws/chat") -> Any:
    ws = ws_connect(server, path, make_token(client_id))
    assert recv_json(ws)["type"] == "welcome"
    return ws


def test_a_failover_is_followed_and_replicated_history_survives(sentinels: SentinelSet) -> None:
    import redis

    a, b = node(sentinels.url), node(sentinels.url)
    try:
        alice, bob = chat(a, "alice"), chat(b, "bob")
        for ws in (alice, bob):
            assert call(ws, type="join", room="ops")["type"] == "ack"
        assert call(alice, type="room", room="ops", data="before")["delivered"] == 2
        before = recv_until(bob, lambda m: m.get("type") == "room" and m["data"] == "before")
        assert call(alice, type="room", room="ops", data="kept")["delivered"] == 2
        # the two messages are on the replica before the primary goes (replication is
        # asynchronous: what a failover can lose is what had not reached a replica)
        old = redis.Redis(port=sentinels.primary, socket_timeout=2)
        assert old.wait(1, 5000) == 1

        sentinels.stop(sentinels.primary)
        wait_for(lambda: sentinels.primary_port() == sentinels.replica, "the sentinels promote the replica", 60)
        for server in (a, b):
            wait_for(lambda s=server: http(s.url, "GET", "/readyz").status == 200, "the node is ready again", 60)

        # the chat connections the nodes served through the failover are told to resume (1012)
        assert read_close(alice)[0] == 1012 and read_close(bob)[0] == 1012
        alice, bob = chat(a, "alice"), chat(b, "bob")
        for ws in (alice, bob):
            assert call(ws, type="join", room="ops")["type"] == "ack"
        # across nodes again, through the new primary (both resubscribed, presence re-written)
        late = chat(b, "carol")
        assert call(late, type="join", room="ops")["type"] == "ack"
        ack = wait_for(
            lambda: (got := call(alice, type="room", room="ops", data="after"))["delivered"] == 3 and got,
            "a room message reaches every member on both nodes",
            60,
        )
        assert ack["type"] == "ack"
        recv_until(late, lambda m: m.get("type") == "room" and m["data"] == "after", timeout=20)

        # history written before the failover survives on the new primary
        ws = chat(b, "bob2", "/ws/chat?resume=1")
        ws.send(
            json.dumps(
                {"type": "resume", "id": "r", "rooms": {"ops": {"offset": before["offset"], "epoch": before["epoch"]}}}
            )
        )
        got: list[Any] = []
        answer = recv_until(
            ws, lambda m: (m.get("type") == "room" and got.append(m["data"])) or m.get("type") == "resumed", timeout=20
        )
        assert answer["rooms"]["ops"]["recovered"] is True, answer
        assert got[:1] == ["kept"]
        for client in (alice, bob, late, ws):
            client.close()
    finally:
        a.stop()
        b.stop()
