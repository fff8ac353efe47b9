-- The start of every decision script after its clock (now.lua: `nargs`, `time_us`, `now_us`,
-- `now_frac`; before entries.lua and limit_set.lua, which documents the arguments and the reply):
-- the key's value, and the single form on a bare value or none, which needs nothing more. It runs
-- as the script's top-level code, so limit_set.lua goes on with its locals, and the single form
-- returns before the set form's helpers are made (prelude.lua: each costs a closure per call).

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
  -- The layer's own limit on a bare value or none: what the single form has always done.
  local s, a, b, _, repaired, value, ttl, keep, keep_ttl =
    decide_one(raw, ARGV[1] + 0, ARGV[2] + 0, 1, now_us, now_frac, repair, min_ttl)
  if not s then
    return a
  end
  if s == 1 then
    redis.call('SET', key, value, 'PX', ttl)
    return {1, a, b, repaired, time_us}
  end
  if repaired ~= '' then
    redis.call('DEL', key)
  elseif keep then
    -- A sliding window's counts moved from another period (limit_set.lua).
    redis.call('SET', key, keep, 'PX', keep_ttl)
  end
  return {0, a, b, repaired, time_us}
end
