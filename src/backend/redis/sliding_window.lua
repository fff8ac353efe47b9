-- Sliding-window counter: one decision over a set of limits on one key (limit_set.lua: arguments,
-- reply, the set's rules; now.lua, decide.lua and limit_set.lua follow this file in the script),
-- each limit computed exactly as src/rate_limit/algorithm/sliding_window.rs `decide` does,
-- atomically.
--
-- A limit's state: "<window index> <previous count> <current count> <period>", the index in
-- windows of that period (ns). A state without the period (as written before it was added) is in
-- the decision's period. Counts made under another period (the limit's was changed at run time)
-- are moved as the in-memory store moves them (src/rate_limit/algorithm/sliding_window.rs
-- `Window::rebased`), and written back even when nothing is spent (`keep`; limit_set.lua).
-- A limit's two parameters: its period (ns) and its limit (units per period).
--
-- A limit's figures: admitted, a = remaining and b = reset; refused, a = reset and b = retry
-- after; a cost above the limit, a = reset and b = 0. Nanoseconds.
--
-- State it cannot read: text not of the form above, a count of 2^32 or
-- more (no decision writes one; counts above this limit's are those of a larger limit before a
-- change at run time, and are read), or a window that begins more than SKEW after now (an
-- allowance for clocks, as in gcra.lua; a window that begins within it is taken as the current
-- one).
--
-- sliding_window.rs compares `prev * (period - elapsed) + (curr + cost) * period <= limit * period`
-- in 128-bit integers. Lua numbers are doubles, exact below 2^53, so the same comparisons are made
-- here without ever forming those products: everything reduces to T(w, d) = floor(w * period / d)
-- for counts w <= d < 2^32, computed exactly in pieces below 2^53. The store requires
-- 1 us <= period <= 2^52 ns, which keeps every value here below 2^53.

-- q, r = floor(a / b), a mod b, exactly for integers 0 <= a < 2^53 (fmod is exact; `%` is not).
local function divmod(a, b)
  local r = fmod(a, b)
  return (a - r) / b, r
end

-- floor(a * b / c) for integers a, b, c < 2^32 (a * b may reach 2^64: split a in 16-bit halves).
local function muldiv(a, b, c)
  local ah, al = divmod(a, 65536)
  local q1, r1 = divmod(ah * b, c)
  local q2 = divmod(r1 * 65536 + al * b, c)
  return q1 * 65536 + q2
end

-- T(w, d) = floor(w * P / d) for 0 <= w <= d, 0 < d < 2^32: w * floor(P / d) <= P, and the
-- remainder's share is muldiv.
local function T(P, w, d)
  local qp, rp = divmod(P, d)
  return w * qp + muldiv(w, rp, d)
end

-- floor(now / P), now mod P, where now = now_us * 1000 + now_frac (ns).
local function split(now_us, now_frac, P)
  local q1, r1 = divmod(now_us, P)
  -- (r1 * 1000) by binary Horner over 1000 = 0b1111101000, reducing mod P at each step (all < 2P);
  -- the bits from the top, by arithmetic (no table nor `ipairs` per call).
  local q2, e = 0, 0
  local bits, bit = 1000, 512
  while bit >= 1 do
    q2, e = q2 * 2, e * 2
    if e >= P then
      q2, e = q2 + 1, e - P
    end
    if bits >= bit then
      bits = bits - bit
      e = e + r1
      if e >= P then
        q2, e = q2 + 1, e - P
      end
    end
    bit = bit / 2
  end
  e = e + now_frac
  if e >= P then
    q2, e = q2 + 1, e - P
  end
  return q1 * 1000 + q2, e
end

