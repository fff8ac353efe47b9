-- Releases the fill lock of one cache key, if this fill's token still holds it.
--
-- KEYS[1]  the lock
-- ARGV[1]  the token (decimal)
local held = redis.pcall('GET', KEYS[1])
if type(held) == 'string' and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
