"""Descriptor exhaustion (issue 18): the soft limit raised to the hard one, and sockets that
have not completed a handshake shed oldest first so that a client with a token gets in.

Pure tests of the tracker and the shedding rule (`wsapp.descriptors`), one of the
listener's accept at `EMFILE` in this process, and real gunicorn processes whose
descriptor limit is low (soft = hard, as under systemd's `LimitNOFILE=256`: raising it
cannot help).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest

from helpers import Server, make_token, raw_handshake, unavailable
from wsapp import descriptors, startup
from wsapp.descriptors import DescriptorsShed, InFlight, Shedder

LIMIT = 256
IDLE = LIMIT + 44  # more idle sockets than the worker has descriptors


# ---- the tracker and the rule (pure) ---------------------------------------------------


@pytest.mark.parametrize(
    ("soft", "reserve"), [(8, 4), (32, 4), (39, 4), (40, 5), (256, 32), (512, 64), (513, 64), (1024, 64), (1 << 20, 64)]
)
def test_the_reserve_is_an_eighth_of_the_limit_from_4_to_64(soft: int, reserve: int) -> None:
    assert descriptors.reserve_for(soft) == reserve


class Item:
    def __init__(self, name: str, open_: bool = True) -> None:
        self.name, self.open, self.shut = name, open_, False

    def __repr__(self) -> str:
        return self.name


def _shut(item: Item) -> bool:
    if not item.open:
        return False
    item.shut = True
    return True


def test_the_oldest_are_shed_first_and_each_only_once() -> None:
    flight: InFlight[Item] = InFlight(_shut)
    items = [Item(f"s{i}") for i in range(5)]
    for item in items:
        flight.add(item)
    assert len(flight) == 5 and flight.pending == 0
    assert flight.shed(2) == 2
    assert [i.shut for i in items] == [True, True, False, False, False]
    assert (len(flight), flight.pending) == (3, 2)
    assert flight.shed(1) == 1 and items[2].shut and not items[3].shut
    assert flight.shed(10) == 2  # no more than there are
    assert (len(flight), flight.pending) == (0, 5)
    assert flight.shed(1) == 0


def test_a_finished_socket_is_not_in_flight_and_a_shed_one_stops_pending_when_done() -> None:
    flight: InFlight[Item] = InFlight(_shut)
    a, b, c = Item("a"), Item("b"), Item("c")
    for item in (a, b, c):
        flight.add(item)
    flight.done(a)  # finished before any shedding: never shed
    assert flight.shed(1) == 1 and not a.shut and b.shut
    assert (len(flight), flight.pending) == (1, 1)
    flight.done(b)  # the shed socket's greenlet ended: its descriptor is free
    assert (len(flight), flight.pending) == (1, 0)
    flight.done(b)  # twice: nothing
    flight.done(c)
    assert (len(flight), flight.pending) == (0, 0)


def test_a_socket_taken_over_is_dropped_without_counting() -> None:
    flight: InFlight[Item] = InFlight(_shut)
    session, idle = Item("session", open_=False), Item("idle")
    flight.add(session)
    flight.add(idle)
    assert flight.shed(1) == 1  # the session is skipped, the next oldest shed instead
    assert idle.shut and not session.shut
    assert (len(flight), flight.pending) == (0, 1)
    flight.done(session)  # its handler returns after the 101: not pending
    assert flight.pending == 1


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, msg: str, *args: Any) -> None:
        self.lines.append(msg % args)

    info = warning


def _shedder(
    soft: int = 100, reserve: int = 10, base: int = 0, sessions: int = 0, n: int = 30
) -> tuple[Shedder, list[Item], Log]:
    log = Log()
    shedder = Shedder(soft, log, reserve, base=base, sessions=lambda: sessions)
    shedder.inflight = InFlight(_shut)
    items = [Item(f"s{i}") for i in range(n)]
    for item in items:
        shedder.inflight.add(item)
    return shedder, items, log


@pytest.mark.parametrize(("fd", "shed"), [(0, 0), (88, 0), (89, 0), (90, 1), (91, 2), (99, 10)])
def test_a_new_descriptor_in_the_reserve_sheds_what_is_in_use_past_it(fd: int, shed: int) -> None:
    shedder, items, _ = _shedder(soft=100, reserve=10)  # threshold 90: descriptors 0..89 in use are fine
    assert shedder.make_room(fd) == shed
    assert sum(i.shut for i in items) == shed
    assert all(i.shut for i in items[:shed])  # the oldest


@pytest.mark.parametrize(
    ("base", "in_flight", "sessions", "shed"),
    [(20, 30, 39, 0), (20, 30, 40, 1), (60, 30, 0, 1), (0, 30, 89, 30), (59, 30, 0, 0), (0, 0, 95, 0)],
)
def test_descriptors_in_flight_in_sessions_and_the_workers_own_count_wherever_their_numbers(
    base: int, in_flight: int, sessions: int, shed: int
) -> None:
    # the new socket got a low number (descriptors closed below it): the counts still add up
    shedder, items, _ = _shedder(soft=100, reserve=10, base=base, sessions=sessions, n=in_flight)
    assert shedder.in_use(5) == max(6, base + in_flight + sessions + 1)
    assert shedder.make_room(5) == shed  # at most what is in flight: sessions are never shed
    assert all(i.shut for i in items[:shed]) and not any(i.shut for i in items[shed:])


def test_sockets_shed_and_not_yet_closed_count_as_made_room() -> None:
    shedder, items, _ = _shedder(soft=100, reserve=10)
    assert shedder.make_room(92) == 3  # 93 in use: 3 past the threshold
    assert shedder.make_room(93) == 1  # the 3 are still closing: one more
    assert shedder.make_room(91) == 0
    for item in items[:4]:
        shedder.inflight.done(item)  # closed now
    assert shedder.make_room(91) == 2


def test_out_of_descriptors_sheds_a_reserve_or_waits_for_those_closing() -> None:
    shedder, items, _ = _shedder(soft=100, reserve=10)
    assert shedder.out_of_descriptors()
    assert sum(i.shut for i in items) == 10 and all(i.shut for i in items[:10])
    assert shedder.out_of_descriptors()  # 10 still closing: wait for them, shed no more
    assert sum(i.shut for i in items) == 10
    for item in items[:7]:
        shedder.inflight.done(item)
    assert shedder.out_of_descriptors()  # 3 closing: 7 more
    assert sum(i.shut for i in items) == 17
    for item in items:
        shedder.inflight.done(item)
    assert not shedder.out_of_descriptors()  # nothing in flight, nothing closing: no help


def test_shedding_is_logged_at_most_once_per_window_with_the_count() -> None:
    shedder, _, log = _shedder(soft=100, reserve=10)
    shedder.make_room(90)
    assert log.lines == [
        "wsapp: descriptors short (limit 100, 10 kept free): shed 1 sockets that had not "
        "completed a handshake, oldest first"
    ]
    shedder.make_room(92)  # 2 more (1 closing) within the window: counted, not logged
    shedder.make_room(89)  # nothing shed: nothing to count
    assert len(log.lines) == 1
    shedder.next_log = 0.0  # the window is over
    shedder.make_room(95)
    assert len(log.lines) == 2 and "shed 5 sockets" in log.lines[1]  # 2 + 3 (3 closing of 6 past)


# ---- shutting a socket down (gevent sockets, in process) ---------------------------------


def test_shut_gives_the_greenlet_end_of_file_and_skips_a_detached_or_closed_socket() -> None:
    server, client = (gevent.socket.socket(fileno=s.detach()) for s in socket.socketpair())
    try:
        reader = gevent.spawn(server.recv, 10)  # a handler waiting for its request
        gevent.sleep(0)
        assert descriptors.shut(server)
        # its read ends quietly with end-of-file (gevent's own shutdown throws EBADF in)
        assert reader.get(timeout=10) == b""
        assert client.recv(10) == b""  # and the peer sees the end
    finally:
        server.close()
        client.close()
    a, peer = socket.socketpair()
    detached = gevent.socket.socket(fileno=a.detach())
    session = socket.socket(fileno=detached.detach())  # what `take_over` does
    closed = gevent.socket.socket(fileno=socket.socket().detach())
    closed.close()
    try:
        assert not descriptors.shut(detached)
        assert not descriptors.shut(closed)
        session.sendall(b"still open")  # the session's descriptor was left alone
        assert peer.recv(20) == b"still open"
    finally:
        session.close()
        peer.close()


def _lowest_free_descriptor() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


class Stub:
    def __init__(self, helps: bool) -> None:
        self.helps, self.asked = helps, 0

    def out_of_descriptors(self) -> bool:
        self.asked += 1
        return self.helps


def test_an_accept_without_descriptors_sheds_and_waits_quietly_or_raises_as_before() -> None:
    plain = gevent.socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    helps, no_help = Stub(helps=True), Stub(helps=False)
    listener = descriptors.Listener(plain, helps)  # type: ignore[arg-type]
    raw = listener._sock
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_descriptor(), hard))  # no new descriptor
        with pytest.raises(DescriptorsShed):
            raw._accept()
        assert helps.asked == 1
        raw.shedder = no_help
        with pytest.raises(OSError) as err:
            raw._accept()
        assert err.value.errno == errno.EMFILE and no_help.asked == 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        fd, _addr = raw._accept()  # descriptors again: accepted, nothing asked
        os.close(fd)
        assert no_help.asked == 1
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for c in clients:
            c.close()
        listener.close()
    assert issubclass(DescriptorsShed, Exception) and not issubclass(DescriptorsShed, OSError)


# ---- real gunicorn processes -------------------------------------------------------------


@dataclass
class FixedLimitServer(Server):
    """gunicorn started with soft = hard = `nofile_soft` (systemd's `LimitNOFILE=N`)."""

    def _lower_nofile(self) -> None:
        assert self.nofile_soft is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile_soft, self.nofile_soft))


