-- The channel's half of an accept. KEYS (all in the channel's slot): head, msgs,
-- pend, pm, dd, dt, and for a group channel (group = '1') the group's name and
-- members. ARGV: from, client_msg_id, ts, payload, members (comma-separated; a
-- group's are read here instead), cutoff, ttl (see dedupe.lua), group.
-- Dedupes (from, client_msg_id) within the channel; otherwise checks that the
-- sender is a member of the group (atomically with taking the id, so a member
-- removed concurrently cannot slip a message in or out), takes the next id,
-- stores the message and records it as pending (not yet in every member's inbox)
-- with the members it goes to.
-- Returns `{2}` for an unknown group, `{3}` for a sender outside it, else
-- `{created, id, records expired, pending_id, pending_entry, ...}`: every pending
-- message with an id up to this one, ascending, each entry
-- `from\nts\nmembers\nclient_msg_id`.
local head, msgs, pend, pm, cdd, cdt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local from, cmid, ts, payload, members = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cutoff, ttl, group = ARGV[6], ARGV[7], ARGV[8]
local dkey = from .. '\n' .. cmid
local created = 0
local trimmed = dedupe_trim(cdd, cdt, cutoff)
local id = dedupe_get(cdd, cdt, dkey, cutoff)
if id then
  id = tonumber(id)
else
  if group == '1' then
    if redis.call('EXISTS', KEYS[7]) == 0 then return {2} end
    local list = redis.call('LRANGE', KEYS[8], 0, -1)
    local member = false
    for i = 1, #list do
      if list[i] == from then member = true end
    end
    if not member then return {3} end
    members = table.concat(list, ',')
  end
  id = redis.call('INCR', head)
  redis.call('HSET', msgs, id, payload)
  dedupe_put(cdd, cdt, dkey, id, ts, ttl)
  redis.call('ZADD', pend, id, id)
  redis.call('HSET', pm, id, from .. '\n' .. ts .. '\n' .. members .. '\n' .. cmid)
  created = 1
end
local out = {created, id, trimmed}
local ids = redis.call('ZRANGEBYSCORE', pend, '-inf', id)
for i = 1, #ids do
  local entry = redis.call('HGET', pm, ids[i])
  if entry then
    out[#out + 1] = tonumber(ids[i])
    out[#out + 1] = entry
  end
end
return out
