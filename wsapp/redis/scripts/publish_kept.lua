-- KEYS: n, m, h, hm. ARGV: me, exclude, publish command, channel, JSON text without its
-- closing brace, size, ttl ms, create (1/0), w2 header start, the caller's own receivers,
-- store (1/0), dead nodes...
-- Unless nobody receives a direct message to a stream that does not exist (create 0),
-- assigns the next offset, keeps the message (store 0: does not: its sender is over its
-- budget, and the offset missing from the stream is a gap no resume recovers across) and
-- publishes it to every node that receives it, the caller's included (one channel per
-- stream: offset order everywhere). Returns {1 kept / 2 published unkept / 0 neither,
-- offset, the other live nodes' receivers}.
local n = receivers(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 12)
local size, ttl, here = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[10])
if ARGV[8] ~= '1' and n <= 0 and here == 0 and redis.call('EXISTS', KEYS[4]) == 0 then return {0, 0, n} end
local off
if redis.call('EXISTS', KEYS[4]) == 1 then off = redis.call('HINCRBY', KEYS[4], 'o', 1) end
ensure(KEYS[3], KEYS[4], ttl)
if not off then off = redis.call('HINCRBY', KEYS[4], 'o', 1) end
local body = ARGV[5] .. ',"offset":' .. off .. ',"epoch":"' .. redis.call('HGET', KEYS[4], 'e') .. '"}'
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
return {status, off, n}
