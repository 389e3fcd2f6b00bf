-- KEYS: n, m, i of a room. ARGV: a dead node. Removes it; returns {client id, the nodes it
-- is still on ("node=count ..."), ...} for each member it held; a member it was the last
-- node of loses its presence entry (i) with it.
set_count(KEYS[1], ARGV[1], 0)
local out = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local t = parse(all[i + 1])
  if t[ARGV[1]] then
    t[ARGV[1]] = nil
    out[#out + 1] = all[i]
    local rest = put(KEYS[2], all[i], t)
    if rest == '' then redis.call('HDEL', KEYS[3], all[i]) end
    out[#out + 1] = rest
  end
end
return out
