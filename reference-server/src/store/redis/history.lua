-- KEYS (the channel's slot): head, msgs. ARGV: after|'', before|'', limit.
-- Returns `{first_id, json...}`.
local head, msgs, limit = KEYS[1], KEYS[2], tonumber(ARGV[3])
local hi = tonumber(redis.call('GET', head) or '0')
if ARGV[2] ~= '' then hi = math.min(hi, tonumber(ARGV[2]) - 1) end
local lo
if ARGV[1] ~= '' then
  lo = tonumber(ARGV[1]) + 1
  hi = math.min(hi, lo + limit - 1)
else
  lo = math.max(1, hi - limit + 1)
end
if lo > hi or limit < 1 then return {} end
local ids = {}
for i = lo, hi do ids[#ids + 1] = i end
local out = redis.call('HMGET', msgs, unpack(ids))
table.insert(out, 1, lo)
return out
