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

from .registry import Target

PREFIX = "wsapp:"  # every key and the channel; use another database (redis://host/1) to separate deployments
WIRE_VERSION = "w1"
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
    head, sep, frame = payload.partition(b"\n")
    version, origin, kind, key, exclude = json.loads(head)
    if not sep or version != WIRE_VERSION or kind not in ("all", "client", "room", "close"):
        raise ValueError(f"not a {WIRE_VERSION} envelope")
    return str(origin), Target(kind, key, exclude), frame


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

    def _script(self, body: str) -> Any:
        return self.client.register_script(_LUA_PRELUDE + body)

    def _args(self, *rest: Any) -> list[Any]:
        return [PREFIX, self.node_id, *rest]

    def publish(self, target: Target, frame: bytes) -> int:
        """Hand `frame` to the other nodes; return how many connections they hold for `target`."""
        envelope = encode_envelope(self.node_id, target, frame)
        args = self._args(target.kind, target.key, target.exclude_client, envelope, self.channel)
        return int(self._publish(args=args))

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
