-- A fragment (prelude.lua), now.lua's first step: `time_us`, the server's TIME in microseconds (its
-- two fields are digits: the arithmetic converts them). The batch form reads it once for the whole
-- batch instead (batch_open.lua), a `TIME` being about a tenth of a decision's cost to Redis.
-- `margin_us`: how far ahead of its deadline a call is already too late (0 here; the batch
-- form's, batch_open.lua).
local time_us, margin_us
do
  local t = redis.call('TIME')
  time_us, margin_us = t[1] * 1000000 + t[2], 0
end
