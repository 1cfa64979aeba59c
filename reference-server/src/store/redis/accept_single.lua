-- The whole accept in one script, for a single Redis (not a Redis Cluster: the
-- keys span slots). It writes exactly what the stepwise accept writes, so both
-- leave the same data. KEYS: the sender's dd and dt, the channel's head, msgs, dd
-- and dt, for a group channel (group = '1') the group's name and members, then per
-- member the caller passed: its account, ih, ib, ic. ARGV: channel, from,
-- client_msg_id, ts, payload, cutoff, ttl (see dedupe.lua), group, members...
-- A group's members are read here, atomically with the append: the sender must be
-- one, and they (not the caller's list) get the message.
-- Returns `{1, "channel\nid\nseq\nts"}` for a duplicate, `{2}` for an unknown group
-- or member, `{3}` for a sender outside the group, `{4, members...}` when the group
-- has a member the caller did not pass (call again with these), or
-- `{0, id, channel records expired, member, seq, member, seq...}`.
local dd, dt, head, msgs, cdd, cdt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ch, from, cmid, ts, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cutoff, ttl, group = ARGV[6], ARGV[7], ARGV[8]
local trimmed = dedupe_trim(cdd, cdt, cutoff)
dedupe_trim(dd, dt, cutoff)
local seen = dedupe_get(dd, dt, cmid, cutoff)
if seen then return {1, seen} end
-- The recipients, as indexes among the passed members (whose keys start after `base`).
local base, passed, recipients = 6, {}, {}
for i = 9, #ARGV do passed[ARGV[i]] = i - 8 end
if group == '1' then
  if redis.call('EXISTS', KEYS[7]) == 0 then return {2} end
  base = 8
  local list = redis.call('LRANGE', KEYS[8], 0, -1)
  local member = false
  for i = 1, #list do
    if list[i] == from then member = true end
  end
  if not member then return {3} end
  for i = 1, #list do
    local k = passed[list[i]]
    if not k then
      table.insert(list, 1, 4)
      return list
    end
    recipients[i] = k
  end
else
  for i = 9, #ARGV do recipients[#recipients + 1] = i - 8 end
end
for _, k in ipairs(recipients) do
  if redis.call('EXISTS', KEYS[base + 4 * k - 3]) == 0 then return {2} end
end
local id = redis.call('INCR', head)
redis.call('HSET', msgs, id, payload)
dedupe_put(cdd, cdt, from .. '\n' .. cmid, id, ts, ttl)
local idtext = string.format('%d', id)
local ref = ch .. '\n' .. idtext
local out = {0, id, trimmed}
local sender_seq = 0
for _, k in ipairs(recipients) do
  local seq = redis.call('INCR', KEYS[base + 4 * k - 2])
  redis.call('HSET', KEYS[base + 4 * k - 1], seq, ref)
  redis.call('HSET', KEYS[base + 4 * k], ch, idtext .. ':' .. string.format('%d', seq))
  out[#out + 1] = ARGV[8 + k]
  out[#out + 1] = seq
  if ARGV[8 + k] == from then sender_seq = seq end
end
dedupe_put(dd, dt, cmid, ref .. '\n' .. string.format('%d', sender_seq) .. '\n' .. ts, ts, ttl)
return out
