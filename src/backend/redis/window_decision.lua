-- The sliding window's decision of decide.lua's single form (the GCRA script has gcra.lua there):
-- its `decide_one` (sliding_window.lua), into decide.lua's locals.
verdict, a, b, c, repaired, value, ttl, keep, keep_ttl =
  decide_one(raw, emission, tolerance, cost, now_us, now_frac, repair, min_ttl)
if not verdict then
  err = a
end
