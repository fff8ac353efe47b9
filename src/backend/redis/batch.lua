
-- (The end of `one`: the single script's body, made a function of its keys and arguments.)
end

-- The batch form of a rate limit script (src/backend/redis/conn/batch.rs): what the script above
-- decides for one call, for each of several decisions in one call, so that Redis pays a command's
-- cost (its parsing, the script's lookup and start, its reply) once per batch rather than once per
-- decision. The script's body above is the function `one`, run once per decision on that
-- decision's key and arguments.
--
-- KEYS[i] is the i-th decision's key; ARGV holds each decision's arguments in turn, each run of them
-- after its count ("6", then the single form's six), or, for a decision whose arguments are the
-- previous decision's but the last (the deadline: a store's decisions on one clock differ in
-- nothing else), "=" and that last one alone: five arguments fewer, each of which Redis would
-- make an object and a Lua string of. The reply is one answer per decision, in
-- order, each what the script alone answers for it (its array, shortened as below, or its error
-- reply), then the batch's `TIME`. A
-- command that fails inside one decision (a write refused: READONLY, OOM) is that decision's error,
-- and the decisions after it are decided all the same, as separate calls are.
-- The arguments are checked whole before any decision is made: a malformed batch writes nothing.
local at = 1
for i = 1, #KEYS do
  if ARGV[at] == '=' and i > 1 then
    if at + 1 > #ARGV then
      return redis.error_reply('RAMPARTARG a batch gives each decision its count of arguments, then them')
    end
    at = at + 2
  else
    local n = tonumber(ARGV[at] or '')
    if not n or n < 1 or at + n > #ARGV then
      return redis.error_reply('RAMPARTARG a batch gives each decision its count of arguments, then them')
    end
    at = at + n + 1
  end
end
if at ~= #ARGV + 1 then
  return redis.error_reply('RAMPARTARG a batch gives each decision its count of arguments, then them')
end
-- Each answer is shortened for the client's reply parser (about 850 instructions a value there):
-- the `TIME` an answer ends with (the batch's, batch_open.lua) goes once for the batch, last. An
-- empty `repaired` the script itself leaves out.
local out, args = {}, nil
at = 1
for i = 1, #KEYS do
  if ARGV[at] == '=' and i > 1 then
    -- The previous decision's table (`one` never writes to its ARGV), with this one's deadline.
    args[#args] = ARGV[at + 1]
    at = at + 2
  else
    local n = ARGV[at] + 0
    args = {}
    for j = 1, n do
      args[j] = ARGV[at + j]
    end
    at = at + n + 1
  end
  local ok, answer = pcall(one, {KEYS[i]}, args)
  if ok and type(answer) == 'table' and not answer.err and #answer >= 4 then
    answer[#answer] = nil
    out[i] = answer
  elseif ok and type(answer) == 'table' then
    out[i] = answer
  elseif ok then
    out[i] = {err = 'ERR the rate limit script answered no array'}
  elseif type(answer) == 'table' and answer.err then
    out[i] = answer
  else
    out[i] = {err = 'ERR ' .. tostring(answer)}
  end
end
out[#KEYS + 1] = batch_time_us
return out
