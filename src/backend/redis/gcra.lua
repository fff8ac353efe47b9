-- GCRA, one decision: exactly what src/rate_limit/algorithm/gcra.rs `decide` computes, atomically.
--
-- KEYS[1]  the limiter key; its value is the theoretical arrival time (TAT) of the next request, in
--          nanoseconds since the clock's epoch (the Unix epoch with Redis TIME), as decimal digits.
-- ARGV[1]  emission interval (ns)
-- ARGV[2]  tolerance, burst x emission (ns)
-- ARGV[3]  now (ns) from the caller's clock, or "" to read the server's TIME (the default, so
--          replicas with skewed clocks agree)
-- ARGV[4]  minimum expiry (ms); 0 for none
-- ARGV[5]  "1" to repair state it cannot read (replace it with a fresh state and say so), "0" to
--          answer it with a RAMPARTDATA error and leave it as it is
-- ARGV[6]  not after: the server TIME (us since the Unix epoch) after which the caller has given
--          up on this call, or "" for no bound
--
-- Returns {1, slack, reset, repaired, time} when admitted (remaining = slack / emission),
-- {0, reset, retry_after, repaired, time} when refused: nanoseconds; `repaired` is "" or what was
-- wrong with the state it replaced; `time` is the server's TIME in microseconds, which tells the
-- caller how the server's clock relates to its own. Past ARGV[6] it answers the error
-- "RAMPARTLATE <time>" without reading or writing anything: the caller has answered its request
-- without Redis (failure policy), and counting it now would count it twice.
--
-- State it cannot read: another type of value, anything but 1 to 19 digits, or a TAT further
-- ahead of now than the tolerance (which no decision writes) by more than SKEW, an allowance for
-- clocks: a key written on a node whose clock ran ahead (before a failover) or before the clock
-- was stepped back.
--
-- Lua numbers are doubles, exact for integers below 2^53. Absolute times (about 2^60 ns) are
-- therefore split into microseconds and a sub-microsecond remainder, and everything computed is
-- relative to now and below 2^53: the store refuses quotas whose tolerance exceeds 2^52 ns.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after the non-deterministic TIME
end

-- q, r = floor(a / b), a mod b, exactly for integers 0 <= a < 2^53 (fmod is exact; `%` is not).
local function divmod(a, b)
  local r = math.fmod(a, b)
  return (a - r) / b, r
end

-- "1700000000123456789" -> 1700000000123456, 789; nil for anything but 1 to 19 digits.
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

local SKEW = 1000000000 -- ns

local t = redis.call('TIME')
local time_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local not_after = tonumber(ARGV[6] or '')
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

-- How far the stored TAT is ahead of now (0 when it is not): `base - now` in gcra.rs.
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
    -- In microseconds first: a foreign value may be centuries ahead, beyond 2^53 ns.
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
  -- A fresh state: always admitted, and written below (SET replaces a value of any type).
  repaired, base = problem, 0
end

local ahead = base + emission
if ahead > tolerance then
  return {0, base, ahead - tolerance, repaired, time_us}
end

-- Store now + ahead as decimal nanoseconds.
local carry, frac = divmod(now_frac + ahead, 1000)
local tat_us = now_us + carry
local value
if tat_us > 0 then
  value = string.format('%.0f%03d', tat_us, frac)
else
  value = string.format('%d', frac)
end
-- The key is idle (as good as absent) once the TAT has passed.
local ttl = divmod(ahead, 1000000) + 1
local min_ttl = tonumber(ARGV[4])
if ttl < min_ttl then
  ttl = min_ttl
end
redis.call('SET', KEYS[1], value, 'PX', ttl)
return {1, tolerance - ahead, ahead, repaired, time_us}
