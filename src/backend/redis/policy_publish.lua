-- A live change to a limiter's policies (a tier's limits, the default limits, a key's own limits),
-- published for every replica: the next version number, the change stored under it, and the
-- field marked changed at that version. Atomic, so versions and values never disagree.
--
-- KEYS[1]  the limiter's policies: a hash of field -> encoded limits, and `v`, the last version
-- KEYS[2]  the change log: a sorted set of fields, each scored with the version of its last change
--          (both keys share the limiter's hash tag: one Cluster slot)
-- ARGV[1]  the field: `d` (default limits), `t:<tier>`, or `k:<key>` (the key as in its state keys)
-- ARGV[2]  the encoded limits, or "" to clear the field (a key's own limits taken away)
-- ARGV[3]  the caller's deadline, as Redis's TIME in microseconds ("" while the caller does not
--          know Redis's clock): past it, the error "RAMPARTLATE <TIME>" and nothing is written.
--          A change sent on a connection that stalled, and delivered to Redis after a newer one
--          went through on its replacement, would otherwise revert it for every replica.
--
-- Returns {the version of this change, the TIME it read in microseconds}.
--
-- `e`, set by version 1 (Redis's `TIME` then), names the run of versions: if the hash is lost (a
-- restart without persistence, a failover that lost writes) and versions start again from 1, the
-- new `e` tells replicas that a version they know means something else now. (A hash an earlier
-- build began has none, and keeps none: its run is the one replicas know.)

if redis.replicate_commands and not redis.REDIS_VERSION_NUM then
  -- Redis < 5: allows writes after the non-deterministic TIME. From 5 on it is the default, and
  -- Redis 7 (the first to define REDIS_VERSION_NUM) replicates effects only: the call is skipped.
  redis.replicate_commands()
end

local t = redis.call('TIME')
local time_us = t[1] * 1000000 + t[2]
local not_after = tonumber(ARGV[3] or '')
if not_after and time_us > not_after then
  return redis.error_reply(string.format('RAMPARTLATE %.0f', time_us))
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
if v == 1 then
  redis.call('HSET', KEYS[1], 'e', table.concat(t, '.'))
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], v, ARGV[1])
return {v, time_us}
