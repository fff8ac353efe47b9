-- GCRA's `decide_one` (limit_set.lua says what it answers), for the set form and the lease script:
-- the decision of gcra.lua as a function, made only on their paths (after decide.lua's single
-- form has answered), so the single form makes no closure.
local function decide_one(raw, emission, tolerance, cost, now_us, now_frac, repair, min_ttl)
  local verdict, a, b, c, repaired, value, ttl, keep, keep_ttl, err
  --#include gcra.lua
  if not verdict then
    return nil, err
  end
  return verdict, a, b, c, repaired, value, ttl, keep, keep_ttl
end
