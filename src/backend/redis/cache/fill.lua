-- Stores one cache entry and indexes its key, then releases the fill lock held for it (one
-- script: no other process can find the lock free and the entry missing). The entry is not
-- stored when the slot saw an invalidation since the lock was taken: the answer may predate it.
--
-- KEYS[1]  the entry
-- KEYS[2]  the key's fill lock
-- KEYS[3]  the slot's invalidation counter
-- KEYS[4]  the slot's index of keys (sorted set, all scores 0, for prefix ranges)
-- KEYS[5]  the slot's expiry of keys (sorted set scored by expiry, to trim the index)
-- ARGV[1]  the lock's token (decimal), or '' for a write without a lock
-- ARGV[2]  the counter when the lock was taken, modulo 2^32, or '' for a write without a lock
-- ARGV[3]  the entry's lifetime in milliseconds (its hard expiry)
-- ARGV[4]  the cache key
-- ARGV[5]  the entry's bytes
--
-- Returns 1 when stored, 0 when not (invalidated meanwhile).
if ARGV[1] ~= '' then
  local held = redis.pcall('GET', KEYS[2])
  if type(held) == 'string' and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
    redis.call('DEL', KEYS[2])
  end
end
if ARGV[2] ~= '' then
  local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
  if seq % 4294967296 ~= tonumber(ARGV[2]) then
    return 0
  end
end
local px = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[4], 0, ARGV[4])
redis.call('ZADD', KEYS[5], now + px, ARGV[4])
-- Keys whose entries have expired leave the index, a few per write.
local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 64)
if #gone > 0 then
  redis.call('ZREM', KEYS[4], unpack(gone))
  redis.call('ZREM', KEYS[5], unpack(gone))
end
-- The index has no expiry of its own (so that Redis, evicting only keys with one, never drops it
-- while entries it lists remain); it empties, and so vanishes, as its keys are trimmed.
return 1
