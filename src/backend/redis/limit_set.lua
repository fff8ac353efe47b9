-- One decision over a set of limits on one key, in one call: the part gcra.lua and
-- sliding_window.lua share (prepended after prelude.lua; each script ends by calling `decide_set`
-- with its own one-limit decision).
--
-- KEYS[1]  the key's value: every limit's state, bare or packed by limit name (prelude.lua), so a
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
-- figures as the algorithm's script says); `repaired` is "" or what was wrong with the state it
-- replaced; `time` is the server's TIME in microseconds.
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
-- could not read at all (every entry of it is dropped).
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
-- state changes (a refusal, a peek), so expired entries go at the next write.
--
-- `one(state, p1, p2, cost, now_us, now_frac, repair, min_ttl)` answers the decision of the limit
-- whose state is `state` (a string, or nil for none) as (status, a, b, remaining, repaired, value,
-- ttl): `status` as above; admitted, `remaining` is the units left after it and `value`, `ttl` the
-- state to write when it spends; or (nil, error reply).

local function decide_set(one)
  local n, nargs = #KEYS, #ARGV
  local time_us, now_us, now_frac = clock(ARGV[3], ARGV[nargs])
  if not now_us then
    return time_us
  end
  if n ~= 1 then
    return redis.error_reply('RAMPARTARG the rate limit script takes one key')
  end
  local key, min_ttl, repair = KEYS[1], ARGV[4], ARGV[5]
  local raw = redis.pcall('GET', key)
  local single = nargs == 6

  if single and type(raw) ~= 'table' and (not raw or string.byte(raw, 1) ~= 124) then
    -- The layer's own limit on a bare value or none: what the single form has always done.
    local s, a, b, _, repaired, value, ttl =
      one(raw, tonumber(ARGV[1]), tonumber(ARGV[2]), 1, now_us, now_frac, repair, min_ttl)
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

  local cost, flags = 1, '00'
  if single then
    n = 1
  else
    n = (nargs - 6) / 3
    if n < 1 or n > 8 or n ~= math.floor(n) then
      return redis.error_reply('RAMPARTARG a set of n limits takes 3n + 6 arguments')
    end
    cost = tonumber(ARGV[6])
    if not cost or cost < 0 or cost > 4294967295 or cost ~= math.floor(cost) then
      return redis.error_reply('RAMPARTARG the cost must be a whole number from 0 to 2^32 - 1')
    end
    flags = ARGV[7]
    if #flags ~= n + 1 or not string.match(flags, '^[01]+$') then
      return redis.error_reply('RAMPARTARG the flags must be n + 1 characters 0 or 1')
    end
  end
  local peek = string.byte(flags, 1) == 49

  local time_ms = divmod(time_us, 1000)
  local states, expires, order, bare = read_entries(raw, time_ms)
  -- Made when there is one: "<i> <what was wrong>" lines.
  local problems
  local dirty = false
  if not states then
    if repair ~= '1' then
      return redis.error_reply('RAMPARTDATA ' .. expires)
    end
    problems = {'0 ' .. expires}
    states, expires, order, bare, dirty = {}, {}, {}, false, true
  end

  -- Each limit's decision in one table (fewer allocations per call), 8 slots per limit from
  -- k = 8 (i - 1): name, status, a, b, remaining, value, ttl, and whether it was repaired; shadow
  -- limits are read from the flags.
  local d = {}
  local allowed, enforced, shadow_refused = true, false, 0
  min_ttl = tonumber(min_ttl)
  for i = 1, n do
    local name, p1, p2 = '', ARGV[1], ARGV[2]
    if not single then
      name = ARGV[8]
      if i > 1 then
        name, p1, p2 = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
      end
      for j = 1, i - 1 do
        if d[8 * j - 7] == name then
          return redis.error_reply('RAMPARTARG two limits of a set have one name')
        end
      end
    end
    local s, a, b, r, repaired, value, ttl =
      one(states[name], tonumber(p1), tonumber(p2), cost, now_us, now_frac, repair, min_ttl)
    if not s then
      return a
    end
    local k = 8 * (i - 1)
    d[k + 1], d[k + 2], d[k + 3], d[k + 4], d[k + 5], d[k + 6], d[k + 7] =
      name, s, a, b, r, value, ttl
    if repaired ~= '' then
      d[k + 8] = true
      if not problems then
        problems = {}
      end
      problems[#problems + 1] = i .. ' ' .. repaired
    end
    if string.byte(flags, i + 1) == 49 then
      if s ~= 1 then
        shadow_refused = shadow_refused + 2 ^ (i - 1)
      end
    else
      enforced = true
      if s ~= 1 then
        allowed = false
      end
    end
  end

  local bind
  if allowed then
    local fewest
    for i = 1, n do
      if string.byte(flags, i + 1) ~= 49 or not enforced then
        local k = 8 * (i - 1)
        local r = 0
        if d[k + 2] == 1 then
          r = d[k + 5]
        end
        if not bind or r < fewest then
          bind, fewest = i, r
        end
      end
    end
  else
    local bs, bb
    for i = 1, n do
      local k = 8 * (i - 1)
      local s = d[k + 2]
      if string.byte(flags, i + 1) ~= 49 and s ~= 1 then
        if not bind or (s == 2 and bs ~= 2) or (s == 0 and bs == 0 and d[k + 4] > bb) then
          bind, bs, bb = i, s, d[k + 4]
        end
      end
    end
  end

  for i = 1, n do
    local k = 8 * (i - 1)
    local name = d[k + 1]
    if not peek and cost > 0 and d[k + 2] == 1 and (allowed or string.byte(flags, i + 1) == 49) then
      if not states[name] then
        order[#order + 1] = name
      end
      states[name], expires[name] = d[k + 6], time_ms + d[k + 7]
      dirty = true
    elseif d[k + 8] then
      states[name] = nil
      dirty = true
    end
  end
  if dirty then
    write_entries(key, states, expires, order, time_ms, bare)
  end

  local a = 0
  if allowed then
    a = 1
  end
  local k = 8 * (bind - 1)
  if single then
    local repaired = ''
    if problems then
      repaired = string.sub(problems[1], 3)
    end
    return {a, d[3], d[4], repaired, time_us}
  end
  local repaired = ''
  if problems then
    repaired = table.concat(problems, '\n')
  end
  return {a, d[k + 3], d[k + 4], repaired, bind, d[k + 2], shadow_refused, time_us}
end
