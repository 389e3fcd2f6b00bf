"""The Redis side of the backplane: key layout, wire format and Lua scripts, no greenlets.

`Bus` is shared by the web workers (`wsapp.redis_backplane`) and by publishers outside
them (`wsapp.emitter`), so both speak one format. A message on the bus is one line of
JSON (wire version, origin node, target) and then the encoded WebSocket frame bytes, on
the one channel `wsapp:bus:<db>`. Presence is per node: `wsapp:n:<node>:c` (client ->
connections), `:r:<room>` (client -> connections in the room), `:t` (totals), and the
node's deadline in the sorted set `wsapp:nodes`, in Redis server time.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .history import EMPTY, Position, Replay, decide, text_frame
from .registry import Target

PREFIX = "wsapp:"  # every key and the channel; use another database (redis://host/1) to separate deployments
WIRE_VERSION = "w1"
KEPT_VERSION = "w2"  # a message with a position in its stream's history (see `_PUBLISH_KEPT`)
REDIS_ERRORS = (redis.RedisError, OSError)
COMMAND_TIMEOUT_S = 1.0  # a hung Redis stalls one caller this long, then the node serves local-only
POOL_SIZE = 64  # connections per worker; callers wait (up to the command timeout) beyond it


def connect(url: str, timeout_s: float = COMMAND_TIMEOUT_S, name: str = "wsapp") -> redis.Redis:
    """A client that fails fast: short timeouts and no retries (the callers decide)."""
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0), protocol=2, client_name=name,
    )  # fmt: skip
    return redis.Redis(connection_pool=pool)


def encode_envelope(origin: str, target: Target, frame: bytes) -> bytes:
    """What goes on the bus: a JSON header line (no raw newline in it), then the frame bytes."""
    header = json.dumps([WIRE_VERSION, origin, target.kind, target.key, target.exclude_client])
    return header.encode("ascii") + b"\n" + frame


def decode_envelope(payload: bytes) -> tuple[str, Target, bytes]:
    """A `w1` envelope (frame bytes), or a `w2` one (a kept message: see `decode_kept`)."""
    head, sep, frame = payload.partition(b"\n")
    version, origin, kind, key, exclude, *_rest = json.loads(head)
    if not sep or version not in (WIRE_VERSION, KEPT_VERSION) or kind not in ("all", "client", "room", "close"):
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


# Every script gets ARGV[1] = key prefix, ARGV[2] = the caller's node id. Keys are built
# inside the scripts, so this needs one Redis primary (no Redis Cluster).
_LUA_PRELUDE = """
local P, me = ARGV[1], ARGV[2]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function key(node, suffix) return P .. 'n:' .. node .. ':' .. suffix end
local function num(v) return tonumber(v) or 0 end
local function live() return redis.call('ZRANGEBYSCORE', P .. 'nodes', now_ms(), '+inf') end
local function others()
  local out = {}
  for _, node in ipairs(live()) do if node ~= me then out[#out + 1] = node end end
  return out
end
"""
# ARGV[3..7] = kind, key, exclude, envelope, channel: count the other nodes' connections, publish if any
# (kind 'close': a `disconnect`; its frame is the close code and reason, see backplane.close_payload)
_PUBLISH = """
local kind, k, excl, n = ARGV[3], ARGV[4], ARGV[5], 0
for _, node in ipairs(others()) do
  if kind == 'all' then n = n + num(redis.call('HGET', key(node, 't'), '*'))
  elseif kind == 'client' or kind == 'close' then n = n + num(redis.call('HGET', key(node, 'c'), k))
  else
    n = n + num(redis.call('HGET', key(node, 't'), 'r:' .. k))
    if excl ~= '' then n = n - num(redis.call('HGET', key(node, 'r:' .. k), excl)) end
  end
end
-- a close goes out even if presence counts none there: presence counts addressable routes only
if n > 0 or kind == 'close' then redis.call('PUBLISH', ARGV[7], ARGV[6]) end
return n
"""
# History. Per stream two keys: `h:<stream>` (a Redis Stream of the messages, entry id
# `<offset>-0`, fields d = JSON text, t = ms) and `hm:<stream>` (hash: e = epoch, o = last
# offset). Both expire `ttl` after the stream's last write or touch. A stream created
# (first message, or a flushed/restarted Redis, or expired) gets a new epoch from Redis
# server time in microseconds, so a lost history can never hand out an old epoch again.
_HISTORY = """
local function hk(s) return P .. 'h:' .. s end
local function mk(s) return P .. 'hm:' .. s end
local function ensure(s, ttl)
  local m = mk(s)
  if redis.call('EXISTS', m) == 0 then
    local t = redis.call('TIME')
    redis.call('DEL', hk(s))
    redis.call('HSET', m, 'e', string.format('%x.%x', tonumber(t[1]), tonumber(t[2])), 'o', 0)
  end
  redis.call('PEXPIRE', m, ttl)
  return m
end
"""
# ARGV[3..12] = kind, key, exclude, channel, stream, JSON text without its closing brace,
# size, ttl ms, create (1/0), w2 header start, local connections. Counts the other
# nodes' connections like _PUBLISH; unless nobody receives a direct message to a stream
# that does not exist (create 0), assigns the next offset, keeps the message and
# publishes it to every node, this one included (one channel: offset order everywhere).
# Returns {connections on other nodes, kept 1/0, offset}.
_PUBLISH_KEPT = """
local kind, k, excl, chan, s, prefix = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local size, ttl, create, head, here = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11], ARGV[12], tonumber(ARGV[13])
local n = 0
for _, node in ipairs(others()) do
  if kind == 'all' then n = n + num(redis.call('HGET', key(node, 't'), '*'))
  elseif kind == 'client' then n = n + num(redis.call('HGET', key(node, 'c'), k))
  else
    n = n + num(redis.call('HGET', key(node, 't'), 'r:' .. k))
    if excl ~= '' then n = n - num(redis.call('HGET', key(node, 'r:' .. k), excl)) end
  end
