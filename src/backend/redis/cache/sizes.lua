-- The slot's byte count (prepended to fill.lua, invalidate.lua and invalidate_range.lua).
--
-- Each slot records the weight of every entry it stored in a hash (cache key -> weight, no
-- expiry) and their sum in a string (no expiry). Whatever takes a key out of the slot's expiry set
-- (expired, evicted, invalidated, overwritten) takes its record out and subtracts its weight. Keys
-- without a record (stored by a release that kept none, or whose record was dropped) weigh 0:
-- they leave by their TTL, uncounted. A sum that is missing, unreadable or would go negative is
-- counted again from the records when there are at most RECOUNT_MAX of them; otherwise the records
-- are dropped and the sum starts again at 0 (fill.lua also counts again, without dropping, a sum
-- that leaves no room after evicting). No loop here runs more than a bounded number of times.
local RECOUNT_MAX = 1000

-- A weight as recorded: a non-negative whole number below 2^53, or nil.
local function sizes_number(v)
  local n = tonumber(v)
  if n and n >= 0 and n < 9007199254740992 and n == math.floor(n) then
    return n
  end
  return nil
end

-- The sum of the slot's records; when there are too many to read now, nil if `keep`, else 0
-- after dropping them.
local function sizes_recount(sz, keep)
  if redis.call('HLEN', sz) <= RECOUNT_MAX then
    local sum = 0
    local vals = redis.call('HVALS', sz)
    for i = 1, #vals do
      sum = sum + (sizes_number(vals[i]) or 0)
    end
    return sum
  end
  if keep then
    return nil
  end
  redis.call('UNLINK', sz)
  return 0
end

-- The slot's byte count, repaired if need be (a records key of another type is dropped).
local function sizes_open(sz, count)
  local kind = redis.call('TYPE', sz)['ok']
  if kind ~= 'hash' and kind ~= 'none' then
    redis.call('UNLINK', sz)
    return 0
  end
  local raw = redis.pcall('GET', count)
  if type(raw) == 'string' then
    local n = sizes_number(raw)
    if n then
      return n
    end
  end
  return sizes_recount(sz)
end

-- Takes the records of `keys` (a list, at most a few hundred) out; returns the sum of their
-- weights.
local function sizes_forget(sz, keys)
  if #keys == 0 then
    return 0
  end
  local vals = redis.call('HMGET', sz, unpack(keys))
  local sum = 0
  for i = 1, #vals do
    if vals[i] then
      sum = sum + (sizes_number(vals[i]) or 0)
    end
  end
  redis.call('HDEL', sz, unpack(keys))
  return sum
end

-- `total` minus `gone`; counted again from the records when that would be negative (the sum
-- was short of them).
local function sizes_minus(sz, total, gone)
  if gone <= total then
    return total - gone
  end
  return sizes_recount(sz)
end

-- Writes the slot's byte count back (none at 0: it vanishes with the slot's entries).
local function sizes_save(count, total)
  if total <= 0 then
    redis.call('DEL', count)
  else
    redis.call('SET', count, string.format('%d', total))
  end
end

-- Takes `keys` (a list of distinct keys, not empty, at most a few hundred) out of the slot's
-- index `idx` and expiry set `exp`, after deleting their entries when `head` (the head of the
-- slot's entry names: an entry's name is it and the SHA-1 of the key) is given. Their records
-- stay: the caller takes them out (sizes_forget, sizes_subtract).
local function sizes_drop(idx, exp, keys, head)
  if head then
    local names = {}
    for i = 1, #keys do
      names[i] = head .. redis.sha1hex(keys[i])
    end
    redis.call('UNLINK', unpack(names))
  end
  redis.call('ZREM', idx, unpack(keys))
  redis.call('ZREM', exp, unpack(keys))
end

-- Takes the records of `keys` out (sizes_forget) and their weights out of the byte count saved
-- in `count`.
local function sizes_subtract(sz, count, keys)
  local total = sizes_open(sz, count)
  sizes_save(count, sizes_minus(sz, total, sizes_forget(sz, keys)))
end

