-- Stores one cache entry and indexes its key, then releases the fill lock held for it (one
-- script: no other process can find the lock free and the entry missing). The entry is not
-- stored when the slot saw an invalidation since the lock was taken: the answer may predate it.
--
-- The slot holds at most ARGV[6] bytes as its records count them (sizes.lua): an entry weighs its
-- stored bytes, its Redis name, its cache key three times (index, expiry set, records) and
-- PER_ENTRY for Redis's own bookkeeping. To make room, the entries that expire soonest are
-- removed, at most EVICT_MAX per fill; an entry that still does not fit (or that is larger than
-- the whole slot) is not stored, and the key's previous entry goes (the answer just fetched
-- supersedes it).
--
-- KEYS[1]  the entry
-- KEYS[2]  the key's fill lock
-- KEYS[3]  the slot's invalidation counter
-- KEYS[4]  the slot's index of keys (sorted set, all scores 0, for prefix ranges)
-- KEYS[5]  the slot's expiry of keys (sorted set scored by expiry, to trim the index)
-- KEYS[6]  the slot's records of entry weights (hash)
-- KEYS[7]  the slot's byte count (the sum of the records)
-- ARGV[1]  the lock's token (decimal), or '' for a write without a lock
-- ARGV[2]  the counter when the lock was taken, modulo 2^32, or '' for a write without a lock
-- ARGV[3]  the entry's lifetime in milliseconds (its hard expiry)
-- ARGV[4]  the cache key
-- ARGV[5]  the entry's bytes
-- ARGV[6]  the slot's budget in bytes
-- ARGV[7]  the head of the slot's entry names (an evicted key's entry is this and its SHA-1)
--
-- Returns 1 when stored, 0 when not (invalidated meanwhile), 2 when not (no room in the slot).
local PER_ENTRY = 256
local EVICT_MAX = 16
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
local key = ARGV[4]
local budget = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total = sizes_open(KEYS[6], KEYS[7])
-- Keys whose entries have expired leave the index and the records, a few per write.
local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 64)
if #gone > 0 then
  sizes_drop(KEYS[4], KEYS[5], gone)
  total = sizes_minus(KEYS[6], total, sizes_forget(KEYS[6], gone))
end
-- A slot whose keys are all gone has nothing to count (records left over go with it).
if redis.call('ZCARD', KEYS[5]) == 0 and total > 0 then
  redis.call('UNLINK', KEYS[6])
  total = 0
end
-- Records of keys the expiry set does not list (an older release's scripts took them out
-- without their records) are found by sampling two per write, and dropped.
local sample = redis.pcall('HRANDFIELD', KEYS[6], 2)
if type(sample) == 'table' and #sample > 0 then
  local orphans = {}
  for i = 1, #sample do
    if sample[i] ~= key and not redis.call('ZSCORE', KEYS[5], sample[i]) then
      orphans[#orphans + 1] = sample[i]
    end
  end
  total = sizes_minus(KEYS[6], total, sizes_forget(KEYS[6], orphans))
end
-- The key's previous entry (if any) is replaced: its weight no longer counts.
total = sizes_minus(KEYS[6], total, sizes_forget(KEYS[6], {key}))
local weight = #ARGV[5] + #KEYS[1] + 3 * #key + PER_ENTRY
local function refuse()
  redis.call('DEL', KEYS[1])
  sizes_drop(KEYS[4], KEYS[5], {key})
  sizes_save(KEYS[7], total)
  return 2
end
if weight > budget then
  return refuse()
end
if total + weight > budget then
  -- The soonest to expire go first (the key itself is being replaced, never a victim), as many as
  -- make room. The first one's weight is read alone (one is the usual need: reading all costs that
  -- fill more), then, when it is not enough, all the others' at once; their records go at once.
  local soonest = redis.call('ZRANGE', KEYS[5], 0, EVICT_MAX)
  for i = 1, #soonest do
    if soonest[i] == key then
      table.remove(soonest, i)
      break
    end
  end
  soonest[EVICT_MAX + 1] = nil
  local weights, n, forgotten = {}, 0, 0
  while n < #soonest and total + weight > budget do
    n = n + 1
    if n == 1 then
      weights = redis.call('HMGET', KEYS[6], soonest[1])
    elseif n == 2 then
      local rest = redis.call('HMGET', KEYS[6], unpack(soonest, 2))
      for i = 1, #rest do
        weights[i + 1] = rest[i]
      end
    end
    local gone = sizes_number(weights[n]) or 0
    if gone <= total then
      total = total - gone
    else
      -- The count was short of its records (as in sizes_minus): the records of the victims so
      -- far go, and those left are counted again.
      redis.call('HDEL', KEYS[6], unpack(soonest, forgotten + 1, n))
      forgotten = n
      total = sizes_recount(KEYS[6])
    end
  end
  if n > forgotten then
    redis.call('HDEL', KEYS[6], unpack(soonest, forgotten + 1, n))
  end
  if n > 0 then
    sizes_drop(KEYS[4], KEYS[5], {unpack(soonest, 1, n)}, ARGV[7])
  end
  -- Still no room: a count above its records (lost, or an older release's scripts took keys out
  -- without them) is counted again when the records are few enough to read now.
  if total + weight > budget then
    total = sizes_recount(KEYS[6], true) or total
  end
  if total + weight > budget then
    return refuse()
  end
end
redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
redis.call('ZADD', KEYS[4], 0, key)
redis.call('ZADD', KEYS[5], now + px, key)
redis.call('HSET', KEYS[6], key, weight)
sizes_save(KEYS[7], total + weight)
-- The index has no expiry of its own (so that Redis, evicting only keys with one, never drops it
-- while entries it lists remain); it empties, and so vanishes, as its keys are trimmed.
return 1
