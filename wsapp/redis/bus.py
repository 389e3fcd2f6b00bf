"""The Redis side of the backplane: key layout, wire format and Lua scripts, no greenlets.

`Bus` is shared by the web workers (`wsapp.redis.backplane`) and by publishers outside
them (`wsapp.emitter`), so both speak one format.

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
  the current `WSAPP_HISTORY_TTL` window (`_CHARGE`; `WSAPP_HISTORY_BYTES_PER_CLIENT`);
* `<tag>:bus:<db>`: the channel. A node subscribes to it while it holds a connection the
  target reaches, so **a node hears only what it delivers**. Sharded pub/sub
  (`SSUBSCRIBE`/`SPUBLISH`) where the server has it (Redis 7), classic otherwise.

Per node (slot `{n:<node>}`): `:c` (client id -> connections, for `/api/clients`) and `:r`
(room -> connections, to clean up after the node dies). Liveness: the sorted set
`wsapp:{nodes}`, node -> deadline in Redis server time. Readers drop the counts of nodes
past their deadline (`Liveness`); the first live node whose heartbeat sees a dead one
removes its entries target by target (`Bus.reap`).

A message on a channel is one line of JSON (wire version, origin node, target) and then
the encoded WebSocket frame (`w1`), or, for a kept message, its offset in the header and
the JSON text after it (`w2`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ..history import EMPTY, Position, Replay, decide, text_frame
from ..registry import Target
from .url import SENTINEL_SCHEMES, SentinelTarget, sentinel_target

PREFIX = "wsapp:"  # every key and channel; use another database (redis://host/1) to separate deployments
WIRE_VERSION = "w1"
KEPT_VERSION = "w2"  # a message with a position in its stream's history (see `_PUBLISH_KEPT`)
# a cluster client also raises RedisClusterException (no node reachable, a slot not
# covered while the cluster comes back), which is not a RedisError
REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)
COMMAND_TIMEOUT_S = 1.0  # a hung Redis stalls one caller this long, then the node serves local-only
POOL_SIZE = 64  # connections per worker (per cluster node); callers wait for one beyond it
# How long a caller waits for a free pooled connection: longer than a command's timeout, so a
# reconnect storm that keeps all 64 busy queues instead of looking like Redis being down
# (a Redis that hangs still fails each command after COMMAND_TIMEOUT_S, freeing them).
POOL_WAIT_S = 10.0
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
NODES_KEY = PREFIX + "{nodes}"
REAP_CLAIM_MS = 10_000  # one live node cleans up a dead one; another takes over after this


def connect(url: str, timeout_s: float = COMMAND_TIMEOUT_S, name: str = "wsapp") -> Any:
    """A client that fails fast: short timeouts and no retries (the callers decide).

    `redis+cluster://host:port` (or `rediss+cluster://`) is a Redis Cluster reached
    through any of its nodes; `redis+sentinel://host:port,host:port/service[/db]` (or
    `rediss+sentinel://`) the primary that Redis Sentinel names for `service`, asked
    again on every new connection (so a failover is followed by reconnecting); anything
    else is one Redis."""
    parts = urlsplit(url)
    common = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 0),
        "client_name": name,
    }  # fmt: skip
    if parts.scheme in CLUSTER_SCHEMES:
        plain = urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme]))
        return RedisCluster.from_url(
            plain, max_connections=POOL_SIZE, connection_pool_class=redis.BlockingConnectionPool,
            timeout=max(timeout_s, POOL_WAIT_S), **common,
        )  # fmt: skip
    if parts.scheme in SENTINEL_SCHEMES:
        return _sentinel_primary(sentinel_target(url), timeout_s, common)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=max(timeout_s, POOL_WAIT_S), protocol=2, **common
    )
    return redis.Redis(connection_pool=pool)


class _SentinelBlockingPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (the primary asked for on every new connection) that, like the
    other pools here, makes a caller wait for a free connection instead of failing."""


def _sentinel_primary(target: SentinelTarget, timeout_s: float, common: dict[str, Any]) -> Any:
    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=timeouts,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        protocol=2,
        **common,
    )
    return sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service,
        connection_pool_class=_SentinelBlockingPool,
        max_connections=POOL_SIZE,
        timeout=max(timeout_s, POOL_WAIT_S),
    )


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


# ---- names ---------------------------------------------------------------------------------


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


class Kept(NamedTuple):
    """What `Bus.publish_at` did: `status` 1 kept, 2 published unkept, 0 neither; `others`
    the other live nodes' receivers (a `duplicate`: the first publish's `delivered`)."""

    status: int
    offset: int
    others: int
    epoch: str
    duplicate: bool


def node_tag(node: str) -> str:
    return "{n:" + node + "}"


# ---- wire format -----------------------------------------------------------------------------


def encode_envelope(origin: str, target: Target, frame: bytes) -> bytes:
    """What goes on a channel: a JSON header line (no raw newline in it), then the frame bytes."""
    header = json.dumps([WIRE_VERSION, origin, target.kind, target.key, target.exclude_client])
    return header.encode("ascii") + b"\n" + frame


KINDS = ("all", "client", "room", "close", "control")  # "control": a server join/leave (`Bus.control`)


def decode_envelope(payload: bytes) -> tuple[str, Target, bytes]:
    """A `w1` envelope (frame bytes), or a `w2` one (a kept message: see `decode_kept`)."""
    head, sep, frame = payload.partition(b"\n")
    version, origin, kind, key, exclude, *_rest = json.loads(head)
    if not sep or version not in (WIRE_VERSION, KEPT_VERSION) or kind not in KINDS:
        raise ValueError(f"not a {WIRE_VERSION} envelope")
    return str(origin), Target(kind, key, exclude), frame


