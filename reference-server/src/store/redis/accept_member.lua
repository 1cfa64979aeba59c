-- One member's half of an accept. KEYS (all in the member's slot): ih, ib, ic, dd,
-- dt. ARGV: channel, target id, cutoff, ttl (see dedupe.lua), then for each
-- pending message of the channel this user is a member of, ascending by id: id,
-- client_msg_id ('' unless this user sent it), ts. Appends every one not yet in
-- this inbox, in id order (`ic` holds, per channel, `last_id:its_seq`), writes the
-- sender's dedupe record with its seq (unless a live one is there), and returns
-- this user's seq of the target message (0 if not found).
local ih, ib, ic, dd, dt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ch, target, cutoff, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local last, lastseq = 0, 0
local cur = redis.call('HGET', ic, ch)
if cur then
  local c = string.find(cur, ':', 1, true)
  last, lastseq = tonumber(string.sub(cur, 1, c - 1)), tonumber(string.sub(cur, c + 1))
end
-- The seq of an entry already appended before the last one: a look back from the
-- head (the entry is recent: its accept is still running).
local function find(ref)
  local top = tonumber(redis.call('GET', ih) or '0')
  local s = top
  while s >= 1 and top - s < 8192 do
    local lo = math.max(1, s - 255)
    local seqs = {}
    for k = s, lo, -1 do seqs[#seqs + 1] = k end
    local refs = redis.call('HMGET', ib, unpack(seqs))
    for k = 1, #refs do
      if refs[k] == ref then return seqs[k] end
    end
    s = lo - 1
  end
  return 0
end
local result = 0
local moved, trimmed = false, false
for i = 5, #ARGV, 3 do
  local id, cmid, ts = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local ref = ch .. '\n' .. ARGV[i]
  local seq
  if id > last then
    seq = redis.call('INCR', ih)
    redis.call('HSET', ib, seq, ref)
    if cmid ~= '' then
      if not trimmed then
        dedupe_trim(dd, dt, cutoff)
        trimmed = true
      end
      if not dedupe_get(dd, dt, cmid, cutoff) then
        dedupe_put(dd, dt, cmid, ref .. '\n' .. string.format('%d', seq) .. '\n' .. ts, ts, ttl)
      end
    end
    last, lastseq, moved = id, seq, true
  elseif id == last then
    seq = lastseq
  else
    seq = find(ref)
  end
  if id == target then result = seq end
end
if moved then
  redis.call('HSET', ic, ch, string.format('%d', last) .. ':' .. string.format('%d', lastseq))
end
return result
