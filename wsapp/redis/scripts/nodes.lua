-- KEYS: the nodes sorted set. ARGV: me, ttl ms, what ('beat': renew if still there,
-- 'register', 'leave', 'read'). Returns {1 if me was there before, now ms, node, deadline, ...}.
local now = now_ms()
local known = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
if ARGV[3] == 'register' or (ARGV[3] == 'beat' and known == 1) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
elseif ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local out = {known, now}
for _, v in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do out[#out + 1] = v end
return out