def kept_head(origin: str, target: Target, stream: str) -> str:
    """The start of a `w2` header; the publish script appends the offset, `]` and a newline,
    then the message's JSON text (not a WebSocket frame: each node encodes it once)."""
    return json.dumps([KEPT_VERSION, origin, target.kind, target.key, target.exclude_client, stream])[:-1] + ","


def decode_kept(payload: bytes) -> tuple[Target, str, int, bytes] | None:
    """(target, stream, offset, JSON text) of a `w2` envelope; None for a `w1` one."""
    head, sep, body = payload.partition(b"\n")
    fields = json.loads(head)
    if not isinstance(fields, list) or len(fields) != 7 or fields[0] != KEPT_VERSION:
        return None  # a w1 envelope (or garbage, which `decode_envelope` refuses)
    _version, _origin, kind, key, exclude, stream, offset = fields
    if not sep or kind not in ("all", "client", "room"):
        raise ValueError(f"not a {KEPT_VERSION} envelope")
    return Target(kind, key, exclude), str(stream), int(offset), body


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


# One step of `Bus._run`: (script, keys, args), or ("index", key, [field, value]) for a
# node's own index (HSET, or HDEL at 0).
Op = tuple[Any, Any, list[Any]]


class Liveness:
    """Which nodes count: a copy of the nodes' deadlines, in Redis server time.

    Refreshed by every heartbeat (and, for readers that beat no heart, when older than
    `max_age_s`). A node missing from a fresh copy is dead: a node registers before it
    writes any presence, and its entries outlive it only until it is reaped."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.deadlines: dict[str, int] = {}
        self._skew_ms = 0.0  # Redis server time minus this process's monotonic clock
        self._fetched = -1e18  # monotonic seconds of the last copy
        self.absent: set[str] = set()  # nodes seen in presence but not in the copy
        self._dead: list[str] = []  # `dead()` as last computed, valid until `_recheck_ms`
        self._recheck_ms = float("-inf")

    def update(self, now_ms: int, flat: list[Any]) -> None:
        self._fetched = time.monotonic()
        self.absent = set()
        self._recheck_ms = float("-inf")
        self._skew_ms = now_ms - self._fetched * 1000
        self.deadlines = {n.decode(): int(float(d)) for n, d in zip(flat[::2], flat[1::2], strict=True)}

    def stale(self, nodes: Iterable[str] = ()) -> bool:
        """Read the table again? When it is older than `max_age_s`, or a node is unknown:
        registered after the copy, or dead and reaped (then read again at most every 0.2 s)."""
        age = time.monotonic() - self._fetched
        if age > self.max_age_s:
            return True
        unknown = [n for n in nodes if n not in self.deadlines]
        return bool(unknown) and (age > 0.2 or not self.absent.issuperset(unknown))

    def missing(self, nodes: Iterable[str]) -> None:
        """`nodes` are not in a copy just read: dead (until a later copy says otherwise)."""
        self.absent.update(n for n in nodes if n not in self.deadlines)

    def alive(self, node: str) -> bool:
        deadline = self.deadlines.get(node)
        return deadline is not None and deadline > time.monotonic() * 1000 + self._skew_ms

    def dead(self) -> list[str]:
        """Nodes past their deadline. Asked on every publish: the list is computed again only
        when the copy changed or the next deadline has passed, not once per message."""
        now = time.monotonic() * 1000 + self._skew_ms
        if now >= self._recheck_ms:
            self._dead = [n for n, d in self.deadlines.items() if d <= now]
            self._recheck_ms = min((d for d in self.deadlines.values() if d > now), default=float("inf"))
        return self._dead


_NODE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def node_id(host: str, pid: int, suffix: str) -> str:
    """A node id for `<tag>:m` values and key names: no space, no '=', no braces."""
    return f"{_NODE_ID_UNSAFE.sub('_', host)}-{pid}-{suffix}"


class Bus:
    """The Redis side of the backplane, shared with the external emitter: scripts and keys.

    Presence writes come in as the diffs `wsapp.redis.backplane._Mirror` computes:
    (`"c"`, client id) -> connections, (`"t"`, `"*"`) -> total, (`"r:<room>"`, client id) ->
    connections in the room, (`"t"`, `"r:<room>"`) -> the room's total here; 0 deletes."""

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
        return f"{PREFIX}{tag}:bus:{self.db}"

    @staticmethod
    def key(tag: str, suffix: str) -> str:
        return f"{PREFIX}{tag}:{suffix}"

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

    def publish_kept(
        self,
        target: Target,
        stream: str,
        prefix: str,
        here: int,
        create: bool,
        size: int,
        ttl_s: float,
        store: bool = True,
    ) -> tuple[int, bool]:
        """Keep and publish one message (`_PUBLISH_KEPT`); `here` is the connections this
        caller holds for `target`; `store` False gives it a position but keeps it not (a
        gap). Returns (connections on the other live nodes, published), published False
        only for a direct message nobody receives to a stream that does not exist.

        Raises `redis.exceptions.OutOfMemoryError` when Redis is full (nothing written
        then: `publish_lost` delivers the message)."""
        kept = self.publish_at(target, stream, prefix, here, create, size, ttl_s, store)
        return kept.others, kept.status != 0

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
        """`publish_kept` with the message's position, and with an idempotency `key` (already
        scoped to its sender; `counted` is the caller's own receivers `delivered` counts):
        a key seen for `stream` within `ttl_s` sends nothing and answers the first result
        (`Kept.duplicate`), atomically with the publish, so two nodes never both send."""
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
        writes: dict[tuple[str, str], int],
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
        writes: dict[tuple[str, str], int],
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
