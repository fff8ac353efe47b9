-- Shared circuit breaker state: one replica's sync, atomically (see src/backend/redis/circuit.rs).
-- Pushes the replica's batch of outcomes, applies its probe outcomes and permits and its handle's
-- command, makes every transition due (on Redis TIME), and answers the shared state.
--
-- KEYS[1]  the circuit's hash, `<prefix>:cb:{<name>/<key>}`. Fields:
--   st      state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled
--   ep      epoch, incremented by every transition
--   gen     when the hash was made (Redis TIME, us): a lost and remade circuit has another
--   until   while open: the end of the wait (us); streak: openings since it last closed
--   since   when the state began (us); rsn: reason code of the last transition
--   run     failures in a row, as far as batches tell
--   wk      the window's configuration; c, f, s: calls, failures and slow calls in it
--   count window: wh, wt (first and next batch numbers); bc<n>, bf<n>, bs<n>: batch n
--   time window: tlo (oldest slice counted); tc<i>, tf<i>, ts<i>: slice i
--   half-open: pg (permits granted and not given back), pok, pbad (probe outcomes),
--              hl (replicas holding permits, space separated), g<replica> (permits it holds),
--              d<replica> (until when they are kept without news from it, us),
--              pw (until when a replica is known to wait for a permit none could give, us)
--
-- ARGV: the circuit's configuration, then the replica's report:
--   1 window: 'c<calls>' or 't<span us>/<buckets>'   2 minimum calls
--   3 failure rate ('' for none)   4 slow-call rate ('' for none)   5 consecutive failures (0: none)
--   6 initial wait (us)   7 wait multiplier   8 longest wait (us)   9 half-open probes
--   10 expiry of an idle circuit (ms)
--   11 replica id   12 lease of its permits (ms)
--   13 calls   14 failures   15 slow calls   16 failures in a row at the end of the batch
--   17 the epoch the probe figures refer to   18 probe successes   19 probe failures
--   20 permits still held (unused or in flight)   21 permits wanted
--   22 command: '', 'open', 'closed', 'reset' or 'disable'
--   23 an opening made while Redis was unreachable: us left (0: none)   24 its reason code
--   25 (appended by the caller) until when the call is still wanted, Redis TIME in us ('' while
--      the caller does not know Redis's clock): past it, the error 'RAMPARTLATE <TIME>' and
--      nothing is written. A sync abandoned on its timeout and run by Redis later (after a stall)
--      would apply a command taken back since (a forced opening, sent again on the connection
--      that replaced the stalled one, then a reset: the late one forced the circuit open again,
--      for good). Its outcomes are then not counted, as a timed-out call's are not anywhere.
--
-- Returns {gen, epoch, state, us left open, streak, reason, permits held by the replica,
--          window calls, failures, slow calls, failures in a row, us in state,
--          1 if another replica waits for a permit (holders should give unused ones back) or 0,
--          the TIME it read in us (the caller takes it off)}.
-- Data it cannot read (a number field that is not a whole number from 0 to 2^53, an end of a wait
-- beyond the longest the script writes, a lease of permits (d<replica>, pw) beyond a day, a count
-- window longer than its size, a time slice HINCRBY cannot add to, a malformed holder list) is
-- answered with a RAMPARTDATA error before anything is written. Absolute times (about 2^51 us)
-- are exact in Lua's doubles; they are written with '%.0f' (tostring would use exponents).

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after the non-deterministic TIME
end

local key = KEYS[1]
local A = ARGV
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function fmt(x)
  return string.format('%.0f', x)
end

local not_after = tonumber(A[25] or '')
if not_after and now > not_after then
  return redis.error_reply('RAMPARTLATE ' .. fmt(now))
end

local wspec = A[1]
local min_calls = tonumber(A[2])
local frate = tonumber(A[3])
local srate = tonumber(A[4])
local cons = tonumber(A[5])
local w_init, w_mult, w_max = tonumber(A[6]), tonumber(A[7]), tonumber(A[8])
local n = tonumber(A[9])
local ttl = tonumber(A[10])
local rid = A[11]
local lease = tonumber(A[12]) * 1000
local calls, fails, slows, lrun = tonumber(A[13]), tonumber(A[14]), tonumber(A[15]), tonumber(A[16])
local pe = tonumber(A[17])
local pok_d, pbad_d, held, want = tonumber(A[18]), tonumber(A[19]), tonumber(A[20]), tonumber(A[21])
local cmd = A[22]
local assert_us, assert_rsn = tonumber(A[23]), tonumber(A[24])

-- The largest whole number a double holds exactly, 2^53: every number in the hash is a whole
-- number from 0 to this (times, in us, are about 2^50.6; waits are capped at WAIT_MAX below).
local MAXN = 9007199254740992
-- The longest wait the script writes, 2^52 us (142 years), so that the end of a wait stays exact.
-- An end later than now + WAIT_MAX + TIME_BACK was not written by the script: TIME_BACK (a day)
-- allows for Redis TIME going back at a failover.
local WAIT_MAX = MAXN / 2
local TIME_BACK = 86400000000
-- The longest lease of a replica's permits the script writes (a day; a replica's own is four sync
-- intervals and a timeout): a holder's `d<replica>` or `pw` later than now + LEASE_MAX + TIME_BACK
-- was not written by the script. Unbounded, one far ahead kept a vanished replica's permits held
-- (no other replica could probe: half-open for good) or every holder giving permits back.
local LEASE_MAX = 86400000000

