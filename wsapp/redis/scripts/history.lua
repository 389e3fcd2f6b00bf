-- History: `<tag>:h` (a Redis Stream, entry id `<offset>-0`, fields d = JSON text, t = ms)
-- and `<tag>:hm` (e = epoch, o = last offset). Both expire `ttl` after the stream's last
-- write or touch. A stream created (first message, or a flushed/restarted Redis, or
-- expired) gets a new epoch from Redis server time in microseconds, so a lost history
-- can never hand out an old epoch again.
--
-- Memory: a script's first write is a command Redis refuses when it is over `maxmemory`
-- (HSET, HINCRBY): refused, the script stops before writing anything (Redis lets a script
-- that already wrote go on past the limit, so a PEXPIRE or DEL must never come first).
-- Entries older than `ttl` are deleted a few at a time by each write and touch (`trim`),
-- so what a stream holds is what the last `ttl` wrote (what `_CHARGE` bounds per client).
local function ensure(h, m, ttl)
  if redis.call('EXISTS', m) == 0 then
    local t = redis.call('TIME')
    redis.call('HSET', m, 'e', string.format('%x.%x', tonumber(t[1]), tonumber(t[2])), 'o', 0)
    redis.call('DEL', h)
  end
  redis.call('PEXPIRE', m, ttl)
end
local function trim(h, ttl)
  local cutoff = now_ms() - ttl
  for _, e in ipairs(redis.call('XRANGE', h, '-', '+', 'COUNT', 8)) do
    if tonumber(e[2][4]) >= cutoff then break end
    redis.call('XDEL', h, e[1])
  end
end
