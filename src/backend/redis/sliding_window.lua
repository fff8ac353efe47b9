-- Sliding-window counter, one decision: exactly what src/rate_limit/algorithm/sliding_window.rs
-- `decide` computes, atomically.
--
-- KEYS[1]  the limiter key; its value is "<window index> <previous count> <current count>"
-- ARGV[1]  period (ns)
-- ARGV[2]  limit (requests per period)
-- ARGV[3]  now (ns) from the caller's clock, or "" to read the server's TIME
-- ARGV[4]  minimum expiry (ms); 0 for none
-- ARGV[5]  "1" to repair state it cannot read (replace it with a fresh state and say so), "0" to
--          answer it with a RAMPARTDATA error and leave it as it is
-- ARGV[6]  not after: the server TIME (us since the Unix epoch) after which the caller has given
--          up on this call, or "" for no bound
--
-- Returns {1, remaining, reset, repaired, time} when admitted, {0, reset, retry_after, repaired,
-- time} when refused (ns); `repaired` and `time` as in gcra.lua, and past ARGV[6] the error
-- "RAMPARTLATE <time>" without reading or writing anything.
--
-- State it cannot read: another type of value, text not of the form above, a count above the
-- limit (no decision writes one), or a window that begins more than SKEW after now (an allowance
-- for clocks, as in gcra.lua; a window that begins within it is taken as the current one).
--
-- sliding_window.rs compares `prev * (period - elapsed) + (curr + 1) * period <= limit * period` in
-- 128-bit integers. Lua numbers are doubles, exact below 2^53, so the same comparisons are made
-- here without ever forming those products: everything reduces to T(w, d) = floor(w * period / d)
-- for counts w <= d < 2^32, computed exactly in pieces below 2^53. The store requires
-- 1 us <= period <= 2^52 ns, which keeps every value here below 2^53.

local time_us, now_us, now_frac = clock(ARGV[3], ARGV[6])
if not now_us then
  return time_us
end
local P = tonumber(ARGV[1])
local L = tonumber(ARGV[2])

-- index, elapsed = floor(now / P), now mod P, where now = now_us * 1000 + now_frac (ns).
local q1, r1 = divmod(now_us, P)
-- (r1 * 1000) by binary Horner over 1000 = 0b1111101000, reducing mod P at each step (all < 2P).
local q2, e = 0, 0
for _, bit in ipairs({1, 1, 1, 1, 1, 0, 1, 0, 0, 0}) do
  q2, e = q2 * 2, e * 2
  if e >= P then
    q2, e = q2 + 1, e - P
  end
  if bit == 1 then
    e = e + r1
    if e >= P then
      q2, e = q2 + 1, e - P
    end
  end
end
e = e + now_frac
if e >= P then
  q2, e = q2 + 1, e - P
end
local index = q1 * 1000 + q2

local prev, curr = 0, 0
-- The window the state is written back for: this one, or a later one read within SKEW.
local stored_index = index
local problem
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'table' and raw.err then
  problem = 'the key holds another type of value (' .. raw.err .. ')'
elseif raw then
  local si, sp, sc = string.match(raw, '^(%d+) (%d+) (%d+)$')
  if not si or #si > 16 or #sp > 10 or #sc > 10 or tonumber(si) >= 9007199254740992 then
    problem = 'the key does not hold sliding-window counts'
  else
    si, sp, sc = tonumber(si), tonumber(sp), tonumber(sc)
    if sp > L or sc > L then
      problem = 'the key holds sliding-window counts above the limit'
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
  if ARGV[5] ~= '1' then
    return redis.error_reply('RAMPARTDATA ' .. problem)
  end
  -- A fresh state: always admitted, and written below (SET replaces a value of any type).
  repaired, prev, curr = problem, 0, 0
end

-- floor(a * b / c) for integers a, b, c < 2^32 (a * b may reach 2^64: split a in 16-bit halves).
local function muldiv(a, b, c)
  local ah, al = divmod(a, 65536)
  local q1_, r1_ = divmod(ah * b, c)
  local q2_ = divmod(r1_ * 65536 + al * b, c)
  return q1_ * 65536 + q2_
end

-- T(w, d) = floor(w * P / d) for 0 <= w <= d, 0 < d < 2^32: w * floor(P / d) <= P, and the
-- remainder's share is muldiv.
local function T(w, d)
  local qp, rp = divmod(P, d)
  return w * qp + muldiv(w, rp, d)
end

local to_window_end = P - e
-- Admitted iff prev * (P - e) <= (L - curr - 1) * P, i.e. (with j = L - curr - 1 >= 0) when
-- prev = 0, j >= prev, or P - e <= T(j, prev).
local j = L - curr - 1
if j >= 0 and (prev == 0 or j >= prev or to_window_end <= T(j, prev)) then
  -- remaining = j - ceil(prev * (P - e) / P); the ceiling is the least w with T(w, prev) >= P - e.
  local weighted = 0
  if prev > 0 then
    local w = math.ceil(prev * to_window_end / P) -- an estimate, off by one at most
    if w > prev then
      w = prev
    elseif w < 0 then
      w = 0
    end
    while w < prev and T(w, prev) < to_window_end do
      w = w + 1
    end
    while w > 0 and T(w - 1, prev) >= to_window_end do
      w = w - 1
    end
    weighted = w
  end
  -- Everything counted now has decayed by the end of the window after the stored one.
  local ttl = divmod(to_window_end + P + (stored_index - index) * P, 1000000) + 1
  local min_ttl = tonumber(ARGV[4])
  if ttl < min_ttl then
    ttl = min_ttl
  end
  redis.call('SET', KEYS[1], string.format('%.0f %d %d', stored_index, prev, curr + 1), 'PX', ttl)
  return {1, j - weighted, to_window_end + P, repaired, time_us}
end

local reset = to_window_end
if curr > 0 then
  reset = to_window_end + P
end
local retry_after
if j >= 0 then
  -- Room in this window once enough of the previous one has slid out.
  retry_after = P - T(j, prev) - e
else
  -- Wait for the next window, where this window's count becomes the previous one.
  retry_after = to_window_end + P - T(L - 1, curr)
end
return {0, reset, retry_after, repaired, time_us}
