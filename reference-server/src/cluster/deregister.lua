-- A node leaving (SIGTERM). KEYS (the registry's slot): nodes, info, reap, seen.
-- ARGV: instance, offline_after_ms. It leaves discovery at once; its users'
-- presence is reaped once offline_after has passed (a user whose devices moved to
-- another node by then stays online without a flap).
local nodes, info, reap, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', nodes, ARGV[1])
redis.call('HDEL', info, ARGV[1])
redis.call('HSET', seen, ARGV[1], now)
redis.call('ZADD', reap, now + tonumber(ARGV[2]), ARGV[1])
return 1
