-- GCRA, a lease: up to N units carved from a key's quota at once, atomically. Carving k units is
-- exactly k decisions of gcra.lua at the same instant (the state is the same TAT, at the same key,
-- so exact and leased replicas share one quota); with N = 1 it is one exact decision.
--
-- KEYS[1]  the limiter key; its value holds the layer's own limit's state (entries.lua: a bare
--          value, or its entry in a packed one, whose other entries are kept as they are): the
--          theoretical arrival time (TAT) of the next request, in nanoseconds since the clock's
--          epoch (the Unix epoch with Redis TIME), as decimal digits.
-- ARGV[1]  emission interval (ns)
-- ARGV[2]  tolerance, burst x emission (ns)
-- ARGV[3]  now (ns) from the caller's clock, or "" to read the server's TIME
-- ARGV[4]  minimum expiry (ms); 0 for none
-- ARGV[5]  "1" to repair state it cannot read, "0" to answer it with a RAMPARTDATA error
-- ARGV[6]  N, the units wanted (1 or more)
-- ARGV[7]  not after: the server TIME (us) after which the caller has given up, or "" for no bound
--
-- Returns {k, slack, reset, repaired, time} when k >= 1 units were carved (k <= N: as many as the
-- quota holds now; slack = tolerance - reset is what is left in Redis after them), and
-- {0, reset, retry_after, repaired, time} when not even one unit is left: nanoseconds, as
-- gcra.lua. Past ARGV[7] it answers "RAMPARTLATE <time>" and writes nothing: a lease the caller
-- gave up on must not count.
--
-- Lua numbers are doubles, exact for integers below 2^53: absolute times are split into
-- microseconds and a remainder, everything computed is relative to now and below 2^53 (the store
-- refuses quotas whose tolerance exceeds 2^52 ns), and k * emission <= tolerance.

-- The clock and the deadline (ARGV[7], the last) come first, from now.lua.
if nargs ~= 7 then
  return redis.error_reply('RAMPARTARG the lease script takes seven arguments')
end
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[6])
if not wanted or wanted < 1 or wanted ~= math.floor(wanted) then
  return redis.error_reply('RAMPARTARG the lease size must be a whole number of units, 1 or more')
end

local key = KEYS[1]
local raw = redis.pcall('GET', key)
-- A packed value (or another type of value): the own limit's entry, the others kept.
local E, m, own, problem
local time_ms = (time_us - fmod(time_us, 1000)) / 1000
if type(raw) == 'table' or (raw and byte(raw, 1) == 124) then
  E, m = read_entries(raw, time_ms)
  if not E then
    problem = m
    if ARGV[5] ~= '1' then
      return redis.error_reply('RAMPARTDATA ' .. problem)
    end
    E, m = {}, 0
  end
  -- The slot of the own limit's live entry, 0 for none.
  own, raw = 0, nil
  for k = 3, 3 * m, 3 do
    if E[k] and E[k - 2] == '' then
      own, raw = k, E[k]
      break
    end
  end
end

-- One unit, as a decision of cost 1: refused, or the units that fit (`remaining` more than this
-- one), carved by a second decision of that cost when more than one is wanted.
local min_ttl = tonumber(ARGV[4])
local s, a, b, remaining, repaired, value, ttl, keep, keep_ttl =
  decide_one(raw, emission, tolerance, 1, now_us, now_frac, ARGV[5], min_ttl)
if not s then
  return a
end
if problem then
  repaired = problem
end
if s ~= 1 then
  if keep then
    -- A TAT beyond the tolerance (spent under a quota of a longer one), rebased to it.
    if E then
      E[own - 1], E[own] = time_ms + keep_ttl, keep
      write_entries(key, E, m, time_ms, false)
    else
      redis.call('SET', key, keep, 'PX', format('%d', keep_ttl))
    end
  end
  -- a is how far ahead of now the TAT is: reset. A unit fits once it is within the tolerance.
  return {0, a, a + emission - tolerance, repaired, time_us}
end
local k = wanted
if remaining + 1 < k then
  k = remaining + 1
end
if k > 1 then
  -- The same state read again (a repaired one as fresh: `repair` has said so once).
  local state = raw
  if repaired ~= '' then
    state = nil
  end
  local _
  s, a, b, remaining, _, value, ttl =
    decide_one(state, emission, tolerance, k, now_us, now_frac, ARGV[5], min_ttl)
end
if E then
  if own == 0 then
    m = m + 1
    own = 3 * m
    E[own - 2] = ''
  end
  E[own - 1], E[own] = time_ms + ttl, value
  write_entries(key, E, m, time_ms, false)
else
  redis.call('SET', key, value, 'PX', format('%d', ttl))
end
-- a = slack, what is left in Redis after the k units; b = reset, how far ahead the TAT runs.
return {k, a, b, repaired, time_us}
