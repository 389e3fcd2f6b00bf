"""The naming of everything wsapp keeps in Redis: key and channel names, hash tags, node ids
and the presence write keys, no I/O.

**Layout: everything about one target lives in one hash slot.** A target is the
broadcast (`{all}`), a client id (`{c<hash>}`) or a room (`{r<hash>}`), where `<hash>` is
32 hex digits of SHA-256 of the name (`name_tag`: a client cannot choose the slot); its
keys and its channel start with `wsapp:<tag>`, so on Redis Cluster they share a slot and
each script touches one slot and declares its keys:

* `<tag>:n` hash: node -> connections that node holds for the target;
* `<tag>:m` hash (rooms): client id -> `"node=count node=count"`, where its connections in
  the room are (member lists, "new in the room everywhere", the exclusion of presence);
* `<tag>:h` Redis Stream and `<tag>:hm` hash (epoch, last offset): the target's history;
* `<tag>:hb` (client ids): the bytes of history this client id's messages were granted in
  the current `WSAPP_HISTORY_TTL` window (`charge.lua`; `WSAPP_HISTORY_BYTES_PER_CLIENT`);
* `<tag>:bus:<db>`: the channel. A node subscribes to it while it holds a connection the
  target reaches, so **a node hears only what it delivers**. Sharded pub/sub
  (`SSUBSCRIBE`/`SPUBLISH`) where the server has it (Redis 7), classic otherwise.

Per node (slot `{n:<node>}`): `:c` (client id -> connections, for `/api/clients`) and `:r`
(room -> connections, to clean up after the node dies). Liveness: the sorted set
`wsapp:{nodes}` (`NODES_KEY`), node -> deadline in Redis server time
(`wsapp.redis.liveness`); the first live node whose heartbeat sees a dead one removes
its entries target by target (`Bus.reap`).
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from ..registry import Target

PREFIX = "wsapp:"  # every key and channel; use another database (redis://host/1) to separate deployments
NODES_KEY = PREFIX + "{nodes}"


def key(tag: str, suffix: str) -> str:
    """The name of `tag`'s key `suffix` (`n`, `m`, `h`, ...)."""
    return f"{PREFIX}{tag}:{suffix}"


def channel(tag: str, db: int) -> str:
    """`tag`'s channel. Pub/sub ignores the database number: it is in the name, so
    deployments that share a Redis on different databases do not hear each other."""
    return f"{PREFIX}{tag}:bus:{db}"


def name_tag(kind: str, key: str) -> str:
    """The hash tag of client id or room `key` (`kind` "c" or "r"): derived from a hash of
    the name, never the name itself, so a client cannot pick the slot its keys land on
    (`evil}<i>` names spread like any others). 128 bits of SHA-256: two names never
    share a tag. Hex only, no ':' after the kind letter: the layout before (`{c:<id>}`,
    `{r:<name>}`) cannot be mistaken for it (docs/scaling.md, "Migrating")."""
    cached = _TAGS.get((kind, key))
    if cached is None:
        if len(_TAGS) >= _TAGS_MAX:
            _TAGS.clear()
        digest = hashlib.sha256(f"{kind}:{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
        cached = _TAGS[(kind, key)] = "{" + kind + digest + "}"
    return cached


_TAGS: dict[tuple[str, str], str] = {}  # a per-message hash is cheap; a dict lookup is cheaper
_TAGS_MAX = 4096


def target_tag(target: Target) -> str:
    """The hash tag of everything about `target` (a `close` goes to the client's channel)."""
    if target.kind == "all":
        return "{all}"
    if target.kind in ("client", "close", "control"):  # a server join/leave goes to the client's channel too
        return name_tag("c", target.key)
    return name_tag("r", target.key)


def stream_tag(stream: str) -> str:
    """The tag of a history stream (`broadcast`, `direct:<id>`, `room:<name>`): its target's."""
    kind, _, key = stream.partition(":")
    if kind == "broadcast":
        return "{all}"
    return name_tag({"direct": "c", "room": "r"}[kind], key)


def idempotency_hash(stream: str, key: str) -> str:
    """The name part of an idempotency key's Redis key: bounded, whatever the key holds."""
    return hashlib.sha256(f"{stream}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def node_tag(node: str) -> str:
    return "{n:" + node + "}"


_NODE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def node_id(host: str, pid: int, suffix: str) -> str:
    """A node id for `<tag>:m` values and key names: no space, no '=', no braces."""
    return f"{_NODE_ID_UNSAFE.sub('_', host)}-{pid}-{suffix}"


class WriteKey(NamedTuple):
    """One value of this node's presence that a write sets (`Bus.presence_ops`; 0 deletes).
    Build it with the constructors, not by hand:

    * `client(cid)`: `cid`'s connections here (`<client tag>:n`, this node's `:c` index);
    * `total()`: this node's addressable connections (`{all}:n`);
    * `member(room, cid)`: `cid`'s connections in `room` here (`<room tag>:m`);
    * `room_total(room)`: the room's connections here (`<room tag>:n`, this node's `:r` index).
    """

    hash: str  # "c", "t" or "r:<room>"
    field: str  # a client id, "*" or "r:<room>"

    @classmethod
    def client(cls, cid: str) -> WriteKey:
        return cls("c", cid)

    @classmethod
    def total(cls) -> WriteKey:
        return cls("t", "*")

    @classmethod
    def member(cls, room: str, cid: str) -> WriteKey:
        return cls("r:" + room, cid)

    @classmethod
    def room_total(cls, room: str) -> WriteKey:
        return cls("t", "r:" + room)


Writes = dict[WriteKey, int]  # a presence diff: write key -> its new value (0 deletes)
