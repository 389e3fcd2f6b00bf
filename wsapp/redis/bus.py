"""The Redis side of the backplane: the Lua scripts (in scripts/, read once at import)
and the operations on the keys (`Bus`: publish, history, presence reads and writes,
registration, heartbeat and reaping), no greenlets. Shared by the web workers
(`wsapp.redis.backplane`) and by publishers outside them (`wsapp.emitter`), so both
speak one format; the names are in `wsapp.redis.keys`, the envelopes in
`wsapp.redis.wire`, the connection in `wsapp.redis.connect`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis
from redis.cluster import RedisCluster

from ..history import EMPTY, Position, Replay, decide, text_frame
from ..registry import Target
from .connect import is_cluster
from .keys import NODES_KEY, Writes, idempotency_hash, name_tag, node_tag, stream_tag, target_tag
from .keys import channel as channel_name
from .keys import key as key_name
from .liveness import Liveness
from .wire import encode_envelope, kept_head

REAP_CLAIM_MS = 10_000  # one live node cleans up a dead one; another takes over after this


class Kept(NamedTuple):
    """What `Bus.publish_at` did: `status` 1 kept, 2 published unkept, 0 neither; `others`
    the other live nodes' receivers (a `duplicate`: the first publish's `delivered`)."""

    status: int
    offset: int
    others: int
    epoch: str
    duplicate: bool


# ---- scripts: each touches the keys of one tag, all declared in KEYS ------------------------
# (the Lua text of each, with its comments, is in wsapp/redis/scripts/, read once at import)


def _script_text(name: str) -> str:
    return (resources.files(__package__) / "scripts" / f"{name}.lua").read_text(encoding="utf-8")


_MEMBERS = _script_text("members")
_PUBLISH = _script_text("publish")
_HISTORY = _script_text("history")
_PUBLISH_KEPT = _script_text("publish_kept")
_PUBLISH_LOST = _script_text("publish_lost")
_CHARGE = _script_text("charge")
_POSITION = _script_text("position")
_SINCE = _script_text("since")
_TAIL = _script_text("tail")
_ROOM_SET = _script_text("room_set")
_ROOM_DROP = _script_text("room_drop")
_COUNT_SET = _script_text("count_set")
_NODES = _script_text("nodes")


# One step of `Bus.run`: (script, keys, args), or ("index", key, [field, value]) for a
# node's own index (HSET, or HDEL at 0).
Op = tuple[Any, Any, list[Any]]


class Bus:
    """The Redis side of the backplane, shared with the external emitter: scripts and keys.

    Presence writes come in as the diffs `wsapp.redis.backplane._Mirror` computes, keyed by
    `WriteKey` (`wsapp.redis.keys`): a client's connections, the node's total, a client's
    connections in a room, the room's total here; 0 deletes."""

    def __init__(self, client: Any, node: str, liveness_max_age_s: float = 1.0) -> None:
        self.client = client
        self.node_id = node
        self.cluster = is_cluster(client)
        # pub/sub ignores the database number: put it in the channel, so deployments that
        # share a Redis on different databases do not hear each other
        self.db = 0 if self.cluster else int(client.connection_pool.connection_kwargs.get("db", 0))
        self.sharded = True  # SPUBLISH/SSUBSCRIBE; `detect` turns it off on a Redis before 7
        self.liveness = Liveness(liveness_max_age_s)
        self._scripts: list[Any] = []
        self._publish = self._script(_MEMBERS + _PUBLISH)
        self._publish_kept = self._script(_MEMBERS + _HISTORY + _PUBLISH_KEPT)
        self._publish_lost = self._script(_MEMBERS + _PUBLISH_LOST)
        self._charge = self._script(_CHARGE)
        self._position = self._script(_MEMBERS + _HISTORY + _POSITION)
        self._since = self._script(_MEMBERS + _SINCE)
        self._tail = self._script(_MEMBERS + _TAIL)
        self._room_set = self._script(_MEMBERS + _ROOM_SET)
        self._room_drop = self._script(_MEMBERS + _ROOM_DROP)
        self._count_set = self._script(_MEMBERS + _COUNT_SET)
        self._nodes = self._script(_MEMBERS + _NODES)
        self._detected = False

    def _script(self, body: str) -> Any:
        script = self.client.register_script(body)
        self._scripts.append(script)
        return script

    def detect(self) -> None:
        """Sharded pub/sub needs Redis 7; a cluster always has it."""
        if self._detected or self.cluster:
            return
        version = str(self.client.info("server").get("redis_version", "7"))
        self.sharded = int(version.split(".")[0]) >= 7
        self._detected = True

    @property
    def publish_command(self) -> str:
        return "SPUBLISH" if self.sharded else "PUBLISH"

    def channel(self, tag: str) -> str:
        return channel_name(tag, self.db)

    @staticmethod
    def key(tag: str, suffix: str) -> str:
        return key_name(tag, suffix)

    # ---- liveness ----------------------------------------------------------------------------

    def _dead(self) -> list[str]:
        """The nodes past their deadline that are not reaped yet: a publish subtracts their
        counts from the maintained totals (usually none)."""
        if self.liveness.stale():
            self.read_nodes()
        return [n for n in self.liveness.dead() if n != self.node_id]

    def _live(self, nodes: list[str]) -> list[str]:
        if self.liveness.stale(nodes):
            self.read_nodes()
            self.liveness.missing(nodes)
        return [n for n in nodes if n != self.node_id and self.liveness.alive(n)]

    def _nodes_call(self, what: str, ttl_s: float = 0) -> bool:
        out = self._nodes(keys=[NODES_KEY], args=[self.node_id, int(ttl_s * 1000), what])
        self.liveness.update(int(out[1]), out[2:])
        return bool(out[0])

    def read_nodes(self) -> None:
        self._nodes_call("read")

    def register(self, ttl_s: float) -> None:
        """Join the live set (before any presence is written: see `Liveness`)."""
        self._nodes_call("register", ttl_s)

    def heartbeat(self, ttl_s: float) -> tuple[bool, list[str]]:
        """Renew this node. Returns (still registered, the dead nodes seen)."""
        known = self._nodes_call("beat", ttl_s)
        return known, [n for n in self.liveness.dead() if n != self.node_id]

    # ---- messages ----------------------------------------------------------------------------

    def publish(self, target: Target, frame: bytes) -> int:
        """Hand `frame` to the other nodes that hold connections for `target`; return how many
        connections they hold (live nodes only)."""
        tag = target_tag(target)
        keys = [self.key(tag, "n"), self.key(tag, "m")]
        always = int(target.kind == "close")  # a close reaches every route: presence counts chat only
        args = [self.node_id, target.exclude_client, self.publish_command, self.channel(tag),
                encode_envelope(self.node_id, target, frame), always, *self._dead()]  # fmt: skip
        return max(0, int(self._publish(keys=keys, args=args)))

    def publish_at(
        self,
        target: Target,
        stream: str,
        prefix: str,
        here: int,
        create: bool,
        size: int,
        ttl_s: float,
        store: bool = True,
        key: str = "",
        counted: int = 0,
    ) -> Kept:
        """Keep and publish one message (`_PUBLISH_KEPT`) and say where it stands (`Kept`);
        `here` is the connections this caller holds for `target`; `store` False gives it a
        position but keeps it not (a gap). Nothing is published (status 0) only for a direct
        message nobody receives to a stream that does not exist. With an idempotency `key`
        (already scoped to its sender; `counted` is the caller's own receivers `delivered`
        counts), a key seen for `stream` within `ttl_s` sends nothing and answers the first
        result (`Kept.duplicate`), atomically with the publish, so two nodes never both send.

        Raises `redis.exceptions.OutOfMemoryError` when Redis is full (nothing written
        then: `publish_lost` delivers the message)."""
        tag = target_tag(target)
        keys = [self.key(tag, "n"), self.key(tag, "m"), self.key(tag, "h"), self.key(tag, "hm")]
        if key:
            keys.append(self.key(tag, "ik:" + idempotency_hash(stream, key)))
        args = [
            self.node_id, target.exclude_client, self.publish_command, self.channel(tag), prefix, size,
            int(ttl_s * 1000), int(create), kept_head(self.node_id, target, stream), here, int(store), counted,
            *self._dead(),
        ]  # fmt: skip
        out = self._publish_kept(keys=keys, args=args)
        status, offset, others, epoch = int(out[0]), int(out[1]), int(out[2]), _text(out[3])
        if status == 3:  # a repeat: `others` is the first publish's whole `delivered`
            return Kept(int(out[4]), offset, max(0, others), epoch, True)
        return Kept(status, offset, max(0, others), epoch, False)

    def publish_lost(self, target: Target, frame: bytes) -> int:
        """`_PUBLISH_LOST`: the stream of `target` is forgotten, `frame` (no position) goes to
        the other live nodes that hold receivers; returns how many connections they hold."""
        tag = target_tag(target)
        keys = [self.key(tag, "n"), self.key(tag, "m"), self.key(tag, "h"), self.key(tag, "hm")]
        args = [self.node_id, target.exclude_client, self.publish_command, self.channel(tag),
                encode_envelope(self.node_id, target, frame), *self._dead()]  # fmt: skip
        return max(0, int(self._publish_lost(keys=keys, args=args)))

    def forget(self, streams: list[str]) -> None:
        """End the epoch of each of `streams`: their history is deleted, so the next message
        starts a new epoch and a resume across the gap says `recovered: false`. For messages
        this node delivered while Redis was away (`RedisBackplane._unkept`). One pipeline
        on one Redis; on a cluster one DEL per stream (its two keys share a slot)."""
        if not self.cluster:
            pipe = self.client.pipeline(transaction=False)
            for stream in streams:
                pipe.delete(*self._history_keys(stream))
            pipe.execute()
            return
        for stream in streams:
            self.client.delete(*self._history_keys(stream))

    def charge(self, client_id: str, want: int, need: int, budget: int, ttl_s: float) -> tuple[int, float]:
        """Take up to `want` bytes (at least `need`, or none) of `client_id`'s history budget
        for the current window (`_CHARGE`). Returns (bytes granted, seconds left in the window)."""
        key = self.key(name_tag("c", client_id), "hb")
        granted, left_ms = self._charge(keys=[key], args=[want, need, budget, int(ttl_s * 1000)])
        return int(granted), int(left_ms) / 1000

    def memory_policies(self) -> set[str]:
        """`maxmemory-policy` of the Redis server (of each primary of a cluster). Raises a
        Redis error when CONFIG is refused (managed services often rename it)."""
        if self.cluster:
            answers = self.client.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
            values = answers.values() if isinstance(answers, dict) and "maxmemory-policy" not in answers else [answers]
        else:
            values = [self.client.config_get("maxmemory-policy")]
        return {_text(v.get("maxmemory-policy", v.get(b"maxmemory-policy", ""))) for v in values}

    # ---- history -----------------------------------------------------------------------------

    def _history_keys(self, stream: str) -> list[str]:
        tag = stream_tag(stream)
        return [self.key(tag, "h"), self.key(tag, "hm")]

    def position_ops(
        self, streams: list[str], touch: str, ttl_s: float
    ) -> tuple[list[Op], Callable[[list[Any]], list[Position]]]:
        """The steps that read where `streams` stand (and renew `touch`), and how to read
        their results: for a caller that batches them with others (`run`)."""
        ttl = int(ttl_s * 1000)
        asked = streams if not touch or touch in streams else [*streams, touch]
        ops: list[Op] = [(self._position, self._history_keys(s), [int(s == touch), ttl]) for s in asked]

        def decode(results: list[Any]) -> list[Position]:
            return [Position(int(o), e.decode()) if e else EMPTY for e, o in results[: len(streams)]]

        return ops, decode

    def since(self, stream: str, pos: Position, ttl_s: float) -> Replay:
        """What `stream` kept after `pos`, as JSON texts encoded to frames here."""
        out = self._since(keys=self._history_keys(stream), args=[pos.offset, pos.epoch, int(ttl_s * 1000)])
        current = Position(int(out[1]), out[0].decode())
        if not current.epoch:
            current = EMPTY
        first = int(out[2]) or None
        if not decide(pos, current, first):
            return Replay(False, [], current)
        pairs = zip(out[3::2], out[4::2], strict=True)
        return Replay(True, [(int(off), text_frame(body.decode("utf-8"))) for off, body in pairs], current)

    def tail(self, stream: str, n: int, ttl_s: float) -> Replay:
        """The last `n` messages `stream` keeps, oldest first, and where it stands (`_TAIL`)."""
        out = self._tail(keys=self._history_keys(stream), args=[max(0, n), int(ttl_s * 1000)])
        current = Position(int(out[1]), _text(out[0])) if out[0] else EMPTY
        pairs = zip(out[2::2], out[3::2], strict=True)
        return Replay(True, [(int(off), text_frame(_text(body))) for off, body in pairs], current)

    # ---- reading presence --------------------------------------------------------------------

    def clients(self) -> dict[str, int]:
        """Client ids and connection counts on the other live nodes (one read per node: an
        admin call, not a publish path)."""
        self.read_nodes()  # fresh: a node registered a moment ago is listed
        nodes = self._live(list(self.liveness.deadlines))
        pipe = self.client.pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(self.key(node_tag(node), "c"))
        out: dict[str, int] = {}
        for held in pipe.execute() if nodes else []:
            for cid, n in held.items():
                out[cid.decode()] = out.get(cid.decode(), 0) + int(n)
        return out

    def client_count(self, client_id: str) -> int:
        """Chat connections `client_id` holds on the other live nodes."""
        counts = self.client.hgetall(self.key(target_tag(Target("client", client_id)), "n"))
        counts.pop(b"*", None)
        live = set(self._live([n.decode() for n in counts]))
        return sum(int(c) for n, c in counts.items() if n.decode() in live)

    def room_members(self, room: str) -> set[str]:
        members = self.client.hgetall(self.key(target_tag(Target("room", room)), "m"))
        spread = {cid.decode(): _nodes_of(v) for cid, v in members.items()}
        live = set(self._live(sorted({n for nodes in spread.values() for n in nodes})))
        return {cid for cid, nodes in spread.items() if live.intersection(nodes)}

    def member_info(self, room: str, client_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The presence entries (`<room tag>:i`, client id -> JSON) of `client_ids`, those that have one."""
        if not client_ids:
            return {}
        values = self.client.hmget(self.key(target_tag(Target("room", room)), "i"), client_ids)
        out: dict[str, dict[str, Any]] = {}
        for cid, value in zip(client_ids, values, strict=True):
            try:
                info = json.loads(value) if value else None
            except ValueError:
                continue
            if isinstance(info, dict):
                out[cid] = info
        return out

    def room_count_elsewhere(self, room: str, client_id: str) -> int:
        """Connections `client_id` has in `room` on the other live nodes (`<room tag>:m`)."""
        value = self.client.hget(self.key(target_tag(Target("room", room)), "m"), client_id)
        if not value:
            return 0
        counts = {node: int(c) for node, _, c in (part.partition("=") for part in _text(value).split())}
        return sum(counts[node] for node in self._live(sorted(counts)))

    # ---- writing presence --------------------------------------------------------------------

    def write_presence(
        self,
        writes: Writes,
        asks: Sequence[tuple[str, str]] = (),
        infos: Mapping[str, str] | None = None,
    ) -> list[bool]:
        """Write this node's presence changes; for each (room, client id) in `asks`, answer
        (atomically with the room's write) whether the client is in the room on another
        live node. `infos`: client id -> its presence entry (JSON), written with each of its
        room counts above 0 (`<room tag>:i`; the entry goes when the client leaves the room
        everywhere, or with a dead node, in the same script)."""
        ops, decode = self.presence_ops(writes, asks, infos)
        return decode(self.run(ops))

    def presence_ops(
        self,
        writes: Writes,
        asks: Sequence[tuple[str, str]] = (),
        infos: Mapping[str, str] | None = None,
    ) -> tuple[list[Op], Callable[[list[Any]], list[bool]]]:
        """The steps of `write_presence`, and how to read their results (for `run`)."""
        infos = infos or {}
        me = self.node_id
        ops: list[Op] = []
        rooms: dict[str, tuple[str, list[Any]]] = {}  # room -> (its total here or '', [cid, n, ...])
        for (suffix, field), value in writes.items():
            if suffix == "c":
                ops.append((self._count_set, [self.key(target_tag(Target("client", field)), "n")], [me, value]))
                ops.append(("index", self.key(node_tag(me), "c"), [field, value]))
            elif suffix == "t" and field == "*":
                ops.append((self._count_set, [self.key("{all}", "n")], [me, value]))
            elif suffix == "t":
                room = field[2:]
                ops.append(("index", self.key(node_tag(me), "r"), [room, value]))
                rooms[room] = (str(value), rooms.get(room, ("", []))[1])
            else:
                room = suffix[2:]
                total, pairs = rooms.get(room, ("", []))
                rooms[room] = (total, [*pairs, field, value, infos.get(field, "") if value else ""])
        asked: dict[str, list[str]] = {}
        for room, cid in asks:
            asked.setdefault(room, []).append(cid)
            rooms.setdefault(room, ("", []))
        first = len(ops)
        for room, (total, pairs) in rooms.items():
            keys = [self.key(target_tag(Target("room", room)), s) for s in ("n", "m", "i")]
            cids = asked.get(room, [])
            ops.append((self._room_set, keys, [me, total, len(cids), *cids, *pairs]))

        def decode(results: list[Any]) -> list[bool]:
            answers: dict[tuple[str, str], bool] = {}
            for room, result in zip(rooms, results[first:], strict=True):
                for cid, nodes in zip(asked.get(room, []), result, strict=True):
                    answers[(room, cid)] = bool(self._live([n.decode() for n in nodes]))
            return [answers[ask] for ask in asks]

        return ops, decode

    def run(self, ops: list[Op]) -> list[Any]:
        """Run scripts and index writes in as few round trips as the server allows: one
        pipeline on one Redis; on a cluster one pipeline per primary (a cluster pipeline
        refuses scripts), each script going to the primary of its keys' slot.

        Scripts go as plain `EVALSHA` (redis-py's pipelined scripts would ask `SCRIPT
        EXISTS` first: a round trip more each time); a server that lost them (restarted,
        flushed) answers NOSCRIPT, gets them loaded, and the group runs again: every step
        writes absolute values, so running one twice is harmless."""
        if not ops:
            return []
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, op in enumerate(ops):
            key = op[1][0] if op[0] != "index" else op[1]
            if self.cluster:
                node = self.client.get_node_from_key(key)
                server, name = self.client.get_redis_connection(node), node.name
            else:
                server, name = self.client, ""
            groups.setdefault(name, (server, []))[1].append(i)
        out: list[Any] = [None] * len(ops)
        for server, indexes in groups.values():
            try:
                results = self._pipeline(server, [ops[i] for i in indexes])
            except redis.exceptions.NoScriptError:
                for script in self._scripts:
                    server.script_load(script.script)
                results = self._pipeline(server, [ops[i] for i in indexes])
            for i, result in zip(indexes, results, strict=True):
                out[i] = result
        return out

    @staticmethod
    def _pipeline(server: Any, ops: list[Op]) -> list[Any]:
        pipe = server.pipeline(transaction=False)
        for script, keys, args in ops:
            if script == "index":
                field, value = args
                pipe.hset(keys, field, value) if value else pipe.hdel(keys, field)
            else:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute())

    def reap(self, node: str) -> list[tuple[str, str]] | None:
        """Remove a dead node's presence, target by target. Returns the (room, client id)
        pairs that left the cluster with it, or None if another node is reaping it."""
        tag = node_tag(node)
        if not self.client.set(self.key(tag, "reap"), self.node_id, nx=True, px=REAP_CLAIM_MS):
            return None
        held = self.client.hgetall(self.key(tag, "c"))
        rooms = [r.decode() for r in self.client.hkeys(self.key(tag, "r"))]
        ops: list[Op] = [(self._count_set, [self.key(target_tag(Target("client", c.decode())), "n")], [node, 0])
                         for c in held]  # fmt: skip
        ops.append((self._count_set, [self.key("{all}", "n")], [node, 0]))
        ops += [(self._room_drop, [self.key(target_tag(Target("room", r)), s) for s in ("n", "m", "i")], [node])
                for r in rooms]  # fmt: skip
        results = self.run(ops)[len(held) + 1 :]
        departed: list[tuple[str, str]] = []
        for room, flat in zip(rooms, results, strict=True):
            for cid, rest in zip(flat[::2], flat[1::2], strict=True):
                if not self._live(_nodes_of(rest)):
                    departed.append((room, cid.decode()))
        self.client.delete(self.key(tag, "c"), self.key(tag, "r"), self.key(tag, "reap"))
        if node == self.node_id:
            self._nodes_call("leave")
        else:
            self.client.zrem(NODES_KEY, node)
        return departed

    def unregister(self) -> None:
        """Forget this node's presence (a clean stop, or before writing it all again)."""
        self.reap(self.node_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nodes_of(value: bytes | str) -> list[str]:
    text = value.decode() if isinstance(value, bytes) else value
    return [part.partition("=")[0] for part in text.split()]
