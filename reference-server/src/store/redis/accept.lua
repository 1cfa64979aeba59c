-- ARGV: prefix, channel, from, client_msg_id, ts, payload, members...
-- Returns `{1, "channel\nid\nseq\nts"}` for a duplicate, `{2}` for an unknown
-- member, or `{0, id, seq of each member...}`.
local p, channel, from, cmid, ts, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local seen = redis.call('HGET', p..'dd:'..from, cmid)
if seen then return {1, seen} end
for i = 7, #ARGV do
  if redis.call('EXISTS', p..'u:'..ARGV[i]) == 0 then return {2} end
end
local id = redis.call('HINCRBY', p..'chead', channel, 1)
redis.call('HSET', p..'ch:'..channel, id, payload)
local out = {0, id}
local sender_seq = 0
local ref = channel..'\n'..string.format('%d', id)
for i = 7, #ARGV do
  local m = ARGV[i]
  local seq = redis.call('INCR', p..'ih:'..m)
  redis.call('HSET', p..'ib:'..m, seq, ref)
  out[#out + 1] = seq
  if m == from then sender_seq = seq end
end
redis.call('HSET', p..'dd:'..from, cmid, ref..'\n'..string.format('%d', sender_seq)..'\n'..ts)
return out
