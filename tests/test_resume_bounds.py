"""A `?resume=1` connection that never sends `resume` (issue 18, part 2): what its held
streams may cost, how long they are held, and what `delivered` says meanwhile.

- what a connection's gates hold, all its streams together, is bounded like its send
  queue (`WSAPP_SEND_QUEUE` frames, `WSAPP_SEND_QUEUE_BYTES` bytes); past it a gate has
  overflowed and a resume reads the history again;
- `WSAPP_RESUME_TIMEOUT` after the 101 with no `resume` frame the held streams go live
  (held frames out in order), or, when one overflowed, the connection is closed
  1008 "resume needed" (the next connection resumes from the history);
- a frame parked in a gate is not counted in `delivered`: `/api/send` to a client whose
  only connection is held answers 202 `stored`.

Pure rules against the registry's `Gate`/`Held`; the rest against real gunicorn (and
redis-server) processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

from helpers import Reader, RedisProcess, Server, delivery, http, make_token, read_close, recv_json, ws_connect
from wsapp.registry import Gate, Held, Peer, deliver, receiving

ADMIN = make_token("ops", admin=True)
BIG = 60_000  # a direct's data, bytes: 5 fit the default send-queue byte bound (327680), 6 do not


# ---- helpers ---------------------------------------------------------------------------


class Chat:
    """One chat connection: its welcome, and a reader thread with the JSON frames."""

    def __init__(self, server: Server, client_id: str, resume: bool = False) -> None:
        self.ws = ws_connect(server, "/ws/chat?resume=1" if resume else "/ws/chat", make_token(client_id))
        self.welcome = recv_json(self.ws)
        assert self.welcome["type"] == "welcome"

    def reader(self) -> Reader:
        return Reader(self.ws)

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))


def send(server: Server, to: str, data: Any) -> tuple[int, Any]:
    res = http(server.url, "POST", "/api/send", {"to": to, "data": data}, token=make_token("sender"))
    return res.status, delivery(res.body)


def until_frames(reader: Reader, n: int, kind: str, timeout: float = 20) -> list[dict[str, Any]]:
    return [reader.next(lambda m: m.get("type") == kind, timeout) for _ in range(n)]


@pytest.fixture(scope="module")
def held_server() -> Iterator[Server]:
    """A resume timeout long enough that no test here reaches it."""
    srv = Server(env={"WSAPP_RATE_LIMIT": "0", "WSAPP_RESUME_TIMEOUT": "120"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def timeout_server() -> Iterator[Server]:
    """A short resume timeout (long enough for a test's few sends to land before it)."""
    srv = Server(env={"WSAPP_RATE_LIMIT": "0", "WSAPP_RESUME_TIMEOUT": "4"}).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["memory", "redis"])
def any_backend(request: pytest.FixtureRequest, start_server: Callable[..., Server]) -> Server:
    env = {"WSAPP_RATE_LIMIT": "0", "WSAPP_RESUME_TIMEOUT": "120"}
    if request.param == "redis":
        redis_server: RedisProcess = request.getfixturevalue("redis_server")
        redis_server.client().flushall()
        env |= {"WSAPP_REDIS_URL": redis_server.url, "WSAPP_WORKERS": "1"}
    return start_server(**env)


# ---- pure: the bound and the count -------------------------------------------------------


class _Ws:
    conn_id = "fake"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return True


def _peer() -> Peer:
    return Peer(_Ws(), "bob", False, 0.0, "", "chat")  # type: ignore[arg-type]


def test_the_gates_of_a_connection_share_one_bound_in_bytes_and_in_frames() -> None:
    budget = Held(max_frames=256, max_bytes=327_680)
    a, b = Gate(budget=budget), Gate(budget=budget)
    frame = b"x" * BIG
    for offset in range(1, 4):  # 6 frames of 60 KB over two streams: 5 fit, whatever the stream
        a.hold(offset, frame)
        b.hold(offset, frame)
    assert len(a.held) + len(b.held) == 5 and budget.nbytes == 5 * BIG <= budget.max_bytes
    assert b.overflowed and not a.overflowed
    a.hold(4, frame)  # still full: the bound is the connection's, not the stream's
    assert a.overflowed and len(a.held) == 3
    assert [o for o, _f in a.take()] == [1, 2, 3] and budget.nbytes == 2 * BIG and budget.frames == 2
    small = Held(max_frames=2)
    c = Gate(budget=small)
    for offset in (1, 2, 3):
        c.hold(offset, b"s")
    assert [o for o, _f in c.held] == [1, 2] and c.overflowed  # and in frames


def test_a_frame_parked_in_a_gate_is_not_counted_delivered() -> None:
    held, live, opened = _peer(), _peer(), _peer()
    held.gates = {"direct:bob": Gate(10)}
    opened.gates = {"direct:bob": Gate(10)}
    opened.gates["direct:bob"].floor = 0  # a resume sent its replay: live from here
    assert deliver([held, live, opened], b"m", "direct:bob", 1) == 2
    assert held.gates["direct:bob"].held == [(1, b"m")]
    assert receiving([held, live, opened], "direct:bob") == 2  # opened lost its gate above
    assert receiving([held], "broadcast") == 1  # another stream is not held


