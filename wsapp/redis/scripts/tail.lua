-- KEYS: h, hm. ARGV: n, ttl ms. Returns {epoch, last offset, offset, text, ...}: the last n
-- entries kept younger than ttl, oldest first ('' and 0: no history).
local m = redis.call('HMGET', KEYS[2], 'e', 'o')
if not m[1] then return {'', 0} end
local cutoff = now_ms() - tonumber(ARGV[2])
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', tonumber(ARGV[1]))
local out = {m[1], tonumber(m[2])}
for i = #entries, 1, -1 do
  local e = entries[i]
  if tonumber(e[2][4]) >= cutoff then
    out[#out + 1] = tonumber(string.match(e[1], '^(%d+)'))
    out[#out + 1] = e[2][2]
  end
end
return out
