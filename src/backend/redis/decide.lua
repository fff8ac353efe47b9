-- The start of every decision script after its clock (now.lua: `nargs`, `time_us`, `now_us`,
-- `now_frac`; before entries.lua and limit_set.lua, which documents the arguments and the reply):
-- the key's value, and the single form on a bare value or none, which needs nothing more. It runs
-- as the script's top-level code, so limit_set.lua goes on with its locals, and the single form
-- returns before the set form's helpers are made (prelude.lua: each costs a closure per call). The
-- line `--#include decision` is the algorithm's decision of one limit (gcra.lua, or
-- window_decision.lua).

if #KEYS ~= 1 then
  return redis.error_reply('RAMPARTARG the rate limit script takes one key')
end
local key, repair, min_ttl = KEYS[1], ARGV[5], tonumber(ARGV[4] or '')
if not min_ttl then
  if nargs ~= 6 and (nargs < 9 or (nargs - 6) % 3 ~= 0) then
    return redis.error_reply('RAMPARTARG a set of n limits takes 3n + 6 arguments')
  end
  return redis.error_reply('RAMPARTARG the minimum expiry must be a number of ms')
end
local raw = redis.pcall('GET', key)
local single = nargs == 6

if single and type(raw) ~= 'table' and (not raw or byte(raw, 1) ~= 124) then
  -- The layer's own limit on a bare value or none: what the single form has always done, decided
  -- by gcra.lua written out here (no closure made on this path), or by the sliding window's
  -- `decide_one`.
  local emission, tolerance, cost = ARGV[1] + 0, ARGV[2] + 0, 1
  local verdict, a, b, c, repaired, value, ttl, keep, keep_ttl, err
  --#include decision
  if not verdict then
    return err
  end
  -- The reply leaves an empty `repaired` out (src/backend/redis/rate_limit/reply.rs reads both):
  -- a value fewer for Redis to write and for the client to parse.
  if verdict == 1 then
    -- The expiry as digits: a number is written by Redis with "%.17g", 1,050 instructions more a
    -- call inside redis-server (callgrind) than `format`'s "%d".
    redis.call('SET', key, value, 'PX', format('%d', ttl))
    if repaired == '' then
      return {1, a, b, time_us}
    end
    return {1, a, b, repaired, time_us}
  end
  if repaired ~= '' then
    redis.call('DEL', key)
    return {0, a, b, repaired, time_us}
  end
  if keep then
    -- A sliding window's counts moved from another period, or a GCRA arrival time rebased to
    -- the tolerance (limit_set.lua, gcra.lua).
    redis.call('SET', key, keep, 'PX', format('%d', keep_ttl))
  end
  return {0, a, b, time_us}
end
