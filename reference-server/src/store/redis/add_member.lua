-- KEYS (the group's slot): name, members. ARGV: user, max.
-- Returns 1 added/already there, 0 unknown group, -1 full.
local user, max = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local members = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 1, #members do if members[i] == user then return 1 end end
if #members >= max then return -1 end
redis.call('RPUSH', KEYS[2], user)
return 1
