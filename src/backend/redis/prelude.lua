-- Shared by the rate limit scripts (gcra.lua, sliding_window.lua, lease/lease.lua): prepended to
-- each when the crate builds it, so each helper is written once and each script stays one
-- self-contained EVAL body.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after the non-deterministic TIME
end

-- An allowance for clocks (ns): state a little ahead of what any decision writes may come from a
-- node whose clock ran ahead (before a failover) or from before the clock was stepped back.
local SKEW = 1000000000

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

-- The server's TIME in microseconds, and now as microseconds and a sub-microsecond remainder: from
-- `now_arg` (ns on the caller's clock) or, when it is "", the server's TIME. When the call is past
-- `not_after_arg` (server us; "" for no bound) it answers the error reply "RAMPARTLATE <time>"
-- instead, and nothing is read or written: the caller has answered its request without Redis.
-- Errors come back as (error reply, nil).
local function clock(now_arg, not_after_arg)
  local t = redis.call('TIME')
  local time_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local not_after = tonumber(not_after_arg or '')
  if not_after and time_us > not_after then
    return redis.error_reply(string.format('RAMPARTLATE %.0f', time_us)), nil
  end
  if now_arg == '' then
    return time_us, time_us, 0
  end
  local now_us, now_frac = split_ns(now_arg)
  if not now_us then
    return redis.error_reply('RAMPARTARG the clock value is out of range'), nil
  end
  return time_us, now_us, now_frac
end

-- A rate limit key's value: the state of every limit of one key (src/backend/redis/mod.rs, "Redis
-- keys"). Two forms:
--
-- * bare: the state of the layer's own limit (the one named after the layer) and nothing else,
--   exactly what a single-quota limiter has always written (a GCRA arrival time, or sliding-window
--   counts); the key's PX is that state's expiry. A value whose first byte is not "|" is bare.
-- * packed: one or more entries, each "|<name>|<expires>|<state>", one per limit:
--   <name>     the limit's name (letters, digits and "-_.:"), empty for the layer's own limit
--   <expires>  when the entry expires: the server's TIME, in ms since the Unix epoch, as digits
--              (at most 13)
--   <state>    the limit's state, as a bare value holds it
--   Names and states never hold "|". An entry whose expiry has passed is as good as absent and is
--   dropped at the next write; the key's PX is the longest live entry's.
--
-- A value with only the own limit's state is always written bare, so the single form's value is
-- what it has always been. An entry of a limit not in a decision (another tier the key was in, a
-- limit removed at run time) is carried through while it is live.

-- The live entries of `raw` (what GET answered), read at `time_ms`: states and expiries by name,
-- names in their stored order, and `bare` when `raw` is a bare state (its expiry is the key's,
-- read when it must be packed); or (nil, problem) when the value cannot be read at all (another
-- type of value, a packed value that does not parse).
local function read_entries(raw, time_ms)
  local states, expires, order = {}, {}, {}
  if type(raw) == 'table' then
    return nil, 'the key holds another type of value (' .. tostring(raw.err) .. ')'
  end
  if not raw then
    return states, expires, order, false
  end
  if string.byte(raw, 1) ~= 124 then
    if string.find(raw, '|', 1, true) then
      return nil, 'the key holds a value that is neither a limit state nor packed limit states'
    end
    states[''], order[1] = raw, ''
    return states, expires, order, true
  end
  local pos, len = 1, #raw
  while pos <= len do
    local _, e, name, exp, state = string.find(raw, '^|([%w%-_%.:]*)|(%d+)|([^|]*)', pos)
    if not e or #exp > 13 or expires[name] then
      return nil, 'the key holds packed limit states that do not parse'
    end
    -- Kept for an expired entry too (its state is not): a name given twice is unreadable.
    exp = tonumber(exp)
    expires[name] = exp
    if exp > time_ms then
      states[name], order[#order + 1] = state, name
    end
    pos = e + 1
  end
  return states, expires, order, false
end

-- Writes the live entries back to `key` (SET replaces a value of any type): bare when only the
-- own limit's is left, packed otherwise, nothing (DEL) when none is. A bare state carried into a
-- packed value takes the key's expiry (`bare`: it has none of its own yet; one without any takes
-- the longest of the others').
local function write_entries(key, states, expires, order, time_ms, bare)
  local longest, own_only, count = 0, true, 0
  for _, name in ipairs(order) do
    if states[name] then
      count = count + 1
      if name ~= '' then
        own_only = false
      end
      local exp = expires[name]
      if exp and exp > longest then
        longest = exp
      end
    end
  end
  if count == 0 then
    redis.call('DEL', key)
    return
  end
  if own_only then
    local exp = expires['']
    if not exp then
      -- The bare state as it was: nothing to write.
      return
    end
    redis.call('SET', key, states[''], 'PX', exp - time_ms)
    return
  end
  if bare and states[''] and not expires[''] then
    local pttl = redis.call('PTTL', key)
    if pttl > 0 then
      expires[''] = time_ms + pttl
      if expires[''] > longest then
        longest = expires['']
      end
    else
      expires[''] = longest
    end
  end
  local parts = {}
  for _, name in ipairs(order) do
    local state = states[name]
    if state then
      -- %d: a 64-bit integer, several times cheaper than a number's `..` (%.14g).
      parts[#parts + 1] = string.format('|%s|%d|%s', name, expires[name], state)
    end
  end
  redis.call('SET', key, table.concat(parts), 'PX', longest - time_ms)
end
