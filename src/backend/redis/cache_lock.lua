-- Takes the fill lock of one cache key: SET NX PX, except that a lock taken before the latest
-- invalidation in its slot is taken over (its fill may have read what was invalidated, and the
-- fill script will not store its answer).
--
-- KEYS[1]  the lock
-- KEYS[2]  the slot's invalidation counter
-- ARGV[1]  this fill's token (decimal)
-- ARGV[2]  how long the lock holds, in milliseconds
--
-- Returns {1 if taken else 0, the counter (text), Redis TIME seconds, microseconds}.
local seq = redis.call('GET', KEYS[2]) or '0'
local now = redis.call('TIME')
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'string' then
  local at = string.find(held, ':', 1, true)
  if at and string.sub(held, at + 1) == seq then
    return {0, seq, now[1], now[2]}
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. seq, 'PX', ARGV[2])
return {1, seq, now[1], now[2]}
