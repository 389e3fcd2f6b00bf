-- KEYS: n, m, h, hm. ARGV: me, exclude, publish command, channel, envelope, dead nodes...
-- After Redis refused a history write (full): forget the stream (DEL is allowed when
-- Redis is full, and frees memory), so a resume across this message says `recovered:
-- false`, and publish the message without a position (`w1`). Returns the other live
-- nodes' receivers.
local n = receivers(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 6)
redis.call('DEL', KEYS[3], KEYS[4])
if n > 0 then redis.call(ARGV[3], ARGV[4], ARGV[5]) end
return n
