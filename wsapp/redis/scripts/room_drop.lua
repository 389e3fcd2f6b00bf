-- KEYS: n, m of a room. ARGV: a dead node. Removes it; returns {client id, the nodes it
-- is still on ("node=count ..."), ...} for each member it held.
set_count(KEYS[1], ARGV[1], 0)
local out = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local t = parse(all[i + 1])
  if t[ARGV[1]] then
    t[ARGV[1]] = nil
    out[#out + 1] = all[i]
    out[#out + 1] = put(KEYS[2], all[i], t)
  end
end
return out
