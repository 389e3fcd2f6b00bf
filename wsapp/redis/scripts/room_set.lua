-- KEYS: n, m of a room. ARGV: me, this node's connections in the room ('' unchanged), the
-- number k of client ids asked about, those k client ids, then client id, its connections
-- here, ... Writes this node's part; returns, per client id asked, the other nodes that
-- hold it in the room after the write (atomic: two nodes cannot both miss each other).
local me, k = ARGV[1], tonumber(ARGV[3])
if ARGV[2] ~= '' then set_count(KEYS[1], me, tonumber(ARGV[2])) end
for i = 4 + k, #ARGV, 2 do
  local t = parse(redis.call('HGET', KEYS[2], ARGV[i]))
  t[me] = tonumber(ARGV[i + 1])
  put(KEYS[2], ARGV[i], t)
end
local out = {}
for i = 4, 3 + k do
  local nodes = {}
  for node, c in pairs(parse(redis.call('HGET', KEYS[2], ARGV[i]))) do
    if node ~= me and c > 0 then nodes[#nodes + 1] = node end
  end
  out[#out + 1] = nodes
end
return out
