-- KEYS (the group's slot): name, members. ARGV: name, members...
redis.call('SET', KEYS[1], ARGV[1])
if #ARGV >= 2 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 2)) end
return 1
