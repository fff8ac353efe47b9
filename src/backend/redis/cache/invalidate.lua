-- Invalidates one cache key: deletes its entry and takes it out of the index and the slot's
-- records (its weight no longer counts), and counts an invalidation in the slot (so a fill that
-- began before it does not store its answer).
--
-- KEYS[1]  the entry
-- KEYS[2]  the slot's invalidation counter
-- KEYS[3]  the slot's index of keys
-- KEYS[4]  the slot's expiry of keys
-- KEYS[5]  the slot's records of entry weights
-- KEYS[6]  the slot's byte count
-- ARGV[1]  the cache key
redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
local keys = {ARGV[1]}
sizes_drop(KEYS[3], KEYS[4], keys)
sizes_subtract(KEYS[5], KEYS[6], keys)
return 1
