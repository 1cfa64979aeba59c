-- ARGV: prefix, user, since, limit. Returns `{seq, channel, id, json, ...}`.
local p, user, since, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local head = tonumber(redis.call('GET', p..'ih:'..user) or '0')
local lo, hi = since + 1, math.min(head, since + limit)
if lo > hi then return {} end
local seqs = {}
for s = lo, hi do seqs[#seqs + 1] = s end
local refs = redis.call('HMGET', p..'ib:'..user, unpack(seqs))
local out = {}
for i = 1, #refs do
  local ref = refs[i]
  local nl = string.find(ref, '\n', 1, true)
  local ch, id = string.sub(ref, 1, nl - 1), string.sub(ref, nl + 1)
  out[#out + 1] = lo + i - 1
  out[#out + 1] = ch
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', p..'ch:'..ch, id)
end
return out
