-- ARGV: prefix, name, members... Returns the group number, or 0 for an unknown user.
local p = ARGV[1]
for i = 3, #ARGV do
  if redis.call('EXISTS', p..'u:'..ARGV[i]) == 0 then return 0 end
end
local n = redis.call('HINCRBY', p..'next', 'group', 1)
redis.call('HSET', p..'gname', n, ARGV[2])
if #ARGV >= 3 then redis.call('RPUSH', p..'g:'..n, unpack(ARGV, 3)) end
return n
