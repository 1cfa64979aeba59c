-- KEYS: the user's record. ARGV: at. Keeps the max. Returns 0 for an unknown user.
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then return 0 end
local prev = tonumber(redis.call('HGET', k, 'active') or '0')
if tonumber(ARGV[1]) > prev then redis.call('HSET', k, 'active', ARGV[1]) end
return 1
