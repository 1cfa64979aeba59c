-- The dedupe window, shared by the accept scripts (Rust prepends this file to
-- each). A dedupe record lives in a hash (field -> record) and the ts of its
-- message in a sorted set beside it (`dt`, same slot), so records past the
-- window are found without a scan. The scripts take the cutoff from the last
-- `Store::expire` call (records of messages with a ts below it are expired;
-- '0' = none known yet) and a TTL in ms for both keys ('0' = none): a user or
-- channel that stops sending has its whole record set dropped by Redis.
local DEDUPE_TRIM = 64

-- Removes up to DEDUPE_TRIM expired records of one hash; returns how many.
local function dedupe_trim(h, z, cutoff)
  if cutoff == '0' then return 0 end
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. cutoff, 'LIMIT', 0, DEDUPE_TRIM)
  if #old > 0 then
    redis.call('HDEL', h, unpack(old))
    redis.call('ZREM', z, unpack(old))
  end
  return #old
end

-- The record of `field` if it is live, else nil (an expired one the trim did not
-- reach yet is removed here).
local function dedupe_get(h, z, field, cutoff)
  local rec = redis.call('HGET', h, field)
  if rec and cutoff ~= '0' then
    local ts = redis.call('ZSCORE', z, field)
    if ts and tonumber(ts) < tonumber(cutoff) then
      redis.call('HDEL', h, field)
      redis.call('ZREM', z, field)
      return nil
    end
  end
  return rec
end

-- Writes a record with its message's ts, and renews both keys' TTL.
local function dedupe_put(h, z, field, rec, ts, ttl)
  redis.call('HSET', h, field, rec)
  redis.call('ZADD', z, ts, field)
  if ttl ~= '0' then
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end

