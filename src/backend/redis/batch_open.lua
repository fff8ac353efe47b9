-- The start of the batch form (batch.lua, which ends it, says what it is): the server's TIME, read
-- once for the whole batch, which every decision takes as its own (now.lua's `time_us`; the
-- single script reads it itself, time.lua): a `TIME` cost Redis 6,700 of the 67,000
-- instructions of a single-form decision (callgrind, `CALLGRIND=1 benches/redis_script_cost.sh`).
-- Every decision of a batch is made at that one instant, as a script is atomic. Its answer leaves
-- with the batch's reply, after the batch's last decision: so that no decision is written for a
-- caller who gave up before that reply can reach it, a decision is late when its deadline is
-- less than `batch_margin_us` ahead of the batch's TIME, 100 us for each decision of the batch
-- (a decision took 7 to 15 us inside this host's Redis, by `usec_per_call`). The store
-- sends a decision answered late in a batch again, alone, where the single script's own TIME
-- decides it (src/backend/redis/conn/batch.rs).
local batch_time_us, batch_margin_us
do
  local t = redis.call('TIME')
  batch_time_us, batch_margin_us = t[1] * 1000000 + t[2], 100 * #KEYS
end

-- The body of the single script, made a function of its keys and arguments.
local function one(KEYS, ARGV)
