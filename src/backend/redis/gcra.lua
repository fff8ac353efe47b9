-- GCRA: the decision of one limit (limit_set.lua: arguments, reply, the set's rules), computed
-- exactly as src/rate_limit/algorithm/gcra.rs `decide` does. A fragment (prelude.lua), written out
-- twice in the GCRA script: inline where decide.lua decides the single form (no closure on that
-- path), and as the body of `decide_one` (gcra_decide_one.lua) for the set form and the lease
-- script (lease/lease.lua), which carves its units with it.
--
-- In: `raw` (the limit's state, a string, or nil for none), `emission`, `tolerance`, `cost`,
-- `now_us`, `now_frac`, `repair` ("1" to replace state it cannot read), `min_ttl` (ms). Out, into
-- locals the includer declares (nil before): `verdict` (1 admitted, 0 refused, 2 a cost above the
-- burst; nil with `err`, the error reply, when the state cannot be read and is not repaired), `a`,
-- `b` (the figures below), `c` (admitted: the units remaining), `repaired` ("" or what was wrong
-- with the state replaced), when admitted `value` and `ttl` (ms), the state to write and its
-- expiry, and `keep`, `keep_ttl` (ms), a state to write when nothing is spent: nil but for a TAT
-- beyond the tolerance, rebased to it (below). Its own locals are inside one `do` block.
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
-- quota of a longer tolerance, before a change at run time (or on a clock since stepped back): it
-- is a state, spent in full under this quota and no more (as in memory).
--
-- Lua numbers are doubles, exact for integers below 2^53. Absolute times (about 2^60 ns) are
-- therefore split into microseconds and a sub-microsecond remainder, and everything computed is
-- relative to now: the store refuses quotas whose tolerance exceeds 2^52 ns, and cost x emission
-- is compared with the tolerance before it is added to anything.

do
  -- The furthest ahead of now (ns) a TAT can be that some decision wrote: the largest tolerance
  -- the store accepts (2^52 ns, about 52 days), plus SKEW. A quota changed at run time keeps its
  -- state, so a TAT written under a quota of a longer tolerance than the one deciding now is a
  -- state, not damage: it counts as at the tolerance (below), as in memory.
  local MAX_AHEAD = 4503599627370496 + SKEW
  -- How far the TAT is ahead of now (0 when it is not): `base - now` in gcra.rs.
  local base = 0
  repaired = ''
  if raw then
    local s, us, frac = raw, nil, nil
    --#include split_ns.lua
    local problem
    if not us then
      problem = 'the key does not hold a GCRA arrival time'
    elseif us > now_us or (us == now_us and frac > now_frac) then
      -- In microseconds first: a foreign value may be centuries ahead, beyond 2^53 ns.
      if us - now_us > MAX_AHEAD / 1000 + 1 then
        base = MAX_AHEAD + 1
      else
        base = (us - now_us) * 1000 + (frac - now_frac)
      end
      if base > MAX_AHEAD then
        problem = 'the key holds a GCRA arrival time further ahead than any quota allows'
      end
    end
    if problem then
      if repair ~= '1' then
        err = redis.error_reply('RAMPARTDATA ' .. problem)
      else
        -- A fresh state, which the caller writes or deletes.
        base, repaired = 0, problem
      end
    end
  end
  -- No decision under this quota leaves the TAT further ahead than its tolerance: one that is
  -- counts as spent in full, no more (a key that hit 10 an hour, raised to 10 a second, waits one
  -- interval of the new quota, not the rest of the hour). It is written back where the decision
  -- counted it (`keep`, for when nothing is spent: a refusal), so that it drains from there, as
  -- `GcraCell::rebase` does in memory.
  local rebased = base > tolerance
  if rebased then
    base = tolerance
  end
  -- Exact below 2^53; above, still above any tolerance.
  local need = cost * emission
  local ahead = base + need
  -- How far ahead of now the state to write puts the TAT: the spend's end when admitted, the
  -- tolerance when rebased (the same for a cost of 0), none otherwise.
  local put
  if err then
    -- Nothing decided.
  elseif need > tolerance then
    verdict, a, b, c = 2, base, 0, 0
  elseif ahead > tolerance and cost > 0 then
    verdict, a, b, c = 0, base, ahead - tolerance, 0
  else
    -- (A cost of 0 passes even at the tolerance: it spends nothing.)
    local slack = math.max(tolerance - ahead, 0)
    verdict, a, b, c = 1, slack, ahead, (slack - fmod(slack, emission)) / emission
    put = ahead
  end
  if rebased and not err then
    put = tolerance
  end
  if put then
    -- The state that puts the TAT at now + put, and its expiry (ms): once it has passed (the
    -- key is then as good as absent), and no sooner than `min_ttl` ms.
    local x = now_frac + put
    local f = fmod(x, 1000)
    local tat_us = now_us + (x - f) / 1000
    local state
    if tat_us > 0 then
      -- %d formats a 64-bit integer (exact below 2^53), several times cheaper than %.0f.
      state = format('%d%03d', tat_us, f)
    else
      state = format('%d', f)
    end
    local expiry = (put - fmod(put, 1000000)) / 1000000 + 1
    if expiry < min_ttl then
      expiry = min_ttl
    end
    if verdict == 1 then
      value, ttl = state, expiry
    end
    if rebased then
      keep, keep_ttl = state, expiry
    end
  end
end
