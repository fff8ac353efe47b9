-- Shared by the rate limit scripts (gcra.lua, sliding_window.lua, lease/lease.lua): prepended to
-- each when the crate builds it, so each helper is written once and each script stays one
-- self-contained EVAL body.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after the non-deterministic TIME
end

-- An allowance for clocks (ns): state a little ahead of what any decision writes may come from a
-- node whose clock ran ahead (before a failover) or from before the clock was stepped back.
local SKEW = 1000000000

-- q, r = floor(a / b), a mod b, exactly for integers 0 <= a < 2^53 (fmod is exact; `%` is not).
local function divmod(a, b)
  local r = math.fmod(a, b)
  return (a - r) / b, r
end

-- "1700000000123456789" -> 1700000000123456, 789; nil for anything but 1 to 19 digits.
local function split_ns(s)
  if type(s) ~= 'string' or #s == 0 or #s > 19 or not string.match(s, '^%d+$') then
    return nil
  end
  if #s <= 3 then
    return 0, tonumber(s)
  end
  local us = tonumber(string.sub(s, 1, -4))
  if us >= 9007199254740992 then
    return nil
  end
  return us, tonumber(string.sub(s, -3))
end

-- The server's TIME in microseconds, and now as microseconds and a sub-microsecond remainder: from
-- `now_arg` (ns on the caller's clock) or, when it is "", the server's TIME. When the call is past
-- `not_after_arg` (server us; "" for no bound) it answers the error reply "RAMPARTLATE <time>"
-- instead, and nothing is read or written: the caller has answered its request without Redis.
-- Errors come back as (error reply, nil).
local function clock(now_arg, not_after_arg)
  local t = redis.call('TIME')
  local time_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local not_after = tonumber(not_after_arg or '')
  if not_after and time_us > not_after then
    return redis.error_reply(string.format('RAMPARTLATE %.0f', time_us)), nil
  end
  if now_arg == '' then
    return time_us, time_us, 0
  end
  local now_us, now_frac = split_ns(now_arg)
  if not now_us then
    return redis.error_reply('RAMPARTARG the clock value is out of range'), nil
  end
  return time_us, now_us, now_frac
end
