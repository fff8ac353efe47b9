-- Invalidates the cache keys of one slot within a lexicographic range (a prefix, or all): up to
-- ARGV[3] of them per call; the caller calls again while a full batch comes back. The entries'
-- names are the slot's entry head and the SHA-1 of the key, as the store writes them (same hash
-- tag as the declared keys: same slot). Their records leave with them (their weights no longer
-- count).
--
-- KEYS[1]  the slot's invalidation counter
-- KEYS[2]  the slot's index of keys
-- KEYS[3]  the slot's expiry of keys
-- KEYS[4]  the slot's records of entry weights
-- KEYS[5]  the slot's byte count
-- ARGV[1]  the range's lower bound (ZRANGEBYLEX syntax)
-- ARGV[2]  the range's upper bound
-- ARGV[3]  the most keys to invalidate in this call
-- ARGV[4]  the head of the slot's entry names
-- ARGV[5]  '1' to count an invalidation in the slot (the first call of an invalidation)
--
-- Returns how many keys were invalidated.
if ARGV[5] == '1' then
  redis.call('INCR', KEYS[1])
end
local keys = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
if #keys == 0 then
  return 0
end
sizes_drop(KEYS[2], KEYS[3], keys, ARGV[4])
sizes_subtract(KEYS[4], KEYS[5], keys)
return #keys
