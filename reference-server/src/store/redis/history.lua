-- ARGV: prefix, channel, after|'', before|'', limit. Returns `{first_id, json...}`.
local p, channel, limit = ARGV[1], ARGV[2], tonumber(ARGV[5])
local hi = tonumber(redis.call('HGET', p..'chead', channel) or '0')
if ARGV[4] ~= '' then hi = math.min(hi, tonumber(ARGV[4]) - 1) end
local lo
if ARGV[3] ~= '' then
  lo = tonumber(ARGV[3]) + 1
  hi = math.min(hi, lo + limit - 1)
else
  lo = math.max(1, hi - limit + 1)
end
if lo > hi or limit < 1 then return {} end
local ids = {}
for i = lo, hi do ids[#ids + 1] = i end
local out = redis.call('HMGET', p..'ch:'..channel, unpack(ids))
table.insert(out, 1, lo)
return out