def _wait_for(check: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)
    return got


def _worker_pid(srv: Server) -> int:
    match = _wait_for(lambda: re.search(r"Booting worker with pid: (\d+)", srv.log()), "a worker booted")
    return int(match.group(1))


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no limit line")


def _is_closed(sock: socket.socket) -> bool:
    sock.setblocking(False)  # with a timeout, recv would wait for it first
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: closed with bytes unread
        return True


def test_idle_sockets_past_the_limit_are_shed_oldest_first_and_a_client_with_a_token_gets_in() -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < IDLE + 200:
        unavailable("this process cannot open enough sockets for the test")
    # keep-alive 300 s: no idle socket ends on its own during the test (gunicorn's parser
    # and the early path both wait that long for a request)
    srv = FixedLimitServer(env={"WSAPP_RATE_LIMIT": "0"}, args=("--keep-alive", "300"), nofile_soft=LIMIT)
    srv.start()
    idle: list[socket.socket] = []
    worker = _worker_pid(srv)
    try:
        assert _soft_nofile(worker) == LIMIT
        reserve = descriptors.reserve_for(LIMIT)
        log = srv.log()
        assert f"wsapp: descriptor limit {LIMIT} (hard {LIMIT}): sockets that have not completed a handshake" in log
        assert "WSAPP_MAX_CONNECTIONS allows 10000 WebSockets in this worker" in log  # it cannot hold them
        # all of them wait in the backlog while the worker is stopped, then arrive at once
        # (gevent accepts up to 100 per wake-up, before any of their greenlets runs)
        os.kill(worker, signal.SIGSTOP)
        try:
            for i in range(IDLE):
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                if i % 2:  # half send a request's first line and nothing more
                    sock.sendall(b"GET /ws/echo HTTP/1.1\r\n")
                idle.append(sock)
        finally:
            os.kill(worker, signal.SIGCONT)
        headers = {"Authorization": f"Bearer {make_token('has-a-token')}"}
        status, _, _, ws = raw_handshake(srv.port, "/ws/echo", headers, timeout=30)
        assert status == 101
        ws.close()
        # the oldest were shed, the youngest are still open
        _wait_for(lambda: _is_closed(idle[0]) and _is_closed(idle[1]), "the oldest idle sockets closed")
        assert not _is_closed(idle[-1]) and not _is_closed(idle[-2])
        # the worker keeps its reserve free once the burst is over
        _wait_for(
            lambda: len(os.listdir(f"/proc/{worker}/fd")) <= LIMIT - reserve, "descriptors back under the reserve"
        )
        log = srv.log()
        assert "shed" in log and "sockets that had not completed a handshake, oldest first" in log
        assert "Too many open files" not in log and "DescriptorsShed" not in log
        assert "Traceback" not in log and "Socket error" not in log
    finally:
        for sock in idle:
            sock.close()
        srv.stop()


