-- KEYS: h, hm. ARGV: touch (1/0), ttl ms. Returns {epoch, offset} ('' and 0: no history).
if ARGV[1] == '1' then
  ensure(KEYS[1], KEYS[2], tonumber(ARGV[2]))
  if redis.call('EXISTS', KEYS[1]) == 1 then
    trim(KEYS[1], tonumber(ARGV[2]))
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  end
end
local m = redis.call('HMGET', KEYS[2], 'e', 'o')
return {m[1] or '', tonumber(m[2]) or 0}
