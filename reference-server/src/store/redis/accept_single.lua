-- The whole accept in one script, for a single Redis (not a Redis Cluster: the
-- keys span slots). It writes exactly what the stepwise accept writes, so both
-- leave the same data. KEYS: the sender's dd, the channel's head, msgs and dd,
-- then per member: its account, ih, ib, ic. ARGV: channel, from, client_msg_id,
-- ts, payload, members... Returns `{1, "channel\nid\nseq\nts"}` for a duplicate,
-- `{2}` for an unknown member, or `{0, id, seq of each member...}`.
local dd, head, msgs, cdd = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ch, from, cmid, ts, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local seen = redis.call('HGET', dd, cmid)
if seen then return {1, seen} end
local n = #ARGV - 5
for i = 1, n do
  if redis.call('EXISTS', KEYS[4 * i + 1]) == 0 then return {2} end
end
local id = redis.call('INCR', head)
redis.call('HSET', msgs, id, payload)
redis.call('HSET', cdd, from .. '\n' .. cmid, id)
local idtext = string.format('%d', id)
local ref = ch .. '\n' .. idtext
local out = {0, id}
local sender_seq = 0
for i = 1, n do
  local seq = redis.call('INCR', KEYS[4 * i + 2])
  redis.call('HSET', KEYS[4 * i + 3], seq, ref)
  redis.call('HSET', KEYS[4 * i + 4], ch, idtext .. ':' .. string.format('%d', seq))
  out[#out + 1] = seq
  if ARGV[5 + i] == from then sender_seq = seq end
end
redis.call('HSET', dd, cmid, ref .. '\n' .. string.format('%d', sender_seq) .. '\n' .. ts)
return out
