-- GCRA, a lease: up to N units carved from a key's quota at once, atomically. Carving k units is
-- exactly k decisions of gcra.lua at the same instant (the state is the same TAT, at the same key,
-- so exact and leased replicas share one quota); with N = 1 it is one exact decision.
--
-- KEYS[1]  the limiter key; its value is the theoretical arrival time (TAT) of the next request, in
--          nanoseconds since the clock's epoch (the Unix epoch with Redis TIME), as decimal digits.
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

if redis.replicate_commands then
  redis.replicate_commands()
end

local function divmod(a, b)
  local r = math.fmod(a, b)
  return (a - r) / b, r
end

local function split_ns(s)
  if type(s) ~= 'string' or #s == 0 or #s > 19 or not string.match(s, '^%d+$') then
    return nil
  end
  if #s <= 3 then
    return 0, tonumber(s)
  end
  local us = tonumber(string.sub(s, 1, -4))
  if us >= 9007199254740992 then
    return nil
  end
  return us, tonumber(string.sub(s, -3))
end

local SKEW = 1000000000 -- ns, as gcra.lua

local t = redis.call('TIME')
local time_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local not_after = tonumber(ARGV[7] or '')
if not_after and time_us > not_after then
  return redis.error_reply(string.format('RAMPARTLATE %.0f', time_us))
end

local now_us, now_frac
if ARGV[3] == '' then
  now_us, now_frac = time_us, 0
else
  now_us, now_frac = split_ns(ARGV[3])
  if not now_us then
    return redis.error_reply('RAMPARTARG the clock value is out of range')
  end
end
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[6])
if not wanted or wanted < 1 or wanted ~= math.floor(wanted) then
  return redis.error_reply('RAMPARTARG the lease size must be a whole number of units, 1 or more')
end

local base = 0
local problem
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'table' and raw.err then
  problem = 'the key holds another type of value (' .. raw.err .. ')'
elseif raw then
  local tat_us, tat_frac = split_ns(raw)
  if not tat_us then
    problem = 'the key does not hold a GCRA arrival time'
  elseif tat_us > now_us or (tat_us == now_us and tat_frac > now_frac) then
    if tat_us - now_us > (tolerance + SKEW) / 1000 + 1 then
      base = tolerance + SKEW + 1
    else
      base = (tat_us - now_us) * 1000 + (tat_frac - now_frac)
    end
    if base > tolerance + SKEW then
      problem = 'the key holds a GCRA arrival time further ahead than the quota allows'
    end
  end
end
local repaired = ''
if problem then
  if ARGV[5] ~= '1' then
    return redis.error_reply('RAMPARTDATA ' .. problem)
  end
  repaired, base = problem, 0
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

local carry, frac = divmod(now_frac + ahead, 1000)
local tat_us = now_us + carry
local value
if tat_us > 0 then
  value = string.format('%.0f%03d', tat_us, frac)
else
  value = string.format('%d', frac)
end
local ttl = divmod(ahead, 1000000) + 1
local min_ttl = tonumber(ARGV[4])
if ttl < min_ttl then
  ttl = min_ttl
end
redis.call('SET', KEYS[1], value, 'PX', ttl)
return {k, tolerance - ahead, ahead, repaired, time_us}
