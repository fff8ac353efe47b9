-- GCRA: one decision over a set of limits on one key (limit_set.lua: arguments, reply, the set's
-- rules; decide.lua and limit_set.lua follow this file in the script), each limit computed exactly
-- as src/rate_limit/algorithm/gcra.rs `decide` does, atomically.
--
-- A limit's state: the theoretical arrival time (TAT) of the key's next request, in nanoseconds
-- since the clock's epoch (the Unix epoch with Redis TIME), as decimal digits
-- A limit's two parameters: its emission interval (ns) and its tolerance, burst x emission (ns).
--
-- A limit's figures: admitted, a = slack (remaining = slack / emission) and b = reset, how far
-- ahead of now its TAT runs; refused, a = reset and b = retry after; a cost above the burst, a =
-- reset and b = 0. Nanoseconds.
--
-- State it cannot read: anything but 1 to 19 digits, or a TAT further
-- ahead of now than any quota's tolerance (2^52 ns) by more than SKEW, an allowance for clocks: a
-- key written on a node whose clock ran ahead (before a failover) or before the clock was stepped
-- back. A TAT ahead by more than this limit's tolerance but less than that was written under a
-- larger quota, before a change at run time: it is a state, refused until it drains.
--
-- Lua numbers are doubles, exact for integers below 2^53. Absolute times (about 2^60 ns) are
-- therefore split into microseconds and a sub-microsecond remainder, and everything computed is
-- relative to now: the store refuses quotas whose tolerance exceeds 2^52 ns, and cost x emission
-- is compared with the tolerance before it is added to anything.

-- The one-limit decision decide.lua and limit_set.lua make (limit_set.lua: its arguments and
-- answers).
local function decide_one(raw, emission, tolerance, cost, now_us, now_frac, repair, min_ttl)
  local base, repaired = gcra_base(raw, now_us, now_frac, repair)
  if not repaired then
    return nil, base
  end
  -- Exact below 2^53; above, still above any tolerance.
  local need = cost * emission
  if need > tolerance then
    return 2, base, 0, 0, repaired
  end
  local ahead = base + need
  if ahead > tolerance then
    return 0, base, ahead - tolerance, 0, repaired
  end
  local slack = tolerance - ahead
  local value, ttl = gcra_state(now_us, now_frac, ahead, min_ttl)
  return 1, slack, ahead, (slack - fmod(slack, emission)) / emission, repaired, value, ttl
end
