-- KEYS: n, m, h, hm, and, when the publish has an idempotency key, its key (`<tag>:ik:<hash>`).
-- ARGV: me, exclude, publish command, channel, JSON text without its closing brace, size,
-- ttl ms, create (1/0), w2 header start, the caller's own receivers, store (1/0), the
-- caller's own receivers that are counted in `delivered` (not holding the stream), dead
-- nodes...
-- With an idempotency key seen within ttl: nothing is written or sent; returns {3, the
-- first publish's offset, its delivered, its epoch, its status}.
-- Unless nobody receives a direct message to a stream that does not exist (create 0),
-- assigns the next offset, keeps the message (store 0: does not: its sender is over its
-- budget, and the offset missing from the stream is a gap no resume recovers across) and
-- publishes it to every node that receives it, the caller's included (one channel per
-- stream: offset order everywhere); with a key, remembers "status offset delivered epoch"
-- under it for ttl. Returns {1 kept / 2 published unkept / 0 neither, offset, the other
-- live nodes' receivers, epoch}.
if #KEYS == 5 then
  local prior = redis.call('GET', KEYS[5])
  if prior then
    local st, o, d, e = string.match(prior, '^(%d+) (%d+) (%d+) (%S*)$')
    return {3, tonumber(o), tonumber(d), e, tonumber(st)}
  end
end
local n = receivers(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 13)
local size, ttl, here = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[10])
if ARGV[8] ~= '1' and n <= 0 and here == 0 and redis.call('EXISTS', KEYS[4]) == 0 then return {0, 0, n, ''} end
local off
if redis.call('EXISTS', KEYS[4]) == 1 then off = redis.call('HINCRBY', KEYS[4], 'o', 1) end
ensure(KEYS[3], KEYS[4], ttl)
if not off then off = redis.call('HINCRBY', KEYS[4], 'o', 1) end
local epoch = redis.call('HGET', KEYS[4], 'e')
local body = ARGV[5] .. ',"offset":' .. off .. ',"epoch":"' .. epoch .. '"}'
local status = 2
if ARGV[11] == '1' then
  redis.call('XADD', KEYS[3], 'MAXLEN', size, off .. '-0', 'd', body, 't', now_ms())
  status = 1
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  trim(KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
if n > 0 or here > 0 then redis.call(ARGV[3], ARGV[4], ARGV[9] .. off .. ']\n' .. body) end
if #KEYS == 5 then
  local delivered = math.max(n, 0) + tonumber(ARGV[12])
  redis.call('SET', KEYS[5], status .. ' ' .. off .. ' ' .. delivered .. ' ' .. epoch, 'PX', ttl)
end
return {status, off, n, epoch}
