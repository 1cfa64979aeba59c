-- ARGV: prefix, group, user, max. Returns 1 added/already there, 0 unknown group
-- or user, -1 full.
local p, g, user, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', p..'gname', g) == 0 then return 0 end
if redis.call('EXISTS', p..'u:'..user) == 0 then return 0 end
local members = redis.call('LRANGE', p..'g:'..g, 0, -1)
for i = 1, #members do if members[i] == user then return 1 end end
if #members >= max then return -1 end
redis.call('RPUSH', p..'g:'..g, user)
return 1
