-- KEYS (the user's slot): ih, ib. ARGV: since, limit.
-- Returns `{seq, channel, id, ...}`; the messages themselves live in their
-- channels' slots and are read next, one HMGET per channel.
local since, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local lo, hi = since + 1, math.min(head, since + limit)
if lo > hi then return {} end
local seqs = {}
for s = lo, hi do seqs[#seqs + 1] = s end
local refs = redis.call('HMGET', KEYS[2], unpack(seqs))
local out = {}
for i = 1, #refs do
  local ref = refs[i]
  if ref then
    local nl = string.find(ref, '\n', 1, true)
    out[#out + 1] = lo + i - 1
    out[#out + 1] = string.sub(ref, 1, nl - 1)
    out[#out + 1] = string.sub(ref, nl + 1)
  end
end
return out
