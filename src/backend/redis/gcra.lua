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

local time_us, now_us, now_frac = clock(ARGV[3], ARGV[6])
if not now_us then
  return time_us
end
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])

local base, repaired = gcra_base(now_us, now_frac, tolerance, ARGV[5])
if not repaired then
  return base
end

local ahead = base + emission
if ahead > tolerance then
  return {0, base, ahead - tolerance, repaired, time_us}
end
gcra_write(now_us, now_frac, ahead, ARGV[4])
return {1, tolerance - ahead, ahead, repaired, time_us}
