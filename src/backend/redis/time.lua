-- A fragment (prelude.lua), now.lua's first step: `time_us`, the server's TIME in microseconds (its
-- two fields are digits: the arithmetic converts them). The batch form reads it once for the whole
-- batch instead (batch_open.lua), a `TIME` being about a tenth of a decision's cost to Redis.
local time_us
do
  local t = redis.call('TIME')
  time_us = t[1] * 1000000 + t[2]
end
