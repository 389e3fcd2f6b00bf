-- KEYS: h, hm. ARGV: the client's offset, its epoch, ttl ms. Returns {epoch, last offset,
-- first offset returned (0: none), offset, text, ...}: the entries after the client's
-- offset younger than ttl, when the epoch is the client's and they run without a gap up
-- to the last offset (an offset published unkept, `_PUBLISH_KEPT` store 0, is a gap:
-- then no entries, first 0, and the resume is not recovered).
local m = redis.call('HMGET', KEYS[2], 'e', 'o')
if not m[1] then return {'', 0, 0} end
local after, cutoff = tonumber(ARGV[1]), now_ms() - tonumber(ARGV[3])
local out = {m[1], tonumber(m[2]), 0}
if ARGV[2] ~= m[1] and not (after == 0 and ARGV[2] == '') then return out end
local last = nil
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. after .. '-0', '+')) do
  if tonumber(e[2][4]) >= cutoff then
    local off = tonumber(string.match(e[1], '^(%d+)'))
    if last and off ~= last + 1 then return {m[1], out[2], 0} end
    last = off
    if out[3] == 0 then out[3] = off end
    out[#out + 1] = off
    out[#out + 1] = e[2][2]
  end
end
if last and last ~= out[2] then return {m[1], out[2], 0} end
return out
