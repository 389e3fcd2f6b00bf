-- A room member's value in `<tag>:m`: "node=count node=count" (node ids have no space or '=').
local function parse(v)
  local t = {}
  if v then for node, c in string.gmatch(v, '(%S+)=(%d+)') do t[node] = tonumber(c) end end
  return t
end
local function render(t)
  local parts = {}
  for node, c in pairs(t) do if c > 0 then parts[#parts + 1] = node .. '=' .. c end end
  table.sort(parts)
  return table.concat(parts, ' ')
end
local function put(key, field, t)
  local v = render(t)
  if v == '' then redis.call('HDEL', key, field) else redis.call('HSET', key, field, v) end
  return v
end
-- `<tag>:n` keeps the sum of its node fields in the field '*' (maintained by every write)
local function set_count(nkey, node, value)
  local old = tonumber(redis.call('HGET', nkey, node) or '0')
  if value > 0 then redis.call('HSET', nkey, node, value) else redis.call('HDEL', nkey, node) end
  if value ~= old then
    if redis.call('HINCRBY', nkey, '*', value - old) <= 0 then redis.call('HDEL', nkey, '*') end
  end
end
-- the other live nodes' connections for the target: the total, minus the caller's own,
-- minus the dead nodes not yet reaped (ARGV[dead..]), minus the excluded client's own.
-- O(1) in the number of nodes (plus the few dead ones).
local function receivers(nkey, mkey, me, excl, dead)
  local n = tonumber(redis.call('HGET', nkey, '*') or '0') - tonumber(redis.call('HGET', nkey, me) or '0')
  local gone = {}
  for i = dead, #ARGV do
    gone[ARGV[i]] = true
    n = n - tonumber(redis.call('HGET', nkey, ARGV[i]) or '0')
  end
  if excl ~= '' then
    for node, c in pairs(parse(redis.call('HGET', mkey, excl))) do
      if node ~= me and not gone[node] then n = n - c end
    end
  end
  return n
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
