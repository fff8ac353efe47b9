-- A rate limit key's value: the state of every limit of one key (src/backend/redis/mod.rs, "Redis
-- keys"), read and written by limit_set.lua and lease/lease.lua (prepended to the set form's part
-- of each, after prelude.lua). Two forms:
--
-- * bare: the state of the layer's own limit (the one named after the layer) and nothing else,
--   exactly what a single-quota limiter writes (a GCRA arrival time, or sliding-window
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
-- the single-quota limiter's. An entry of a limit not in a decision (another tier the key was in, a
-- limit removed at run time) is carried through while it is live.
--
-- In Lua the entries are one flat table, three slots per entry in their stored order (the j-th at
-- k = 3j): E[k - 2] its name, E[k - 1] its expiry (ms; nil for a bare state, whose expiry is the
-- key's), E[k] its state (nil once expired or dropped; the name stays, so a name given twice is
-- still unreadable). One table made at its size, where three tables by name grew slot by slot.

-- The entries of `raw` (what GET answered) read at `time_ms`, as (E, m, bare): m entries, `bare`
-- when `raw` is a bare state; or (nil, problem) when the value cannot be read at all (another type
-- of value, a packed value that does not parse).
local function read_entries(raw, time_ms)
  if type(raw) == 'table' then
    return nil, 'the key holds another type of value (' .. tostring(raw.err) .. ')'
  end
  -- Room for three entries, made at once.
  local E = {false, false, false, false, false, false, false, false, false}
  if not raw then
    return E, 0, false
  end
  if byte(raw, 1) ~= 124 then
    if find(raw, '|', 1, true) then
      return nil, 'the key holds a value that is neither a limit state nor packed limit states'
    end
    E[1], E[2], E[3] = '', nil, raw
    return E, 1, true
  end
  local pos, len, m = 1, #raw, 0
  while pos <= len do
    local _, e, name, exp, state = find(raw, '^|([%w%-_%.:]*)|(%d+)|([^|]*)', pos)
    if not e or #exp > 13 then
      return nil, 'the key holds packed limit states that do not parse'
    end
    for k = 1, 3 * m, 3 do
      if E[k] == name then
        return nil, 'the key holds packed limit states that do not parse'
      end
    end
    exp = exp + 0
    if exp <= time_ms then
      state = nil
    end
    m = m + 1
    E[3 * m - 2], E[3 * m - 1], E[3 * m] = name, exp, state
    pos = e + 1
  end
  return E, m, false
end

-- Writes the live entries back to `key` (SET replaces a value of any type): bare when only the
-- own limit's is left, packed otherwise, nothing (DEL) when none is. A bare state carried into a
-- packed value takes the key's expiry (`bare`: it has none of its own yet; one without any takes
-- the longest of the others').
local function write_entries(key, E, m, time_ms, bare)
  local longest, own, others = 0, 0, false
  for k = 3, 3 * m, 3 do
    if E[k] then
      if E[k - 2] == '' then
        own = k
      else
        others = true
      end
      local exp = E[k - 1]
      if exp and exp > longest then
        longest = exp
      end
    end
  end
  if not others then
    if own == 0 then
      redis.call('DEL', key)
      return
    end
    local exp = E[own - 1]
    if not exp then
      -- The bare state as it was: nothing to write.
      return
    end
    redis.call('SET', key, E[own], 'PX', format('%d', exp - time_ms))
    return
  end
  if bare and own > 0 and not E[own - 1] then
    local pttl = redis.call('PTTL', key)
    if pttl > 0 then
      E[own - 1] = time_ms + pttl
      if E[own - 1] > longest then
        longest = E[own - 1]
      end
    else
      E[own - 1] = longest
    end
  end
  local value = ''
  for k = 3, 3 * m, 3 do
    local state = E[k]
    if state then
      -- %d: a 64-bit integer, cheaper than a number's `..` (%.14g). The rest joined by `..`: two
      -- entries 787 ns against 1,180 ns with format('|%s|%d|%s') each (a loop of 20,000 inside
      -- Redis 7.0, as split_ns's figures in split_ns.lua).
      value = value .. '|' .. E[k - 2] .. '|' .. format('%d', E[k - 1]) .. '|' .. state
    end
  end
  -- The expiry as digits, as decide.lua writes it.
  redis.call('SET', key, value, 'PX', format('%d', longest - time_ms))
end
