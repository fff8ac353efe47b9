-- Shared by the rate limit scripts (gcra.lua, sliding_window.lua, lease/lease.lua): prepended to
-- each when the crate builds it, so each helper is written once and each script stays one
-- self-contained EVAL body.
--
-- Every EVAL runs its body from the top, so each `local function` below is a closure made anew on
-- every call: the scripts make only the ones their path needs before it (decide.lua decides the
-- single form before entries.lua's helpers exist; sliding_window.lua defines its own `divmod`),
-- and call library functions through locals. Integer division is (a - fmod(a, b)) / b: exact for
-- integers 0 <= a < 2^53 (fmod is exact; `%` is not).
-- Measured with benches/redis_script_cost.sh's method (usec_per_call of a script that only defines
-- the helpers against `return 1`, Redis 7.0.15, 2026-12-06): the nine closures the scripts made
-- before cost 0.8 us per call, and `redis.replicate_commands()` 0.4-0.6 us.

if redis.replicate_commands and not redis.REDIS_VERSION_NUM then
  -- Redis < 5: allows writes after the non-deterministic TIME. From 5 on it is the default, and
  -- Redis 7 (the first to define REDIS_VERSION_NUM) replicates effects only: the call is skipped.
  redis.replicate_commands()
end

local find, byte, sub, format, fmod = string.find, string.byte, string.sub, string.format, math.fmod

-- An allowance for clocks (ns): state a little ahead of what any decision writes may come from a
-- node whose clock ran ahead (before a failover) or from before the clock was stepped back.
local SKEW = 1000000000

-- "1700000000123456789" -> 1700000000123456, 789; nil for anything but 1 to 19 digits (`s` is a
-- string). Validated by one anchored `find` without captures, the microseconds' digits converted
-- by arithmetic (exact below 2^53) and the last three read as bytes: 335 ns a split in a loop of
-- 20,000 inside Redis 7.0 (usec_per_call / 20,000, min of 4), where string.match, two string.sub
-- and two tonumber calls took 560 ns and one `find` with two captures 479 ns.
local function split_ns(s)
  local len = #s
  if len == 0 or len > 19 or not find(s, '^%d+$') then
    return nil
  end
  if len <= 3 then
    return 0, s + 0
  end
  local us = sub(s, 1, -4) + 0
  if us >= 9007199254740992 then
    return nil
  end
  local a, b, c = byte(s, -3, -1)
  -- 5328 = 111 * 48, the three digits' "0".
  return us, a * 100 + b * 10 + c - 5328
end
