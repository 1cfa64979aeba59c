-- The end of an accept. KEYS (the channel's slot): pend, pm. ARGV: ids now in every
-- member's inbox; they stop being pending.
redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return 1
