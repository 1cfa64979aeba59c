-- One user's state as one node instance sees it. KEYS: the user's cluster hash
-- (its slot). ARGV: instance, connected (0/1), online (0/1).
-- Fields: `l:INSTANCE` = connected there; `o:INSTANCE` = online there (value: since
-- when, ms); `n` = instances where online; `v` = presence epoch.
-- Returns `{change, epoch}`: change 1 = the user just came online cluster-wide
-- (first instance), 2 = just went offline (last instance), 0 = no change. Redis
-- runs these one at a time per user, so each transition is reported exactly once,
-- to the node that caused it; the epoch (strictly increasing, at least Redis's
-- clock in ms, so it survives the hash being deleted) orders the reports.
local h, inst = KEYS[1], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] == '1' then
  redis.call('HSET', h, 'l:' .. inst, 1)
else
  redis.call('HDEL', h, 'l:' .. inst)
end
local n = tonumber(redis.call('HGET', h, 'n') or '0')
local had = redis.call('HEXISTS', h, 'o:' .. inst)
local change = 0
if ARGV[3] == '1' and had == 0 then
  redis.call('HSET', h, 'o:' .. inst, now)
  n = n + 1
  if n == 1 then change = 1 end
elseif ARGV[3] == '0' and had == 1 then
  redis.call('HDEL', h, 'o:' .. inst)
  n = n - 1
  if n == 0 then change = 2 end
end
local v = tonumber(redis.call('HGET', h, 'v') or '0')
if change ~= 0 then
  v = math.max(v + 1, now)
  redis.call('HSET', h, 'v', v)
end
if n > 0 then
  redis.call('HSET', h, 'n', n)
else
  redis.call('HDEL', h, 'n')
  -- Nothing left but the epoch: drop the key (the next epoch starts from the clock).
  if redis.call('HLEN', h) <= 1 then redis.call('DEL', h) end
end
return {change, v}
