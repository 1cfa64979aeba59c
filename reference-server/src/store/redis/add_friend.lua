-- ARGV: prefix, a, b. Returns 0 for an unknown user, 1 when done.
local p, a, b = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p..'u:'..a) == 0 or redis.call('EXISTS', p..'u:'..b) == 0 then return 0 end
redis.call('SADD', p..'fr:'..a, b)
redis.call('SADD', p..'fr:'..b, a)
return 1
