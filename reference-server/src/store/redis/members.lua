-- ARGV: prefix, group, user|''. With a user: removes it. Returns `{0}` for an
-- unknown group, else `{1, members...}`.
local p, g = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p..'gname', g) == 0 then return {0} end
if ARGV[3] ~= '' then redis.call('LREM', p..'g:'..g, 0, ARGV[3]) end
local out = redis.call('LRANGE', p..'g:'..g, 0, -1)
table.insert(out, 1, 1)
return out
