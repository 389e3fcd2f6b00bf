"""`Registry` (pure): admission at and around its limits, slots, membership, rooms, targets.

Peers carry a stand-in for the WebSocket (the registry reads only `conn_id` and, in
`deliver`, calls `send_frame`): the registry's logic, not I/O, is under test here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from wsapp.errors import HandshakeRejected
from wsapp.registry import Departure, Gate, Join, Peer, Registry, Slot, Target, deliver


@dataclass
class FakeWs:
    conn_id: str
    accept: bool = True
    sent: list[bytes] = field(default_factory=list)

    def send_frame(self, frame: bytes) -> bool:
        if self.accept:
            self.sent.append(frame)
        return self.accept


_serial = [0]


def peer(client_id: str, route: str = "chat", **ws: Any) -> Peer:
    _serial[0] += 1
    return Peer(FakeWs(f"c{_serial[0]}", **ws), client_id, False, 0.0, "127.0.0.1", route, addressable=route == "chat")  # type: ignore[arg-type]


def added(reg: Registry, client_id: str, route: str = "chat") -> Peer:
    p = peer(client_id, route)
    reg.add(p)
    return p


def refusal(reg: Registry, client_id: str, elsewhere: int = 0) -> str:
    with pytest.raises(HandshakeRejected) as info:
        reg.reserve(client_id, elsewhere)
    return info.value.code


# ---- admission --------------------------------------------------------------------------


@pytest.mark.parametrize("max_connections", [1, 2, 5])
def test_reserve_fills_the_worker_exactly_to_its_limit(max_connections: int) -> None:
    reg = Registry(max_connections, max_per_client=100)
    slots = [reg.reserve(f"c{i}") for i in range(max_connections)]
    assert reg.held == max_connections
    assert refusal(reg, "another") == "server_busy"
    assert reg.held == max_connections  # a refusal counts nothing
    slots[0].release()
    assert reg.held == max_connections - 1
    reg.reserve("another")  # the freed slot is usable again
    assert refusal(reg, "yet-another") == "server_busy"


@pytest.mark.parametrize("per_client", [1, 2, 3])
def test_reserve_fills_one_client_exactly_to_its_limit(per_client: int) -> None:
    reg = Registry(100, per_client)
    slots = [reg.reserve("alice") for _ in range(per_client)]
    err = pytest.raises(HandshakeRejected, reg.reserve, "alice").value
    assert err.code == "too_many_connections" and err.status == 429
    assert f"holds {per_client} connections (the limit is {per_client})" in err.message
    reg.reserve("bob")  # another client is not affected
    slots[-1].release()
    reg.reserve("alice")
    assert reg.held == per_client + 1


@pytest.mark.parametrize(
    ("per_client", "held_here", "elsewhere", "admitted"),
    [
        (3, 0, 2, True),
        (3, 0, 3, False),
        (3, 1, 1, True),
        (3, 1, 2, False),
        (3, 2, 0, True),
        (3, 2, 1, False),
    ],
)
def test_connections_elsewhere_count_against_the_per_client_limit(
    per_client: int, held_here: int, elsewhere: int, admitted: bool
) -> None:
    reg = Registry(100, per_client)
    for _ in range(held_here):
        reg.reserve("alice")
    if admitted:
        reg.reserve("alice", elsewhere)
        assert reg.held == held_here + 1
    else:
        assert refusal(reg, "alice", elsewhere) == "too_many_connections"
        assert reg.held == held_here


def test_the_worker_limit_is_checked_before_the_client_limit() -> None:
    reg = Registry(1, 1)
    reg.reserve("alice")
    assert refusal(reg, "alice") == "server_busy"


def test_draining_refuses_every_reservation() -> None:
    reg = Registry(10, 10)
    assert reg.draining is False
    reg.draining = True
    assert refusal(reg, "alice") == "shutting_down"
    assert reg.held == 0


def test_release_gives_back_the_worker_and_the_client_count() -> None:
    """`Registry.release` forgetting to decrement would leak a slot per connection."""
    reg = Registry(2, 1)
    reg.reserve("alice").release()
    assert reg.held == 0
    reg.reserve("alice")  # the per-client count came back too
    reg.reserve("bob")
    assert reg.held == 2


def test_per_client_counts_are_independent_and_exact() -> None:
    reg = Registry(100, 2)
    a1, a2 = reg.reserve("alice"), reg.reserve("alice")
    b1 = reg.reserve("bob")
    a1.release()
    assert reg.held == 2
    reg.reserve("alice")  # one free for alice again
    assert refusal(reg, "alice") == "too_many_connections"
    a2.release(), b1.release()
    assert reg.held == 1


def test_a_slot_releases_once_however_often_it_is_released() -> None:
    reg = Registry(10, 10)
    keep = reg.reserve("alice")
    slot = reg.reserve("alice")
    assert isinstance(slot, Slot) and slot.released is False
    slot.release()
    slot.release()
    assert slot.released and reg.held == 1
    keep.release()
    assert reg.held == 0


@pytest.mark.parametrize("client_id", ["never-reserved", "alice"])
def test_release_of_nothing_held_changes_nothing(client_id: str) -> None:
    reg = Registry(10, 10)
    reg.reserve("bob")
    if client_id == "alice":
        reg.reserve("alice").release()
    assert reg.release(client_id) is False
    assert reg.held == 1
    assert reg.release("bob") is True
    assert reg.held == 0


# ---- membership -------------------------------------------------------------------------


def test_add_and_remove_chat_and_echo_peers() -> None:
    reg = Registry(10, 10)
    chat, echo = added(reg, "alice"), added(reg, "alice", "echo")
    assert set(reg.peers()) == {chat, echo}
    assert reg.clients() == {"alice": 1}  # echo peers receive nothing
    assert reg.client_count("alice") == 1
    assert reg.targets(Target("client", "alice")) == [chat]
    assert reg.remove(echo) == Departure([], [])
    assert reg.peers() == [chat]
    assert reg.remove(chat) == Departure([], [])
    assert reg.peers() == [] and reg.clients() == {} and reg.client_count("alice") == 0


def test_remove_is_idempotent() -> None:
    reg = Registry(10, 10)
    p = added(reg, "alice")
    reg.join(p, "r", 10)
    assert reg.remove(p) == Departure(["r"], ["r"])
    assert reg.remove(p) is None
    assert reg.room_members("r") == []


def test_clients_counts_connections_per_client() -> None:
    reg = Registry(10, 10)
    a1, _a2, _b = added(reg, "alice"), added(reg, "alice"), added(reg, "bob")
    assert reg.clients() == {"alice": 2, "bob": 1}
    assert reg.client_count("alice") == 2 and reg.client_count("nobody") == 0
    reg.remove(a1)
    assert reg.clients() == {"alice": 1, "bob": 1}


# ---- rooms ------------------------------------------------------------------------------


def test_join_results() -> None:
    reg = Registry(10, 10)
    a1, a2, b = added(reg, "alice"), added(reg, "alice"), added(reg, "bob")
    assert reg.join(a1, "r", 10) is Join.NEW_CLIENT
    assert reg.join(a1, "r", 10) is Join.ALREADY
    assert reg.join(a2, "r", 10) is Join.NEW_CONNECTION
    assert reg.join(b, "r", 10) is Join.NEW_CLIENT
    assert reg.room_members("r") == ["alice", "bob"]
    assert reg.room_count("r", "alice") == 2 and reg.room_count("r", "bob") == 1
    assert reg.room_count("r", "carol") == 0 and reg.room_count("nowhere", "alice") == 0


def test_join_of_a_peer_not_in_the_registry_changes_nothing() -> None:
    reg = Registry(10, 10)
    p = peer("alice")
    assert reg.join(p, "r", 10) is Join.GONE
    assert p.rooms == set() and reg.room_members("r") == []


@pytest.mark.parametrize("max_rooms", [1, 2, 3])
def test_room_cap_per_connection(max_rooms: int) -> None:
    reg = Registry(10, 10)
    p, other = added(reg, "alice"), added(reg, "alice")
    for i in range(max_rooms):
        assert reg.join(p, f"r{i}", max_rooms) is Join.NEW_CLIENT
    assert reg.join(p, "one-more", max_rooms) is Join.FULL
    assert "one-more" not in p.rooms and reg.room_members("one-more") == []
    assert reg.join(p, "r0", max_rooms) is Join.ALREADY  # a room it holds is no new room
    assert reg.join(other, "one-more", max_rooms) is Join.NEW_CLIENT  # the cap is per connection
    assert reg.leave(p, "r0") is True
    assert reg.join(p, "one-more", max_rooms) is Join.NEW_CONNECTION  # room again after a leave
    assert len(p.rooms) == max_rooms


def test_leave_reports_the_client_ids_last_connection() -> None:
    reg = Registry(10, 10)
    a1, a2 = added(reg, "alice"), added(reg, "alice")
    reg.join(a1, "r", 10), reg.join(a2, "r", 10)
    assert reg.leave(a1, "r") is False  # a2 is still there
    assert reg.room_members("r") == ["alice"] and reg.room_count("r", "alice") == 1
    assert reg.leave(a1, "r") is False  # not in it any more
    assert reg.leave(a2, "r") is True
    assert reg.room_members("r") == [] and a2.rooms == set()
    assert reg.leave(a2, "never-joined") is False


def test_remove_reports_every_room_and_those_its_client_id_left() -> None:
    reg = Registry(10, 10)
    a1, a2 = added(reg, "alice"), added(reg, "alice")
    for room in ("both", "only-a1"):
        reg.join(a1, room, 10)
    reg.join(a2, "both", 10)
    departure = reg.remove(a1)
    assert departure is not None
    assert sorted(departure.rooms) == ["both", "only-a1"] and departure.left == ["only-a1"]
    assert a1.rooms == set()
    assert reg.room_members("both") == ["alice"] and reg.room_members("only-a1") == []
    assert reg.remove(a2) == Departure(["both"], ["both"])


# ---- targets ----------------------------------------------------------------------------


def test_targets_all_client_and_room() -> None:
    reg = Registry(10, 10)
    a1, a2, b = added(reg, "alice"), added(reg, "alice"), added(reg, "bob")
    added(reg, "echo-only", "echo")
    reg.join(a1, "r", 10), reg.join(b, "r", 10)
    assert set(reg.targets(Target("all"))) == {a1, a2, b}
    assert set(reg.targets(Target("client", "alice"))) == {a1, a2}
    assert reg.targets(Target("client", "echo-only")) == []
    assert reg.targets(Target("client", "nobody")) == []
    assert set(reg.targets(Target("room", "r"))) == {a1, b}
    assert reg.targets(Target("room", "r", exclude_client="alice")) == [b]
    assert reg.targets(Target("room", "r", exclude_client="bob")) == [a1]
    assert reg.targets(Target("room", "nowhere")) == []


def test_target_close_reaches_every_connection_of_the_client_on_any_route() -> None:
    # revoking access: the client's echo connections too (not addressable by messages)
    reg = Registry(10, 10)
    chat, echo, other = added(reg, "alice"), added(reg, "alice", "echo"), added(reg, "bob")
    reg.join(other, "alice", 10)  # a room named like the client is not the client
    assert set(reg.targets(Target("close", "alice"))) == {chat, echo}
    assert reg.targets(Target("close", "bob")) == [other]
    assert reg.targets(Target("close", "nobody")) == []


def test_targets_is_a_snapshot() -> None:
    reg = Registry(10, 10)
    a = added(reg, "alice")
    snapshot = reg.targets(Target("all"))
    reg.remove(a)
    assert snapshot == [a] and reg.targets(Target("all")) == []


def test_deliver_counts_the_peers_that_took_the_frame() -> None:
    took, full = peer("a"), peer("b", accept=False)
    assert deliver([took, full, took], b"frame") == 2
    assert took.ws.sent == [b"frame", b"frame"]  # type: ignore[attr-defined]
    assert deliver([], b"frame") == 0


# ---- gates: a stream held while a resume replays it -------------------------------------


def test_a_held_stream_parks_its_messages_in_order_and_does_not_count_them_delivered() -> None:
    p, other = peer("a"), peer("b")
    p.gates = {"s": Gate(10), "t": Gate(10)}
    assert deliver([other, p], b"one", "s", 1) == 1  # parked for a resume that may never come
    assert deliver([p, other], b"two", "s", 2) == 1
    assert p.ws.sent == [] and other.ws.sent == [b"one", b"two"]  # type: ignore[attr-defined]
    assert p.gates["s"].held == [(1, b"one"), (2, b"two")] and p.gates["t"].held == []
    # a message of another stream, or of none, goes out at once
    assert deliver([p], b"live", "u", 7) == 1 and deliver([p], b"plain") == 1
    assert p.ws.sent == [b"live", b"plain"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_a_gate_holds_exactly_its_limit_then_says_it_overflowed(limit: int) -> None:
    p = peer("a")
    gate = Gate(limit)
    p.gates = {"s": gate}
    for offset in range(1, limit + 1):
        deliver([p], b"m%d" % offset, "s", offset)
    assert len(gate.held) == limit and not gate.overflowed
    assert deliver([p], b"more", "s", limit + 1) == 0  # not delivered: the resume reads it from the history
    assert gate.held == [(o, b"m%d" % o) for o in range(1, limit + 1)] and gate.overflowed
    assert p.ws.sent == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("floor", [0, 5])
def test_an_open_gate_drops_what_the_replay_sent_and_goes_at_the_first_newer_message(floor: int) -> None:
    p = peer("a")
    gate, other = Gate(10), Gate(10)
    gate.floor = floor
    p.gates = {"s": gate, "t": other}
    assert deliver([p], b"dup", "s", floor) == 1  # the replay sent it: dropped, counted
    assert p.ws.sent == [] and "s" in p.gates  # type: ignore[attr-defined]
    assert deliver([p], b"new", "s", floor + 1) == 1
    assert p.ws.sent == [b"new"] and p.gates == {"t": other}  # type: ignore[attr-defined]
    assert deliver([p], b"next", "s", floor + 2) == 1 and p.ws.sent == [b"new", b"next"]  # type: ignore[attr-defined]
    other.floor = 0
    assert deliver([p], b"t1", "t", 1) == 1 and p.gates is None  # the last gate gone: back to the usual case


def test_delivery_through_gates_goes_on_to_every_peer_and_counts_what_was_taken() -> None:
    first, held, full, replayed, ok = peer("a"), peer("b"), peer("c", accept=False), peer("d"), peer("e")
    held.gates = {"s": Gate(10)}
    full.gates = {"s": Gate(10)}
    full.gates["s"].floor = 3
    replayed.gates = {"s": Gate(10)}
    replayed.gates["s"].floor = 9
    # taken by: first (sent), replayed (sent by its replay), ok (sent); held parks it
    # (not counted); the full peer's gate opens, then its queue refuses
    assert deliver([first, held, full, replayed, ok], b"m", "s", 4) == 3
    assert full.gates is None and first.ws.sent == ok.ws.sent == [b"m"]  # type: ignore[attr-defined]
    assert held.gates["s"].held == [(4, b"m")] and replayed.ws.sent == []  # type: ignore[attr-defined]


def test_slot_release_says_whether_it_released() -> None:
    reg = Registry(10, 10)
    slot = reg.reserve("alice")
    assert slot.release() is True
    assert slot.release() is False
    assert reg.held == 0


def test_nothing_is_kept_for_clients_and_rooms_that_are_gone() -> None:
    """Per-client counts and rooms are forgotten at zero: no entry per client id or room ever seen."""
    reg = Registry(10, 10)
    for cid in ("a", "b"):
        reg.reserve(cid).release()
    assert reg._per_client == {}
    a, b = added(reg, "a"), added(reg, "b")
    reg.join(a, "r", 10), reg.join(b, "r", 10)
    assert reg.leave(a, "r") is True
    assert reg.room_members("r") == ["b"] and reg.targets(Target("room", "r")) == [b]  # b is still in it
    reg.remove(b)
    assert reg._rooms == {} and reg._by_client == {"a": {a}}


# ---- what this worker holds (interest routing on Redis subscribes by these) -------------


def test_holds_counts_every_connection_of_a_client_on_any_route() -> None:
    reg = Registry(10, 10)
    assert not reg.holds("ann")
    peers = [added(reg, "ann"), added(reg, "ann", route="echo"), added(reg, "ann")]
    added(reg, "bob")
    for p in peers[:-1]:
        reg.remove(p)
        assert reg.holds("ann")  # one connection is left
    reg.remove(peers[-1])
    reg.remove(peers[-1])  # a second removal changes nothing
    assert not reg.holds("ann") and reg.holds("bob")
    echo_only = added(reg, "eve", route="echo")  # not addressable, but held: its close target
    assert reg.holds("eve")
    reg.remove(echo_only)
    assert not reg.holds("eve")


def test_has_room_while_any_connection_is_in_it() -> None:
    reg = Registry(10, 10)
    a, b = added(reg, "ann"), added(reg, "bob")
    assert not reg.has_room("lobby")
    reg.join(a, "lobby", 10)
    reg.join(b, "lobby", 10)
    reg.leave(a, "lobby")
    assert reg.has_room("lobby") and not reg.has_room("other")
    reg.remove(b)  # leaving by disconnecting
    assert not reg.has_room("lobby")