-- Whether `x` (a number or nil) is one the script could have written. Lua's tonumber also reads
-- 'nan', 'inf', '-1', '0.5', '1e300' and hex: as a batch number or a time, such a value made the
-- window loops run (nearly) for ever, after the script had written (so SCRIPT KILL was refused),
-- or kept a circuit open for good (`now >= nan` never holds).
local function whole(x)
  return x ~= nil and x >= 0 and x <= MAXN and x % 1 == 0
end

if not whole(lease) then
  return redis.error_reply('RAMPARTARG the lease is not a whole number of milliseconds')
end
lease = math.min(lease, LEASE_MAX)

-- A count read from a batch or a slice (field n of an HMGET's answer): a whole number, or 0 for
-- none or anything else (as a missing one), so that no NaN or infinity reaches the window's totals.
local function count(x)
  x = tonumber(x)
  if whole(x) then
    return x
  end
  return 0
end

-- 'c100' -> 'c', 100; 't60000000/60' -> 't', 60000000, 60 (digits only: tonumber would read 'c1e15').
local function parse_spec(spec)
  local size = string.match(spec, '^c(%d+)$')
  if size then
    return 'c', tonumber(size)
  end
  local span, buckets = string.match(spec, '^t(%d+)/(%d+)$')
  if span then
    return 't', tonumber(span), tonumber(buckets)
  end
  return nil
end

-- The arguments, checked before anything is written.
local kind, size, buckets = parse_spec(wspec)
if not kind then
  return redis.error_reply('RAMPARTARG the window configuration is not understood')
end
if cmd ~= '' and cmd ~= 'open' and cmd ~= 'closed' and cmd ~= 'reset' and cmd ~= 'disable' then
  return redis.error_reply('RAMPARTARG unknown command')
end
-- Time window: slices of span/buckets, numbered from the epoch; the window is the last `buckets`
-- slices up to now's, `slice_now`.
local width, slice_now
if kind == 't' then
  width = math.floor(size / buckets)
  slice_now = math.floor(now / width)
end

-- Data the script cannot read is answered with a RAMPARTDATA error before anything is written: the
-- replicas then follow their own circuits (logging the error) until the hash expires or is deleted.
local function corrupt(what, x)
  local shown = ''
  if x then
    shown = ': ' .. string.gsub(string.sub(tostring(x), 1, 32), '[^%w%.%+%-]', '?')
  end
  return redis.error_reply('RAMPARTDATA the key does not hold a circuit (' .. what .. shown .. ')')
end

local names = {'st', 'ep', 'gen', 'until', 'streak', 'since', 'rsn', 'run', 'c', 'f', 's', 'wk',
  'wh', 'wt', 'tlo', 'pg', 'pok', 'pbad', 'hl', 'pw', 'g' .. rid, 'd' .. rid}
local nnames = #names
if slice_now then
  -- The slice this sync adds to, read with the rest (checked below).
  local id = fmt(slice_now)
  names[nnames + 1], names[nnames + 2], names[nnames + 3] = 'tc' .. id, 'tf' .. id, 'ts' .. id
end
local raw = redis.pcall('HMGET', key, unpack(names))
if type(raw) == 'table' and raw.err then
  return redis.error_reply('RAMPARTDATA the key holds another type of value (' .. raw.err .. ')')
end
local v = {}
for i = 1, nnames do
  local name = names[i]
  local x = raw[i]
  if name == 'wk' or name == 'hl' then
    v[name] = x or ''
  elseif x then
    v[name] = tonumber(x)
    if not whole(v[name]) then
      return corrupt('field ' .. name, x)
    end
  end
end
if v.st == nil then
  -- A new circuit, or one lost (expired, flushed, Redis restarted) and made afresh.
  v = {st = 0, ep = 1, gen = now, since = now, wk = wspec, hl = ''}
elseif v.st > 4 then
  return redis.error_reply('RAMPARTDATA the key does not hold a circuit (state ' .. v.st .. ')')
end
local st, ep, gen = v.st, v.ep or 1, v.gen or now
local untl, streak, since = v['until'] or 0, v.streak or 0, v.since or now
local rsn, run = v.rsn or 0, v.run or 0
local C, F, S = v.c or 0, v.f or 0, v.s or 0
local wk, wh, wt, tlo = v.wk, v.wh or 0, v.wt or 0, v.tlo or 0
local pg, pok, pbad, hl, pw = v.pg or 0, v.pok or 0, v.pbad or 0, v.hl, v.pw or 0
if rsn > 255 then
  return corrupt('field rsn', rsn)
end
if untl > now + WAIT_MAX + TIME_BACK then
  return corrupt('field until', raw[4])
end
if pw > now + LEASE_MAX + TIME_BACK then
  return corrupt('field pw', pw)
end
-- A count window holds batches wh to wt - 1, each of at least one call: never more than its size.
local wkind, wsize = parse_spec(wk)
if wkind == 'c' and (wh > wt or wt - wh > wsize) then
  return corrupt('fields wh and wt: a window of ' .. fmt(wt - wh) .. ' batches, not ' .. wk)
end
-- The time slice this sync adds to: now's, or the oldest counted if Redis TIME went back (a
-- failover; time_advance below). HINCRBY takes only whole numbers in Redis's own form ('5', not
-- '05', '5.0', '+5' or '5e0'): a field it refused would fail the script after time_advance has
-- deleted the slices gone out of the window, with the totals still counting them.
local slice = slice_now
if kind == 't' then
  local b, first = raw, nnames
  if wk == wspec and tlo > slice_now then
    slice = tlo
    local id = fmt(slice)
    b, first = redis.call('HMGET', key, 'tc' .. id, 'tf' .. id, 'ts' .. id), 0
  end
  for j = 1, 3 do
    local x = b[first + j]
    if x and not ((x == '0' or string.find(x, '^[1-9]%d*$')) and whole(tonumber(x))) then
      return corrupt('field ' .. names[nnames + j]:sub(1, 2) .. fmt(slice), x)
    end
  end
