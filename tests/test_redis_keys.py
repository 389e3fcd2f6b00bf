"""The presence write keys (`wsapp.redis.keys.WriteKey`) land where their constructors say:
`Bus.presence_ops` turns each into the steps on the keys it names (pure: a stub client
that only registers scripts; no Redis server)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("redis")

from wsapp.redis.bus import Bus  # noqa: E402
from wsapp.redis.keys import WriteKey, Writes, key, target_tag  # noqa: E402
from wsapp.registry import Target  # noqa: E402


class _StubClient:
    """What `Bus.__init__` reads of a client: its database and script registration."""

    connection_pool = SimpleNamespace(connection_kwargs={"db": 0})

    def register_script(self, body: str) -> Any:
        return SimpleNamespace(script=body, sha=str(hash(body)))


def test_each_write_key_is_written_where_its_constructor_says() -> None:
    bus = Bus(_StubClient(), "me")
    writes: Writes = {
        WriteKey.client("ann"): 2,
        WriteKey.total(): 3,
        WriteKey.member("lobby", "ann"): 1,
        WriteKey.room_total("lobby"): 4,
    }
    ops, _decode = bus.presence_ops(writes)
    room = [key(target_tag(Target("room", "lobby")), s) for s in ("n", "m", "i")]
    assert ops == [
        (bus._count_set, [key(target_tag(Target("client", "ann")), "n")], ["me", 2]),
        ("index", "wsapp:{n:me}:c", ["ann", 2]),
        (bus._count_set, ["wsapp:{all}:n"], ["me", 3]),
        ("index", "wsapp:{n:me}:r", ["lobby", 4]),
        (bus._room_set, room, ["me", "4", 0, "ann", 1, ""]),
    ]


def test_write_keys_of_different_things_differ() -> None:
    """A room named like a client id, or "*", is its own key."""
    made = [WriteKey.client("*"), WriteKey.total(), WriteKey.member("*", "*"), WriteKey.room_total("*")]
    assert len(set(made)) == len(made)
