-- What changed in a limiter's policies since version ARGV[1] (read only; see policy_publish.lua for
-- the keys).
--
-- ARGV[1]  the version this replica has applied (0 for none: everything there is)
-- ARGV[2]  the most changes to return at once
--
-- Returns {version, covered, field, value, at, field, value, at, ...}: the current version, the
-- version up to which the changes returned are complete (the current one, unless there were more
-- than ARGV[2]), and each field changed since, once, with its value ("" when cleared) and the
-- version of its last change, oldest first. When the current version is below ARGV[1] (the keys
-- were deleted or the data lost), everything there is.

local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0') or 0
local known = tonumber(ARGV[1]) or 0
local most = tonumber(ARGV[2])
if v == known then
  return {v, v}
end
if v < known then
  known = 0
end
local rows = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. known, '+inf', 'WITHSCORES', 'LIMIT', 0, most)
local out = {v, v}
for i = 1, #rows, 2 do
  local at = tonumber(rows[i + 1])
  out[#out + 1] = rows[i]
  out[#out + 1] = redis.call('HGET', KEYS[1], rows[i]) or ''
  out[#out + 1] = at
  if #rows / 2 >= most then
    out[2] = at
  end
end
return out
