-- One decision over a set of limits on one key, in one call: the part gcra.lua and
-- sliding_window.lua share. A script is prelude.lua, now.lua (the clock), decide.lua (the key's
-- value, the single form on a bare value), the algorithm's `decide_one` (gcra_decide_one.lua; the
-- sliding window's is in its file, before now.lua), entries.lua, then this file, the set form (and
-- the single form on a packed value), which goes on with now.lua's and decide.lua's locals.
--
-- KEYS[1]  the key's value: every limit's state, bare or packed by limit name (entries.lua), so a
--          decision is TIME, one GET and at most one SET (or DEL) whatever the number of limits
--
-- The single form, six arguments (the layer's own limit, cost 1, spent, enforced; the form the
-- store has always sent, with the same reply; on a bare value or none it reads and writes exactly
-- what it always has):
-- ARGV[1], ARGV[2]  the limit's parameters (the algorithm's; see its script)
-- ARGV[3]  now (ns) from the caller's clock, or "" to read the server's TIME (the default, so
--          replicas with skewed clocks agree)
-- ARGV[4]  minimum expiry (ms); 0 for none
-- ARGV[5]  "1" to repair state it cannot read (replace it with a fresh state and say so), "0" to
--          answer it with a RAMPARTDATA error and leave it as it is
-- ARGV[6]  not after: the server TIME (us since the Unix epoch) after which the caller has given
--          up on this call, or "" for no bound
-- Returns {1, a, b, repaired, time} when admitted, {0, a, b, repaired, time} when refused (the
-- figures as the algorithm's script says); `repaired` is what was wrong with the state it
-- replaced, left out when nothing was ({1, a, b, time}); `time` is the server's TIME in
-- microseconds.
--
-- The set form, 3n + 6 arguments for n limits (1 <= n <= 8):
-- ARGV[1] to ARGV[5]  as above, ARGV[1] and ARGV[2] for limit 1
-- ARGV[6]  cost: the units asked for, 0 to 2^32 - 1
-- ARGV[7]  flags, n + 1 characters "0" or "1": peek (decide, spend nothing), then for each limit
--          whether it is a shadow limit
-- ARGV[8]  limit 1's name, "" for the layer's own limit (the one named after the layer)
-- ARGV[3i + 3], ARGV[3i + 4], ARGV[3i + 5]  limit i's name and parameters, for 2 <= i <= n
-- ARGV[3n + 6]  not after, as above
-- Returns {allowed, a, b, repaired, index, status, shadow_refused, time}: `allowed` is 1 when every
-- enforced limit admits; `index` (1-based) names the binding limit, whose figures are `a` and `b`
-- and whose own outcome is `status` (1 admits, 0 refuses, 2 refuses a cost it could never admit:
-- `b` is then 0); `shadow_refused` has bit i - 1 set for each shadow limit that refuses;
-- `repaired` holds "<i> <what was wrong>" lines for the states it replaced, i = 0 for a value it
-- could not read at all (every entry of it is dropped), and is left out when none was.
--
-- The decision (identical to the in-memory store's): every limit is decided at one `now` against
-- its own state. Admitted iff every enforced limit admits; then every enforced limit spends the
-- cost, and none does otherwise. A shadow limit spends iff it admits, whatever the others say,
-- and never refuses. A peek spends nothing, nor does a cost of 0. The binding
-- limit: when refused, the refusing enforced limit with the longest wait (one that could never
-- admit the cost before any other); when admitted, the enforced limit with the fewest remaining;
-- with only shadow limits, the one with the fewest remaining (a refusing one has none). Ties go to
-- the first. A repaired state that is not written is deleted (a fresh state is an absent entry).
-- Entries of limits not in the decision are kept while they are live; nothing is written when no
-- state changes (a refusal, a peek), so expired entries go at the next write. Two exceptions,
-- both states written under a limit's earlier quota (changed at run time): a sliding window's
-- counts made under another period are written back moved to this period, and a GCRA arrival
-- time beyond this quota's tolerance is written back at it, when nothing else is written for the
-- limit (not on a peek).
--
-- `decide_one(state, p1, p2, cost, now_us, now_frac, repair, min_ttl)` (numbers but `state` and
-- `repair`) answers the decision of the limit whose state is `state` (a string, or nil for none)
-- as (status, a, b, remaining, repaired, value, ttl, keep, keep_ttl): `status` as above;
-- admitted, `remaining` is the units left after it and `value`, `ttl` the state to write when it
-- spends; `keep`, `keep_ttl` a state to write when nothing is spent (nil but for counts moved
-- from another period, or an arrival time rebased to the tolerance); or (nil, error reply).

local n, cost, flags = 1, 1, '00'
if not single then
  n = (nargs - 6) / 3
  if n < 1 or n > 8 or n % 1 ~= 0 then
    return redis.error_reply('RAMPARTARG a set of n limits takes 3n + 6 arguments')
  end
  -- A cost of 1, the common one, without a `tonumber` call.
  cost = 1
  if ARGV[6] ~= '1' then
    cost = tonumber(ARGV[6])
  end
  if not cost or cost < 0 or cost > 4294967295 or cost % 1 ~= 0 then
    return redis.error_reply('RAMPARTARG the cost must be a whole number from 0 to 2^32 - 1')
  end
  flags = ARGV[7]
  -- Spend, every limit enforced: one comparison of interned strings instead of a `find`.
  if (n ~= 2 or flags ~= '000') and (#flags ~= n + 1 or find(flags, '[^01]')) then
    return redis.error_reply('RAMPARTARG the flags must be n + 1 characters 0 or 1')
  end
end
local peek = byte(flags, 1) == 49
-- No shadow limit and no peek (the flags of a plain decision): no flag to read per limit.
local plain = (n == 2 and flags == '000') or flags == '00'

local time_ms = (time_us - fmod(time_us, 1000)) / 1000
local E, m, bare = read_entries(raw, time_ms)
-- Made when there is one: "<i> <what was wrong>" lines.
local problems
local dirty = false
if not E then
  if repair ~= '1' then
    return redis.error_reply('RAMPARTDATA ' .. m)
  end
  problems = {'0 ' .. m}
  E, m, bare, dirty = {}, 0, false, true
end

-- Each limit's decision, 5 slots from k = 5 (i - 1): its entry's slot in E (0 for none), status,
-- the state to write and its expiry, and whether its state was repaired; made at once for two
-- limits. The binding limit is chosen as the limits are decided (see above): `r*` the refusing
-- enforced limit with the longest wait, `e*` the enforced limit with the fewest remaining, `o*`
-- the limit with the fewest remaining of all (for a set of shadow limits only); each with its
-- index, status and figures.
local d = {
  false, false, false, false, false, false, false,
  false, false, false, false, false, false, false,
}
local allowed, enforced, shadow_refused = true, false, 0
local ri, rs, ra, rb, ei, er, ea, eb, oi, ostatus, orem, oa, ob
for i = 1, n do
  local name, p1, p2 = '', ARGV[1], ARGV[2]
  if not single then
    name = ARGV[8]
    if i > 1 then
      name, p1, p2 = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
      if name == ARGV[8] then
        return redis.error_reply('RAMPARTARG two limits of a set have one name')
      end
      for j = 2, i - 1 do
        if ARGV[3 * j + 3] == name then
          return redis.error_reply('RAMPARTARG two limits of a set have one name')
        end
      end
    end
  end
  -- The slot of its live entry (names are unique in E).
  local ks, state = 0, nil
  for k = 3, 3 * m, 3 do
    if E[k] and E[k - 2] == name then
      ks, state = k, E[k]
      break
    end
  end
  local s, a, b, r, repaired, value, ttl, keep, keep_ttl =
    decide_one(state, p1 + 0, p2 + 0, cost, now_us, now_frac, repair, min_ttl)
  if not s then
    return a
  end
  local k = 7 * (i - 1)
  d[k + 1], d[k + 2], d[k + 3], d[k + 4], d[k + 5] = ks, s, value, ttl, repaired ~= ''
  d[k + 6], d[k + 7] = keep, keep_ttl
  if repaired ~= '' then
    if not problems then
      problems = {}
    end
    problems[#problems + 1] = i .. ' ' .. repaired
  end
  if s ~= 1 then
    r = 0
  end
  if not plain and byte(flags, i + 1) == 49 then
    if s ~= 1 then
      shadow_refused = shadow_refused + 2 ^ (i - 1)
    end
  else
    enforced = true
    if s ~= 1 then
      allowed = false
      if not ri or (s == 2 and rs ~= 2) or (s == 0 and rs == 0 and b > rb) then
        ri, rs, ra, rb = i, s, a, b
      end
    elseif not ei or r < er then
      ei, er, ea, eb = i, r, a, b
    end
  end
  if not oi or r < orem then
    oi, ostatus, orem, oa, ob = i, s, r, a, b
  end
end

for i = 1, n do
  local k = 7 * (i - 1)
  local ks = d[k + 1]
  local spends = not peek and cost > 0 and d[k + 2] == 1
  if spends and (allowed or (not plain and byte(flags, i + 1) == 49)) then
    local exp = time_ms + d[k + 4]
    if ks == 0 then
      local name = ''
      if not single then
        name = ARGV[8]
        if i > 1 then
          name = ARGV[3 * i + 3]
        end
      end
      m = m + 1
      ks = 3 * m
      E[ks - 2] = name
    end
    E[ks - 1], E[ks] = exp, d[k + 3]
    dirty = true
  elseif d[k + 6] and not peek then
    -- Counts moved from another period (or an arrival time rebased to the tolerance), nothing
    -- spent: kept, expiring by this quota.
    E[ks - 1], E[ks] = time_ms + d[k + 7], d[k + 6]
    dirty = true
  elseif d[k + 5] then
    -- A repaired state that is not written: dropped (a fresh state is an absent entry).
    E[ks] = nil
    dirty = true
  end
end
if dirty then
  write_entries(key, E, m, time_ms, bare)
end

local bind, status, a, b = ri, rs, ra, rb
if allowed then
  if enforced then
    bind, status, a, b = ei, 1, ea, eb
  else
    bind, status, a, b = oi, ostatus, oa, ob
  end
end
local verdict = 0
if allowed then
  verdict = 1
end
-- An empty `repaired` is left out of the reply, as decide.lua leaves it out.
if single then
  if problems then
    return {verdict, a, b, string.sub(problems[1], 3), time_us}
  end
  return {verdict, a, b, time_us}
end
if problems then
  return {verdict, a, b, table.concat(problems, '\n'), bind, status, shadow_refused, time_us}
end
return {verdict, a, b, bind, status, shadow_refused, time_us}
