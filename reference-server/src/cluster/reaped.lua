-- A dead node's users are cleaned up. KEYS (the registry's slot): reap, seen.
-- ARGV: instance.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
