-- The start of every decision script (after prelude.lua and the algorithm's `decide_one`, before
-- entries.lua and limit_set.lua; limit_set.lua documents the arguments and the reply): the clock,
-- the caller's deadline, the key's value, and the single form on a bare value or none, which needs
-- nothing more. It runs as the script's top-level code, so limit_set.lua goes on with its locals,
-- and the single form returns before the set form's helpers are made (prelude.lua: each costs a
-- closure per call).

local nargs = #ARGV
-- The server's TIME in microseconds (its two fields are digits: the arithmetic converts them).
local time_us
do
  local t = redis.call('TIME')
  time_us = t[1] * 1000000 + t[2]
end
-- Past the caller's deadline (server us; "" for no bound) it answers the error reply
-- "RAMPARTLATE <time>" instead, and nothing is read or written: the caller has answered its
-- request without Redis.
local not_after = tonumber(ARGV[nargs] or '')
if not_after and time_us > not_after then
  return redis.error_reply(format('RAMPARTLATE %.0f', time_us))
end
-- Now, as microseconds and a sub-microsecond remainder: the caller's clock (ns), or the server's
-- TIME when ARGV[3] is "".
local now_us, now_frac = time_us, 0
if ARGV[3] ~= '' then
  now_us, now_frac = split_ns(ARGV[3] or '')
  if not now_us then
    return redis.error_reply('RAMPARTARG the clock value is out of range')
  end
end
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
  local s, a, b, _, repaired, value, ttl =
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
  end
  return {0, a, b, repaired, time_us}
end
