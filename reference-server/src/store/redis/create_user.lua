-- ARGV: prefix, username, hash. Returns the new id, or 0 if the name is taken.
local p = ARGV[1]
if redis.call('HEXISTS', p..'names', ARGV[2]) == 1 then return 0 end
local id = redis.call('HINCRBY', p..'next', 'user', 1)
redis.call('HSET', p..'names', ARGV[2], id)
redis.call('HSET', p..'u:'..id, 'name', ARGV[2], 'hash', ARGV[3])
return id
