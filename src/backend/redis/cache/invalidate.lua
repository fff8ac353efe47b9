-- Invalidates one cache key: deletes its entry and takes it out of the index, and counts an
-- invalidation in the slot (so a fill that began before it does not store its answer).
--
-- KEYS[1]  the entry
-- KEYS[2]  the slot's invalidation counter
-- KEYS[3]  the slot's index of keys
-- KEYS[4]  the slot's expiry of keys
-- ARGV[1]  the cache key
redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
