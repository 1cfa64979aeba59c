-- A node's refresh, about once a second. KEYS (the registry's slot): nodes (zset
-- instance -> expiry ms), info (hash instance -> JSON), reap (zset instance -> due
-- ms), seen (hash instance -> last seen ms). ARGV: instance, JSON, ttl_ms,
-- offline_after_ms, lease_ms, max_claims. Times are Redis's clock (TIME), so the
-- nodes' clocks never meet.
--
-- Registers (or refreshes) this node; moves every node whose entry ran out to the
-- reap list, due once offline_after has passed since it was last seen (its users'
-- heartbeats may be that old by then); claims up to max_claims due reaps for this
-- node for lease_ms (another node takes a claim over if this one dies while
-- reaping). Returns `{now, rejoined, n, (instance, expiry, JSON) x n, m,
-- instance x m (dead, not reaped yet), (instance, last_seen)...(claimed)}`;
-- `rejoined` is 1 when this node was not live before the call (first
-- registration, or its entry ran out while it was cut off).
local nodes, info, reap, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local me, json = ARGV[1], ARGV[2]
local ttl, offline_after = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, max = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local was = redis.call('ZSCORE', nodes, me)
local rejoined = 0
if (not was) or tonumber(was) <= now then rejoined = 1 end

local dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', now)
for i = 1, #dead do
  local d = dead[i]
  if d ~= me then
    local last = tonumber(redis.call('ZSCORE', nodes, d)) - ttl
    redis.call('ZREM', nodes, d)
    redis.call('HDEL', info, d)
    redis.call('HSET', seen, d, last)
    redis.call('ZADD', reap, last + offline_after, d)
  end
end

redis.call('ZADD', nodes, now + ttl, me)
redis.call('HSET', info, me, json)
if rejoined == 1 then
  redis.call('ZREM', reap, me)
  redis.call('HDEL', seen, me)
end

local claimed = {}
local due = redis.call('ZRANGEBYSCORE', reap, '-inf', now, 'LIMIT', 0, max)
for i = 1, #due do
  redis.call('ZADD', reap, now + lease, due[i])
  claimed[#claimed + 1] = due[i]
  claimed[#claimed + 1] = tonumber(redis.call('HGET', seen, due[i]) or now)
end

local live = redis.call('ZRANGEBYSCORE', nodes, '(' .. now, '+inf', 'WITHSCORES')
local out = {now, rejoined, #live / 2}
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tonumber(live[i + 1])
  out[#out + 1] = redis.call('HGET', info, live[i]) or '{}'
end
local gone = redis.call('ZRANGE', reap, 0, -1)
out[#out + 1] = #gone
for i = 1, #gone do out[#out + 1] = gone[i] end
for i = 1, #claimed do out[#out + 1] = claimed[i] end
return out
