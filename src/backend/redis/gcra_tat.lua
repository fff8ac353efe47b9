-- GCRA state, shared by gcra.lua and lease/lease.lua (prepended after prelude.lua): the theoretical
-- arrival time (TAT) of a key's next request, in nanoseconds since the clock's epoch, as decimal
-- digits.

-- The furthest ahead of now (ns) a TAT can be that some decision wrote: the largest tolerance the
-- store accepts (2^52 ns, about 52 days), plus SKEW. A quota changed at run time keeps its state,
-- so a TAT written under a larger quota than the one deciding now is a state, not damage: it is
-- refused until it drains, as in memory.
local MAX_AHEAD = 4503599627370496 + SKEW

-- How far the TAT `raw` (a state as read from a rate limit value, or nil/false when there is
-- none) is ahead of now (0 when it is not): `base - now` in gcra.rs; and what was wrong with the
-- state, "" when nothing. A state it cannot read (anything but 1 to 19 digits, or a TAT further
-- ahead of now than MAX_AHEAD) is replaced by a fresh state (base 0) when `repair` is "1", and
-- answered with a RAMPARTDATA error reply otherwise, as (error reply, nil).
local function gcra_base(raw, now_us, now_frac, repair)
  local base = 0
  local problem
  if raw then
    local tat_us, tat_frac = split_ns(raw)
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
  end
  if not problem then
    return base, ''
  end
  if repair ~= '1' then
    return redis.error_reply('RAMPARTDATA ' .. problem), nil
  end
  -- A fresh state, which the caller writes or deletes.
  return 0, problem
end

-- The state that puts the TAT at now + ahead, and its expiry (ms): once it has passed (the key is
-- then as good as absent), and no sooner than `min_ttl` ms (a number).
local function gcra_state(now_us, now_frac, ahead, min_ttl)
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
  return value, ttl
end
