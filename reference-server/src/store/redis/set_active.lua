-- ARGV: prefix, user, at. Keeps the max. Returns 0 for an unknown user.
local k = ARGV[1]..'u:'..ARGV[2]
if redis.call('EXISTS', k) == 0 then return 0 end
local prev = tonumber(redis.call('HGET', k, 'active') or '0')
if tonumber(ARGV[3]) > prev then redis.call('HSET', k, 'active', ARGV[3]) end
return 1