-- The one-limit decision decide.lua and limit_set.lua make (limit_set.lua: its arguments and
-- answers).
local function decide_one(raw, P, L, cost, now_us, now_frac, repair, min_ttl)
  local index, e = split(now_us, now_frac, P)

  local prev, curr = 0, 0
  -- The window the state is written back for: this one, or a later one read within SKEW.
  local stored_index = index
  local problem
  -- Counts moved from another period: written back even when nothing is spent (below).
  local rebased = false
  if raw then
    local si, sp, sc, sq = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
    if not si then
      si, sp, sc = string.match(raw, '^(%d+) (%d+) (%d+)$')
    end
    if not si or #si > 16 or #sp > 10 or #sc > 10 or (sq and #sq > 16)
      or tonumber(si) >= 9007199254740992 then
      problem = 'the key does not hold sliding-window counts'
    else
      si, sp, sc, sq = tonumber(si), tonumber(sp), tonumber(sc), sq and tonumber(sq)
      if sq and (sq < 1000 or sq > 4503599627370496) then
        problem = 'the key holds sliding-window counts of a period no limit has'
      elseif sp > 4294967295 or sc > 4294967295 then
        problem = 'the key holds sliding-window counts above any limit'
      elseif sq and sq ~= P then
        -- Counted under another period Q (sliding_window.rs `Window::rebased`): each count goes
        -- to the window of P holding the latest instant it can have been made at (the current
        -- count's: now or its window's end; the previous count's: its window's end), by its age
        -- before now: age <= e is this window, age <= e + P the one before, older no longer counts.
        local qi, qe = split(now_us, now_frac, sq)
        rebased = true
        if si > qi then
          -- A window of Q that begins after now: within SKEW, all its counts are this window's
          -- (both may have been made as late as now).
          if (si - qi) * sq - qe > SKEW then
            problem = 'the key holds a sliding window that has not begun'
          else
            curr = math.min(sp + sc, 4294967295)
          end
        else
          local age = (qi - si) * sq + qe
          local function place(a, n)
            if a <= e then
              curr = math.min(curr + n, 4294967295)
            elseif a <= e + P then
              prev = math.min(prev + n, 4294967295)
            end
          end
          place(math.max(age - sq + 1, 0), sc)
          place(age + 1, sp)
        end
      elseif si > index and (si - index) * P - e > SKEW then
        problem = 'the key holds a sliding window that has not begun'
      elseif si >= index then
        -- Window.at(index): the same window (or one a clock ahead began within SKEW)...
        prev, curr = sp, sc
        stored_index = si
      elseif si + 1 == index then
        -- ...the next one, or nothing counts any more.
        prev, curr = sc, 0
      end
    end
  end
  local repaired = ''
  if problem then
    if repair ~= '1' then
      return nil, redis.error_reply('RAMPARTDATA ' .. problem)
    end
    -- A fresh state, which the caller writes or deletes.
    repaired, prev, curr = problem, 0, 0
  end

  local to_window_end = P - e
  -- ceil(prev * (P - e) / P): the least w with T(w, prev) >= P - e, from an estimate off by one at
  -- most.
  local function weighted()
    if prev == 0 then
      return 0
    end
    local w = math.ceil(prev * to_window_end / P)
    if w > prev then
      w = prev
    elseif w < 0 then
      w = 0
    end
    while w < prev and T(P, w, prev) < to_window_end do
      w = w + 1
    end
    while w > 0 and T(P, w - 1, prev) >= to_window_end do
      w = w - 1
    end
    return w
  end
  local reset = to_window_end
  if curr > 0 then
    reset = to_window_end + P
  end
  -- Everything counted now has decayed by the end of the window after the stored one.
  local ttl = divmod(to_window_end + P + (stored_index - index) * P, 1000000) + 1
  if ttl < min_ttl then
    ttl = min_ttl
  end
  -- Counts moved from another period, unspent: the caller writes them when it writes nothing
  -- else for this limit (a refusal, a peek aside), so that they expire by this period, and a later
  -- decision reads them as the in-memory store does (which keeps them on every decision).
  local keep
  if rebased and not problem then
    keep = string.format('%d %d %d %d', stored_index, prev, curr, P)
  end

  if cost > L then
    return 2, reset, 0, 0, repaired, nil, nil, keep, ttl
  end
  -- Admitted iff prev * (P - e) <= (L - curr - cost) * P, i.e. (with j = L - curr - cost >= 0)
  -- when prev = 0, j >= prev, or P - e <= T(j, prev).
  local j = L - curr - cost
  -- A cost of 0 passes even past the limit (counts spent under a larger one): it spends nothing.
  if cost == 0 or (j >= 0 and (prev == 0 or j >= prev or to_window_end <= T(P, j, prev))) then
    local left = math.max(j - weighted(), 0)
    -- %d formats a 64-bit integer (the index is below 2^53), several times cheaper than %.0f.
    local value = string.format('%d %d %d %d', stored_index, prev, curr + cost, P)
    return 1, left, to_window_end + P, left, repaired, value, ttl, keep, ttl
  end

  local retry_after
  if j >= 0 then
    -- Room in this window once enough of the previous one has slid out.
    retry_after = P - T(P, j, prev) - e
  else
    -- Wait for the next window, where this window's count becomes the previous one.
    retry_after = to_window_end + P - T(P, L - cost, curr)
  end
  return 0, reset, retry_after, 0, repaired, nil, nil, keep, ttl
end
