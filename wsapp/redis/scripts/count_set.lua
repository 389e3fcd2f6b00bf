-- KEYS: a target's n. ARGV: node, its connections for the target (0 deletes).
set_count(KEYS[1], ARGV[1], tonumber(ARGV[2]))
return 1