# ---- delivered -----------------------------------------------------------------------------


def test_send_to_a_client_whose_only_connection_is_held_is_stored_not_delivered(any_backend: Server) -> None:
    srv = any_backend
    bob = Chat(srv, "bob", resume=True)
    position = bob.welcome["streams"]
    assert send(srv, "bob", "while held") == (202, {"delivered": 0, "stored": True})
    res = http(srv.url, "POST", "/api/broadcast", {"data": "to all"}, token=ADMIN)
    assert (res.status, delivery(res.body)) == (200, {"delivered": 0})
    # a second, live connection of bob counts; the held one still does not
    live = Chat(srv, "bob")
    live_reader = live.reader()
    assert send(srv, "bob", "one live") == (200, {"delivered": 1})
    assert live_reader.next(lambda m: m.get("type") == "direct")["data"] == "one live"
    # the held connection gets all of it from its resume, once, in order
    reader = bob.reader()
    bob.send(type="resume", id=1, broadcast=position["broadcast"], direct=position["direct"])
    got = []
    while (f := reader.next())["type"] != "resumed":
        got.append((f["type"], f["data"]))
    assert got == [("broadcast", "to all"), ("direct", "while held"), ("direct", "one live")]
    assert f["direct"]["recovered"] is True and f["direct"]["replayed"] == 2
    bob.ws.close()
    live.ws.close()


# ---- the byte bound during a resume ------------------------------------------------------


def test_held_frames_past_the_byte_bound_are_read_again_from_the_history(held_server: Server) -> None:
    bob = Chat(held_server, "bob-big", resume=True)
    position = bob.welcome["streams"]["direct"]
    for i in range(8):  # 480 KB for a gate bounded at 320 KiB
        assert send(held_server, "bob-big", f"{i}" + "x" * BIG)[0] == 202
    reader = bob.reader()
    bob.send(type="resume", id=1, direct=position)
    directs = until_frames(reader, 8, "direct")
    assert [d["data"][0] for d in directs] == [str(i) for i in range(8)]
    assert [d["offset"] for d in directs] == [position["offset"] + i for i in range(1, 9)]
    resumed = reader.next(lambda m: m.get("type") == "resumed")
    assert resumed["direct"] == {"recovered": True, "replayed": 8, "offset": position["offset"] + 8,
                                 "epoch": position["epoch"]}  # fmt: skip
    bob.ws.close()


# ---- released without a replay: another frame first, or the timeout ---------------------------


def test_another_frame_first_releases_the_held_streams_or_closes_1008_if_one_overflowed(
    held_server: Server,
) -> None:
    small = Chat(held_server, "carol-small", resume=True)
    assert send(held_server, "carol-small", "held")[0] == 202
    reader = small.reader()
    small.send(type="join", room="r-small", id=1)
    assert reader.next(lambda m: m.get("type") == "direct")["data"] == "held"  # out first, then live
    assert reader.next(lambda m: m.get("id") == 1)["type"] == "ack"
    assert send(held_server, "carol-small", "live") == (200, {"delivered": 1})
    small.ws.close()

    big = Chat(held_server, "carol-big", resume=True)
    for i in range(7):
        assert send(held_server, "carol-big", f"{i}" + "x" * BIG)[0] == 202
    big.send(type="join", room="r-big", id=1)
    assert read_close(big.ws) == (1008, "resume needed")  # not a gap: nothing of it was sent


def test_no_resume_within_the_timeout_sends_the_held_frames_and_goes_live(timeout_server: Server) -> None:
    dave = Chat(timeout_server, "dave", resume=True)
    reader = dave.reader()
    for i in range(3):
        assert send(timeout_server, "dave", i)[0] in (200, 202)  # 202 until the timeout
    assert [d["data"] for d in until_frames(reader, 3, "direct")] == [0, 1, 2]
    assert send(timeout_server, "dave", "live") == (200, {"delivered": 1})
    assert reader.next(lambda m: m.get("type") == "direct")["data"] == "live"
    assert "resume timeout client=dave" in timeout_server.log()
    dave.ws.close()


def test_no_resume_within_the_timeout_with_an_overflowed_stream_closes_1008_and_the_next_resume_has_it(
    timeout_server: Server,
) -> None:
    erin = Chat(timeout_server, "erin", resume=True)
    position = erin.welcome["streams"]["direct"]
    for i in range(7):  # 420 KB: past the 320 KiB bound well before the 4 s timeout
        assert send(timeout_server, "erin", f"{i}" + "x" * BIG)[0] == 202
    erin.ws.settimeout(30)
    opcode, data = erin.ws.recv_data(control_frame=True)  # the close is the first frame after the welcome
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert (int.from_bytes(data[:2], "big"), data[2:].decode()) == (1008, "resume needed")
    again = Chat(timeout_server, "erin", resume=True)
    reader = again.reader()
    again.send(type="resume", id=1, direct=position)
    assert [d["data"][0] for d in until_frames(reader, 7, "direct")] == [str(i) for i in range(7)]
    assert reader.next(lambda m: m.get("type") == "resumed")["direct"]["recovered"] is True
    again.ws.close()
