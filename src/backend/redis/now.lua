-- The clock of every rate limit script (after prelude.lua, and the sliding window's file in its
-- script; before decide.lua or, in the lease script, gcra_decide_one.lua): the server's TIME, the
-- caller's deadline (the last argument) and now. Top-level code, not a function, so the script
-- goes on with its locals and no closure is made for it (prelude.lua).

local nargs = #ARGV
--#include time.lua
-- Past the caller's deadline (server us; "" for no bound), less `margin_us`, it answers the error
-- reply "RAMPARTLATE <time>" instead, and nothing is read or written: the caller has answered
-- its request without Redis.
local not_after = tonumber(ARGV[nargs] or '')
if not_after and time_us + margin_us > not_after then
  return redis.error_reply(format('RAMPARTLATE %.0f', time_us))
end
-- Now, as microseconds and a sub-microsecond remainder: the caller's clock (ns), or the server's
-- TIME when ARGV[3] is "".
local now_us, now_frac = time_us, 0
if ARGV[3] ~= '' then
  local s, us, frac = ARGV[3] or '', nil, nil
  --#include split_ns.lua
  if not us then
    return redis.error_reply('RAMPARTARG the clock value is out of range')
  end
  now_us, now_frac = us, frac
end
