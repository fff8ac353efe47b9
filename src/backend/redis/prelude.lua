-- Shared by the rate limit scripts (gcra.lua, sliding_window.lua, lease/lease.lua): prepended to
-- each when the crate builds it (src/backend/redis/script.rs, `compose`), so each helper is
-- written once and each script stays one self-contained EVAL body.
--
-- Every EVAL runs its body from the top, so each `local function` is a closure made anew on every
-- call, with an allocation for each local of the body it uses (an upvalue): the GCRA single
-- form's path makes none. What it needs in more than one place is a fragment (split_ns.lua,
-- gcra.lua) that `compose` writes out where a line `--#include <name>` stands, and library
-- functions are called through the locals below. Integer division is (a - fmod(a, b)) / b: exact
-- for integers 0 <= a < 2^53 (fmod is exact; `%` is not).
-- Measured in instructions inside redis-server (`CALLGRIND=1 benches/redis_script_cost.sh`): the
-- two closures the GCRA single form made, `split_ns` and `decide_one`, cost 4,800 of the 67,000
-- instructions of a call.

if redis.replicate_commands and not redis.REDIS_VERSION_NUM then
  -- Redis < 5: allows writes after the non-deterministic TIME. From 5 on it is the default, and
  -- Redis 7 (the first to define REDIS_VERSION_NUM) replicates effects only: the call is skipped.
  redis.replicate_commands()
end

local find, byte, sub, format, fmod = string.find, string.byte, string.sub, string.format, math.fmod

-- An allowance for clocks (ns): state a little ahead of what any decision writes may come from a
-- node whose clock ran ahead (before a failover) or from before the clock was stepped back.
local SKEW = 1000000000
