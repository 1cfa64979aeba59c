-- KEYS (the group's slot): name, members. ARGV: user|''. With a user: removes it.
-- Returns `{0}` for an unknown group, else `{1, members...}`.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if ARGV[1] ~= '' then redis.call('LREM', KEYS[2], 0, ARGV[1]) end
local out = redis.call('LRANGE', KEYS[2], 0, -1)
table.insert(out, 1, 1)
return out
