-- GCRA: one decision over a set of limits on one key (limit_set.lua: arguments, reply, the set's
-- rules; now.lua, decide.lua and limit_set.lua follow this file in the script), each limit computed
-- exactly as src/rate_limit/algorithm/gcra.rs `decide` does, atomically. The lease script
-- (lease/lease.lua) carves its units with the same `decide_one`.
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

-- The furthest ahead of now (ns) a TAT can be that some decision wrote: the largest tolerance the
-- store accepts (2^52 ns, about 52 days), plus SKEW. A quota changed at run time keeps its state,
-- so a TAT written under a larger quota than the one deciding now is a state, not damage: it is
-- refused until it drains, as in memory.
local MAX_AHEAD = 4503599627370496 + SKEW

-- The one-limit decision decide.lua and limit_set.lua make (limit_set.lua: its arguments and
-- answers): the TAT's read, the decision and the state written, in one function (a helper per
-- step was a closure made on every call and a call per limit: 7.37 -> 7.02 us per single-form
-- call and 12.24 -> 11.89 us for two limits, benches/redis_script_cost.sh's method).
local function decide_one(raw, emission, tolerance, cost, now_us, now_frac, repair, min_ttl)
  -- How far the TAT is ahead of now (0 when it is not): `base - now` in gcra.rs.
  local base, repaired = 0, ''
  if raw then
    local tat_us, tat_frac = split_ns(raw)
    local problem
    if not tat_us then
      problem = 'the key does not hold a GCRA arrival time'
    elseif tat_us > now_us or (tat_us == now_us and tat_frac > now_frac) then
      -- In microseconds first: a foreign value may be centuries ahead, beyond 2^53 ns.
      if tat_us - now_us > MAX_AHEAD / 1000 + 1 then
        base = MAX_AHEAD + 1
      else
        base = (tat_us - now_us) * 1000 + (tat_frac - now_frac)
      end
      if base > MAX_AHEAD then
        problem = 'the key holds a GCRA arrival time further ahead than any quota allows'
      end
    end
    if problem then
      if repair ~= '1' then
        return nil, redis.error_reply('RAMPARTDATA ' .. problem)
      end
      -- A fresh state, which the caller writes or deletes.
      base, repaired = 0, problem
    end
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
  -- The state that puts the TAT at now + ahead, and its expiry (ms): once it has passed (the key
  -- is then as good as absent), and no sooner than `min_ttl` ms.
  local x = now_frac + ahead
  local frac = fmod(x, 1000)
  local tat_us = now_us + (x - frac) / 1000
  local value
  if tat_us > 0 then
    -- %d formats a 64-bit integer (exact below 2^53), several times cheaper than %.0f.
    value = format('%d%03d', tat_us, frac)
  else
    value = format('%d', frac)
  end
  local ttl = (ahead - fmod(ahead, 1000000)) / 1000000 + 1
  if ttl < min_ttl then
    ttl = min_ttl
  end
  return 1, slack, ahead, (slack - fmod(slack, emission)) / emission, repaired, value, ttl
end
