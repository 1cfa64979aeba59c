-- ARGV: prefix, user, name|''. Returns the device id, or 0 for an unknown user.
local p, user, name = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p..'u:'..user) == 0 then return 0 end
if name ~= '' then
  local id = redis.call('HGET', p..'dev:'..user, name)
  if id then return tonumber(id) end
end
local id = redis.call('HINCRBY', p..'next', 'device', 1)
if name ~= '' then redis.call('HSET', p..'dev:'..user, name, id) end
return id
