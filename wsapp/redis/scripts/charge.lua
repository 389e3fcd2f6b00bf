-- KEYS: a client id's budget (`<tag>:hb`). ARGV: bytes wanted, bytes needed at least, the
-- budget, ttl ms. Grants what is wanted (at most what is left, nothing when less than what
-- is needed) and counts it; the count goes `ttl` after the window's first grant.
-- Returns {bytes granted, ms left in the window}.
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[3]) - used)
if grant < tonumber(ARGV[2]) then grant = 0 end
if grant > 0 then
  redis.call('INCRBY', KEYS[1], grant)
  if used == 0 then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4])) end
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = tonumber(ARGV[4]) end
return {grant, left}
