-- KEYS: n, m. ARGV: me, exclude, publish command, channel, envelope, always (1/0), dead
-- nodes... Returns the other live nodes' receivers; publishes when there are any (or
-- always: a close).
local n = receivers(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 7)
if n > 0 or ARGV[6] == '1' then redis.call(ARGV[3], ARGV[4], ARGV[5]) end
return n