end

-- Holders: replica ids (digits), each holding at least one of at most 8191 permits. The list
-- (`holders`) and what each holds (`held_by`, `lease_of`: the fields g<id> and d<id>, read once)
-- are kept up to date by the script and hl is written from them.
if #hl > 200000 or string.find(hl, '[^%d ]') then
  return corrupt('field hl')
end
local holders, held_by, lease_of = {}, {}, {}
for r in string.gmatch(hl, '%S+') do
  holders[#holders + 1] = r
end
if #holders > 8191 then
  return corrupt('field hl')
end
for _, r in ipairs(holders) do
  local gd = redis.call('HMGET', key, 'g' .. r, 'd' .. r)
  for j = 1, 2 do
    if gd[j] and not whole(tonumber(gd[j])) then
      return corrupt('field ' .. ((j == 1 and 'g') or 'd') .. r, gd[j])
    end
  end
  held_by[r], lease_of[r] = tonumber(gd[1]), tonumber(gd[2])
  if lease_of[r] and lease_of[r] > now + LEASE_MAX + TIME_BACK then
    return corrupt('field d' .. r, gd[2])
  end
end

-- Lua's unpack takes at most a few thousand values: long argument lists go in parts.
local function call_in_parts(command, list)
  for i = 1, #list, 1000 do
    redis.call(command, key, unpack(list, i, math.min(i + 999, #list)))
  end
end

-- Empties the window in one command, whatever its size (it is the hash's bulk): the hash is
-- unlinked (freed in the background from Redis 4) and written whole at the end of the script;
-- holders' permits are written back. One HDEL per batch stalled Redis on closing a large window.
local function clear_window()
  if wt > wh or tlo > 0 or C > 0 then
    local keep = {}
    for _, r in ipairs(holders) do
      if held_by[r] then
        keep[#keep + 1] = 'g' .. r
        keep[#keep + 1] = fmt(held_by[r])
      end
      if lease_of[r] then
        keep[#keep + 1] = 'd' .. r
        keep[#keep + 1] = fmt(lease_of[r])
      end
    end
    local gone = redis.pcall('UNLINK', key)
    if type(gone) == 'table' and gone.err then
      redis.call('DEL', key) -- Redis < 4
    end
    call_in_parts('HSET', keep)
  end
  C, F, S, wh, wt, tlo = 0, 0, 0, 0, 0, 0
end

-- Count window: the last `size` outcomes reported, batch by batch; the oldest batch, when only
-- partly inside, counts pro rata.
local function count_push(size)
  if calls >= size then
    clear_window() -- this batch alone fills the window: every earlier one is out
  end
  local id = fmt(wt)
  redis.call('HSET', key, 'bc' .. id, calls, 'bf' .. id, fails, 'bs' .. id, slows)
  wt = wt + 1
  C, F, S = C + calls, F + fails, S + slows
  -- Batches out of the window go, up to 100 of them read by one HMGET and deleted by one HDEL.
  while wh < wt - 1 do
    local last = math.min(wt - 2, wh + 99)
    local fields = {}
    for i = wh, last do
      local h = fmt(i)
      fields[#fields + 1] = 'bc' .. h
      fields[#fields + 1] = 'bf' .. h
      fields[#fields + 1] = 'bs' .. h
    end
    local head = redis.call('HMGET', key, unpack(fields))
    local gone = 0
    for j = 0, last - wh do
      local hc = count(head[3 * j + 1])
      if C - hc < size then
        break
      end
      C, F, S = C - hc, F - count(head[3 * j + 2]), S - count(head[3 * j + 3])
      gone = j + 1
    end
    if gone > 0 then
      redis.call('HDEL', key, unpack(fields, 1, 3 * gone))
    end
    wh = wh + gone
    if wh <= last then
      break
    end
  end
end

local function count_counts(size)
  if C <= size then
    return C, F, S
  end
  local h = fmt(wh)
  local head = redis.call('HMGET', key, 'bc' .. h, 'bf' .. h, 'bs' .. h)
  local hc, hf, hs = count(head[1]), count(head[2]), count(head[3])
  if hc == 0 then
    return size, math.min(F, size), math.min(S, size)
  end
  local out = C - size
  local ef = F - math.floor(hf * out / hc + 0.5)
  local es = S - math.floor(hs * out / hc + 0.5)
  return size, math.max(0, math.min(ef, size)), math.max(0, math.min(es, size))
end

-- Time window: slices out of it go (their counts off the totals). A sync adds to `slice` (above):
-- now's, or tlo if Redis TIME went back.
local function time_advance()
  local lo = slice_now - buckets + 1
  if tlo == 0 then
    tlo = lo
  elseif lo > tlo then
    local last = math.min(lo - 1, tlo + buckets - 1)
    for i = tlo, last do
      local id = fmt(i)
      local b = redis.call('HMGET', key, 'tc' .. id, 'tf' .. id, 'ts' .. id)
      if b[1] or b[2] or b[3] then
        C = C - count(b[1])
        F = F - count(b[2])
        S = S - count(b[3])
        redis.call('HDEL', key, 'tc' .. id, 'tf' .. id, 'ts' .. id)
      end
    end
    if last == tlo + buckets - 1 then
      C, F, S = 0, 0, 0 -- every slice left: exactly empty
    end
    tlo = lo
  end
end

local function time_push(sl)
  local id = fmt(sl)
  redis.call('HINCRBY', key, 'tc' .. id, calls)
  if fails > 0 then
    redis.call('HINCRBY', key, 'tf' .. id, fails)
  end
  if slows > 0 then
    redis.call('HINCRBY', key, 'ts' .. id, slows)
  end
  C, F, S = C + calls, F + fails, S + slows
end

local function clear_holders()
  for _, r in ipairs(holders) do
    redis.call('HDEL', key, 'g' .. r, 'd' .. r)
  end
  holders, held_by, lease_of = {}, {}, {}
end

-- initial * multiplier^streak, at most the longest wait (as Wait::for_opening in state.rs).
local function wait_us()
  local w = w_init * (w_mult ^ math.min(streak, 1000))
  if w ~= w or w > w_max then
    w = w_max
  end
  return math.floor(math.min(w, WAIT_MAX))
end

local function go(to, reason, open_us)
  if st == 2 then
    clear_holders()
  end
  if to == 1 then
    untl = now + (open_us or wait_us())
    streak = streak + 1
  elseif to == 2 then
    pg, pok, pbad, pw = 0, 0, 0, 0
  elseif to == 0 then
    clear_window()
    run = 0
  end
  st, ep, since, rsn = to, ep + 1, now, reason
end

-- The window's configuration changed (a rolling deploy): the window starts afresh.
if wk ~= wspec then
  clear_window()
  wk = wspec
end
if kind == 't' then
  time_advance()
end

if cmd ~= '' then
  if cmd == 'open' then
    go(3, 7)
  elseif cmd == 'closed' then
    go(0, 8)
  elseif cmd == 'reset' then
    streak = 0
    go(0, 9)
  else -- 'disable' (checked above)
    go(4, 10)
  end
else
  -- A replica that opened the circuit on its own while Redis was unreachable carries it over.
  if assert_us > 0 and st == 0 then
    go(1, assert_rsn, math.min(assert_us, WAIT_MAX))
  end
  if st == 1 and now >= untl then
    go(2, 4)
  end
  if st == 0 and calls > 0 then
    if kind == 'c' then
      count_push(size)
    else
      time_push(slice)
    end
    -- A batch with a success ends the run at the replica's own count of failures since; one of
    -- failures only extends it, and is never shorter than that replica's own run (batches of
    -- others' earlier successes may have arrived in between).
    if calls > fails then
      run = lrun
    else
      run = math.max(run + fails, lrun)
    end
    local ec, ef, es = C, F, S
    if kind == 'c' then
      ec, ef, es = count_counts(size)
    end
    local enough = ec > 0 and ec >= min_calls
    if enough and frate and ef >= frate * ec then
      go(1, 1)
    elseif enough and srate and es >= srate * ec then
      go(1, 2)
    elseif cons > 0 and run >= cons then
      go(1, 3)
    end
  end
  if st == 2 then
    -- Permits of replicas not heard from within their lease go back (the replica is gone).
    local kept = {}
    for _, r in ipairs(holders) do
      if (lease_of[r] or 0) < now and r ~= rid then
        pg = pg - (held_by[r] or 0)
        redis.call('HDEL', key, 'g' .. r, 'd' .. r)
        held_by[r], lease_of[r] = nil, nil
      else
        kept[#kept + 1] = r
      end
    end
    holders = kept
    if pg < 0 then
      pg = 0
    end
    if pe == ep then
      pok, pbad = pok + pok_d, pbad + pbad_d
      -- The replica says how many permits it still holds: the others it used (outcomes above)
      -- or gave back unused.
      local had = tonumber(redis.call('HGET', key, 'g' .. rid)) or 0
      local h = math.min(held, had)
      pg = pg - had + h
      redis.call('HSET', key, 'g' .. rid, h)
      held_by[rid] = h
    end
    if (frate and pbad >= frate * n) or (not frate and pbad > 0) then
      go(1, 5)
    elseif pok + pbad >= n then
      streak = 0
      go(0, 6)
    elseif want > 0 then
      -- Probes that have ended count as much as those in flight: `n` in all per half-open period.
      local grant = math.max(0, math.min(want, n - pg - pok - pbad))
      if grant > 0 then
        local had = tonumber(redis.call('HGET', key, 'g' .. rid)) or 0
        redis.call('HSET', key, 'g' .. rid, had + grant)
        held_by[rid] = had + grant
        pg = pg + grant
      end
      if grant < want then
        -- This replica waits: holders give their unused permits back (they keep them otherwise,
        -- so that a replica whose callers come seldom still gets to probe).
        pw = now + lease
      end
    end
  end
end

local mine = 0
if st == 2 then
  mine = tonumber(redis.call('HGET', key, 'g' .. rid)) or 0
  local listed = false
  for _, r in ipairs(holders) do
    if r == rid then
      listed = true
    end
  end
  if mine > 0 then
    redis.call('HSET', key, 'd' .. rid, fmt(now + lease))
    if not listed then
      holders[#holders + 1] = rid
    end
  else
    redis.call('HDEL', key, 'g' .. rid, 'd' .. rid)
    if listed then
      local kept = {}
      for _, r in ipairs(holders) do
        if r ~= rid then
          kept[#kept + 1] = r
        end
      end
      holders = kept
    end
  end
end
hl = table.concat(holders, ' ')

redis.call('HSET', key, 'st', st, 'ep', fmt(ep), 'gen', fmt(gen), 'until', fmt(untl),
  'streak', fmt(streak), 'since', fmt(since), 'rsn', rsn, 'run', fmt(run), 'c', fmt(C),
  'f', fmt(F), 's', fmt(S), 'wk', wk, 'wh', fmt(wh), 'wt', fmt(wt), 'tlo', fmt(tlo),
  'pg', fmt(pg), 'pok', fmt(pok), 'pbad', fmt(pbad), 'hl', hl, 'pw', fmt(pw))
-- Forced states are an operator's decision: kept until changed. Others expire when idle.
if st == 3 or st == 4 then
  redis.call('PERSIST', key)
else
  redis.call('PEXPIRE', key, ttl)
end

local left = 0
if st == 1 and untl > now then
  left = untl - now
end
local rc, rf, rs = C, F, S
if kind == 'c' then
  rc, rf, rs = count_counts(size)
end
local contended = 0
if st == 2 and pw > now then
  contended = 1
end
-- Redis TIME may have gone back (a failover): a state begun "later" than now began just now.
return {gen, ep, st, left, streak, rsn, mine, rc, rf, rs, run, math.max(0, now - since), contended, now}
