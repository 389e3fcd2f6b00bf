-- KEYS: n, m, i of a room. ARGV: me, this node's connections in the room ('' unchanged), the
-- number k of client ids asked about, those k client ids, then client id, its connections
-- here, its presence entry ('' unchanged), ... Writes this node's part; returns, per client
-- id asked, the other nodes that hold it in the room after the write (atomic: two nodes
-- cannot both miss each other). A client id gone from the room everywhere loses its entry in i.
local me, k = ARGV[1], tonumber(ARGV[3])
if ARGV[2] ~= '' then set_count(KEYS[1], me, tonumber(ARGV[2])) end
for i = 4 + k, #ARGV, 3 do
  local t = parse(redis.call('HGET', KEYS[2], ARGV[i]))
  t[me] = tonumber(ARGV[i + 1])
  if put(KEYS[2], ARGV[i], t) == '' then
    redis.call('HDEL', KEYS[3], ARGV[i])
  elseif ARGV[i + 2] ~= '' then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
  end
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