def test_a_plain_gunicorn_without_wsapps_hooks_raises_the_limit_from_the_app(tmp_path: Path) -> None:
    """`gunicorn -k gevent myapp:app`, no config: `startup.raise_descriptor_limit_under_gunicorn`
    (what `WSApp.init_app` calls) raises the worker's soft limit to the hard one and says so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 128
    if hard != resource.RLIM_INFINITY and hard <= low + 100:
        unavailable(f"the hard descriptor limit ({hard}) leaves no room to test")
    (tmp_path / "plainapp.py").write_text(
        "from wsapp import startup\n\nstartup.raise_descriptor_limit_under_gunicorn()\n\n"
        "from examples.orders import app  # noqa: E402\n"
    )
    # an empty config: without `-c`, gunicorn would read ./gunicorn.conf.py, hooks and all
    (tmp_path / "empty.conf.py").write_text("")
    srv = Server(
        env={"WSAPP_RATE_LIMIT": "0"},
        app="plainapp:app",
        config=str(tmp_path / "empty.conf.py"),
        args=("-k", "gevent", "--bind", "127.0.0.1:0", "--pythonpath", str(tmp_path)),
        health="/watching",
        nofile_soft=low,
    ).start()
    try:
        worker = _worker_pid(srv)
        assert srv.proc is not None and _soft_nofile(srv.proc.pid) == low  # no hook in the master
        assert _soft_nofile(worker) == hard
        assert srv.log().count(f"descriptor limit (RLIMIT_NOFILE) raised from {low} to {hard}") == 1
    finally:
        srv.stop()


def test_outside_gunicorn_the_limit_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "gunicorn.arbiter", raising=False)
    calls: list[int] = []
    monkeypatch.setattr(startup, "raise_descriptor_limit", lambda: calls.append(1))
    assert startup.raise_descriptor_limit_under_gunicorn() is None
    assert calls == []
