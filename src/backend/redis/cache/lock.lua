-- Takes the fill lock of one cache key: SET NX PX, except that a lock taken before the latest
-- invalidation in its slot is taken over (its fill may have read what was invalidated, and the
-- fill script will not store its answer). Unless told to take it whatever is stored (a forced
-- refresh), it first looks at the key's entry: when that is fresh, it answers the entry and takes
-- no lock. (The caller's lookup came before this script: another process may have stored the
-- entry and released the lock in between.)
--
-- KEYS[1]  the lock
-- KEYS[2]  the slot's invalidation counter
-- KEYS[3]  the entry
-- ARGV[1]  this fill's token (decimal)
-- ARGV[2]  how long the lock holds, in milliseconds
-- ARGV[3]  now, in Unix milliseconds of the clock the entries' times are written in: an entry
--          fresh until later than this is answered; '' to take the lock whatever is stored
--
-- Returns {1 if taken else 0, the counter (text), Redis TIME seconds, microseconds}, or
-- {2, the counter, seconds, microseconds, the entry's bytes} for a fresh entry (no lock taken).
local seq = redis.call('GET', KEYS[2]) or '0'
local now = redis.call('TIME')
if ARGV[3] ~= '' then
  -- Both entry formats ("RMC" HTTP, "RMV" framed values; version byte 1) begin with magic and
  -- version, then stored-at and fresh-until as big-endian u64 Unix milliseconds: fresh-until is
  -- bytes 13 to 20. Bytes of another kind are no fresh entry (and the caller refuses an entry
  -- it cannot decode).
  local entry = redis.pcall('GET', KEYS[3])
  if type(entry) == 'string' and #entry >= 20 and string.sub(entry, 1, 2) == 'RM' then
    local fresh_until = 0
    for i = 13, 20 do
      fresh_until = fresh_until * 256 + string.byte(entry, i)
    end
    if fresh_until > tonumber(ARGV[3]) then
      return {2, seq, now[1], now[2], entry}
    end
  end
end
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'string' then
  local at = string.find(held, ':', 1, true)
  if at and string.sub(held, at + 1) == seq then
    return {0, seq, now[1], now[2]}
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. seq, 'PX', ARGV[2])
return {1, seq, now[1], now[2]}
