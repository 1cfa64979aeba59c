-- The channel's half of an accept. KEYS (all in the channel's slot): head, msgs,
-- pend, pm, cdd. ARGV: from, client_msg_id, ts, payload, members (comma-separated).
-- Dedupes (from, client_msg_id) within the channel; otherwise takes the next id,
-- stores the message and records it as pending (not yet in every member's inbox).
-- Returns `{created, id, pending_id, pending_entry, ...}`: every pending message with
-- an id up to this one, ascending, each entry `from\nts\nmembers\nclient_msg_id`.
local head, msgs, pend, pm, cdd = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local from, cmid, ts, payload, members = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local dkey = from .. '\n' .. cmid
local created = 0
local id = redis.call('HGET', cdd, dkey)
if id then
  id = tonumber(id)
else
  id = redis.call('INCR', head)
  redis.call('HSET', msgs, id, payload)
  redis.call('HSET', cdd, dkey, id)
  redis.call('ZADD', pend, id, id)
  redis.call('HSET', pm, id, from .. '\n' .. ts .. '\n' .. members .. '\n' .. cmid)
  created = 1
end
local out = {created, id}
local ids = redis.call('ZRANGEBYSCORE', pend, '-inf', id)
for i = 1, #ids do
  local entry = redis.call('HGET', pm, ids[i])
  if entry then
    out[#out + 1] = tonumber(ids[i])
    out[#out + 1] = entry
  end
end
return out
