-- GCRA, a lease: up to N units carved from a key's quota at once, atomically. Carving k units is
-- exactly k decisions of gcra.lua at the same instant (the state is the same TAT, at the same key,
-- so exact and leased replicas share one quota); with N = 1 it is one exact decision.
--
-- KEYS[1]  the limiter key; its value holds the layer's own limit's state (prelude.lua: a bare
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

local time_us, now_us, now_frac = clock(ARGV[3], ARGV[7])
if not now_us then
  return time_us
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
local states, expires, order, problem
if type(raw) == 'table' or (raw and string.byte(raw, 1) == 124) then
  states, expires, order = read_entries(raw, divmod(time_us, 1000))
  if not states then
    problem = expires
    if ARGV[5] ~= '1' then
      return redis.error_reply('RAMPARTDATA ' .. problem)
    end
    states, expires, order = {}, {}, {}
  end
  raw = states['']
end

local base, repaired = gcra_base(raw, now_us, now_frac, ARGV[5])
if not repaired then
  return base
end
if problem then
  repaired = problem
end

if base + emission > tolerance then
  return {0, base, base + emission - tolerance, repaired, time_us}
end
-- As many units as fit under the tolerance, at most the ones wanted.
local fit = divmod(tolerance - base, emission)
local k = wanted
if fit < k then
  k = fit
end
local ahead = base + k * emission
local value, ttl = gcra_state(now_us, now_frac, ahead, ARGV[4])
if states then
  local time_ms = divmod(time_us, 1000)
  if not states[''] then
    order[#order + 1] = ''
  end
  states[''], expires[''] = value, time_ms + ttl
  write_entries(key, states, expires, order, time_ms, false)
else
  redis.call('SET', key, value, 'PX', ttl)
end
return {k, tolerance - ahead, ahead, repaired, time_us}
