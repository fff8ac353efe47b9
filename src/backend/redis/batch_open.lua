-- The start of the batch form (batch.lua, which ends it, says what it is): the server's TIME, read
-- once for the whole batch, which every decision takes as its own (now.lua's `time_us`; the
-- single script reads it itself, time.lua): a `TIME` cost Redis 6,700 of the 67,000
-- instructions of a single-form decision (callgrind, `CALLGRIND=1 benches/redis_script_cost.sh`).
-- Every decision of a batch is made at one instant, as a script is atomic; a decision's deadline
-- is checked against it, so a decision made after others of its batch is checked against a time
-- earlier than its own by at most the batch's run so far: no more than the wait, with a TIME per
-- decision, of the batch's first decision for the reply that carries all their answers.
local batch_time_us
do
  local t = redis.call('TIME')
  batch_time_us = t[1] * 1000000 + t[2]
end

-- The body of the single script, made a function of its keys and arguments.
local function one(KEYS, ARGV)