end
if create ~= '1' and n + here == 0 and redis.call('EXISTS', mk(s)) == 0 then return {n, 0, 0} end
local m = ensure(s, ttl)
local off = redis.call('HINCRBY', m, 'o', 1)
local body = prefix .. ',"offset":' .. off .. ',"epoch":"' .. redis.call('HGET', m, 'e') .. '"}'
redis.call('XADD', hk(s), 'MAXLEN', size, off .. '-0', 'd', body, 't', now_ms())
redis.call('PEXPIRE', hk(s), ttl)
redis.call('PUBLISH', chan, head .. off .. ']\\n' .. body)
return {n, 1, off}
"""
# ARGV[3] = stream to touch ('' for none), ARGV[4] = ttl ms, ARGV[5..] = streams.
# Returns {epoch, offset, ...} per stream ('' and 0: no history).
_POSITIONS = """
if ARGV[3] ~= '' then
  ensure(ARGV[3], tonumber(ARGV[4]))
  if redis.call('EXISTS', hk(ARGV[3])) == 1 then redis.call('PEXPIRE', hk(ARGV[3]), tonumber(ARGV[4])) end
end
local out = {}
for i = 5, #ARGV do
  local m = redis.call('HMGET', mk(ARGV[i]), 'e', 'o')
  out[#out + 1] = m[1] or ''
  out[#out + 1] = tonumber(m[2]) or 0
end
return out
"""
# ARGV[3] = stream, ARGV[4] = the client's offset, ARGV[5] = its epoch, ARGV[6] = ttl ms.
# Returns {epoch, last offset, first offset returned (0: none), offset, text, ...}: the
# entries after the client's offset younger than ttl, when the epoch is the client's.
_SINCE = """
local m = redis.call('HMGET', mk(ARGV[3]), 'e', 'o')
if not m[1] then return {'', 0, 0} end
local after, cutoff = tonumber(ARGV[4]), now_ms() - tonumber(ARGV[6])
local out = {m[1], tonumber(m[2]), 0}
if ARGV[5] ~= m[1] and not (after == 0 and ARGV[5] == '') then return out end
for _, e in ipairs(redis.call('XRANGE', hk(ARGV[3]), '(' .. after .. '-0', '+')) do
  if tonumber(e[2][4]) >= cutoff then
    local off = tonumber(string.match(e[1], '^(%d+)'))
    if out[3] == 0 then out[3] = off end
    out[#out + 1] = off
    out[#out + 1] = e[2][2]
  end
end
return out
"""
_CLIENTS = """
local out = {}
for _, node in ipairs(others()) do
  for _, v in ipairs(redis.call('HGETALL', key(node, 'c'))) do out[#out + 1] = v end
end
return out
"""
_CLIENT_COUNT = """
local n = 0
for _, node in ipairs(others()) do n = n + num(redis.call('HGET', key(node, 'c'), ARGV[3])) end
return n
"""
_MEMBERS = """
local out = {}
for _, node in ipairs(others()) do
  for _, v in ipairs(redis.call('HKEYS', key(node, 'r:' .. ARGV[3]))) do out[#out + 1] = v end
end
return out
"""
_IN_ROOM = """
for _, node in ipairs(others()) do
  if redis.call('HEXISTS', key(node, 'r:' .. ARGV[3]), ARGV[4]) == 1 then return 1 end
end
return 0
"""
# drop(node) deletes a node's presence and returns {room, client, ...} it held
_DROP = """
local function drop(node)
  local held = {}
  for _, f in ipairs(redis.call('HKEYS', key(node, 't'))) do
    if string.sub(f, 1, 2) == 'r:' then
      local room = string.sub(f, 3)
      for _, cid in ipairs(redis.call('HKEYS', key(node, f))) do held[#held + 1] = {room, cid} end
      redis.call('DEL', key(node, f))
    end
  end
  redis.call('DEL', key(node, 't'), key(node, 'c'))
  redis.call('ZREM', P .. 'nodes', node)
  return held
end
"""
# ARGV[3] = ttl ms (0: unregister): forget this node's presence, then (re)join the live set
_REGISTER = """
drop(me)
if tonumber(ARGV[3]) > 0 then redis.call('ZADD', P .. 'nodes', now_ms() + tonumber(ARGV[3]), me) end
return 1
"""
# ARGV[3] = ttl ms. Returns {1 if this node was still registered, room, client, ...} where the
# pairs are room members that left the cluster with the dead nodes this call cleaned up.
_HEARTBEAT = """
local now = now_ms()
local known = redis.call('ZSCORE', P .. 'nodes', me)
if known then redis.call('ZADD', P .. 'nodes', now + tonumber(ARGV[3]), me) end
local gone, seen = {}, {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', '(' .. now)) do
  for _, rc in ipairs(drop(node)) do gone[#gone + 1] = rc end
end
local out = {known and 1 or 0}
local alive = live()
for _, rc in ipairs(gone) do
  local id = rc[1] .. '\\0' .. rc[2]
  local present = seen[id]
  for _, node in ipairs(alive) do
    if present then break end
    present = redis.call('HEXISTS', key(node, 'r:' .. rc[1]), rc[2]) == 1
  end
  if not present then out[#out + 1] = rc[1]; out[#out + 1] = rc[2] end
  seen[id] = true
end
return out
"""


class Bus:
    """The Redis side of the backplane, shared with the external emitter: scripts and keys."""

    def __init__(self, client: redis.Redis, node_id: str) -> None:
        self.client = client
        self.node_id = node_id
        # pub/sub ignores the database number: put it in the channel, so deployments that
        # share a Redis on different databases do not hear each other
        self.channel = f"{PREFIX}bus:{client.connection_pool.connection_kwargs.get('db', 0)}"
        self._publish = self._script(_PUBLISH)
        self._clients = self._script(_CLIENTS)
        self._members = self._script(_MEMBERS)
        self._client_count = self._script(_CLIENT_COUNT)
        self._in_room = self._script(_IN_ROOM)
        self._register = self._script(_DROP + _REGISTER)
        self._heartbeat = self._script(_DROP + _HEARTBEAT)
        self._publish_kept = self._script(_HISTORY + _PUBLISH_KEPT)
        self._positions = self._script(_HISTORY + _POSITIONS)
        self._since = self._script(_HISTORY + _SINCE)

    def _script(self, body: str) -> Any:
        return self.client.register_script(_LUA_PRELUDE + body)

    def _args(self, *rest: Any) -> list[Any]:
        return [PREFIX, self.node_id, *rest]

    def publish(self, target: Target, frame: bytes) -> int:
        """Hand `frame` to the other nodes; return how many connections they hold for `target`."""
        envelope = encode_envelope(self.node_id, target, frame)
        args = self._args(target.kind, target.key, target.exclude_client, envelope, self.channel)
        return int(self._publish(args=args))

    # ---- history --------------------------------------------------------------------------

    def publish_kept(
        self, target: Target, stream: str, prefix: str, here: int, create: bool, size: int, ttl_s: float
    ) -> tuple[int, bool]:
        """Keep and publish one message (`_PUBLISH_KEPT`); `here` is the connections this
        caller holds for `target`. Returns (connections on the other nodes, kept)."""
        args = self._args(
            target.kind, target.key, target.exclude_client, self.channel, stream, prefix, size,
            int(ttl_s * 1000), int(create), kept_head(self.node_id, target, stream), here,
        )  # fmt: skip
        n, kept, _offset = self._publish_kept(args=args)
        return int(n), bool(kept)

    def positions(self, streams: list[str], touch: str, ttl_s: float) -> list[Position]:
        flat = self._positions(args=self._args(touch, int(ttl_s * 1000), *streams))
        return [Position(int(o), e.decode()) for e, o in zip(flat[::2], flat[1::2], strict=True)]

    def since(self, stream: str, pos: Position, ttl_s: float) -> Replay:
        """What `stream` kept after `pos`, as JSON texts encoded to frames here."""
        out = self._since(args=self._args(stream, pos.offset, pos.epoch, int(ttl_s * 1000)))
        current = Position(int(out[1]), out[0].decode())
        if not current.epoch:
            current = EMPTY
        first = int(out[2]) or None
        if not decide(pos, current, first):
            return Replay(False, [], current)
        pairs = zip(out[3::2], out[4::2], strict=True)
        return Replay(True, [(int(off), text_frame(body.decode("utf-8"))) for off, body in pairs], current)

    def clients(self) -> dict[str, int]:
        """Client ids and connection counts on the other live nodes."""
        flat = self._clients(args=self._args())
        out: dict[str, int] = {}
        for cid, n in zip(flat[::2], flat[1::2], strict=True):
            out[cid.decode()] = out.get(cid.decode(), 0) + int(n)
        return out

    def client_count(self, client_id: str) -> int:
        """Chat connections `client_id` holds on the other live nodes."""
        return int(self._client_count(args=self._args(client_id)))

    def room_members(self, room: str) -> set[str]:
        return {cid.decode() for cid in self._members(args=self._args(room))}

    def in_room(self, pipe: redis.client.Pipeline, room: str, client_id: str) -> None:
        """Queue on `pipe`: is `client_id` in `room` on another live node (1/0)?"""
        self._in_room(args=self._args(room, client_id), client=pipe)

    def write_presence(self, pipe: redis.client.Pipeline, writes: dict[tuple[str, str], int]) -> None:
        """Queue this node's presence changes: (hash suffix, field) -> count, 0 deletes."""
        for (suffix, field), value in writes.items():
            key = f"{PREFIX}n:{self.node_id}:{suffix}"
            if value:
                pipe.hset(key, field, value)
            else:
                pipe.hdel(key, field)

    def register(self, pipe: redis.client.Pipeline | None, ttl_s: float) -> None:
        """Drop this node's presence and join the live set (ttl 0: only drop)."""
        self._register(args=self._args(int(ttl_s * 1000)), client=pipe)

    def heartbeat(self, ttl_s: float) -> tuple[bool, list[tuple[str, str]]]:
        """Renew this node; clean up dead ones. Returns (still registered, (room, client) that left)."""
        out = self._heartbeat(args=self._args(int(ttl_s * 1000)))
        pairs = [(r.decode(), c.decode()) for r, c in zip(out[1::2], out[2::2], strict=True)]
        return bool(out[0]), pairs
