-- Tollgate's shared rate limit: one decision per call, atomic in Redis.
-- Format 1. The Rust side (rate.rs) and this file change together.
--
-- Times are nanoseconds on the UNIX time base, held as two Lua numbers
-- (seconds, nanoseconds): Lua's numbers are doubles, exact only to 2^53,
-- and the decisions must be exact to the nanosecond up to the end of u64.
-- Sums saturate at the end of u64, and a permit whose next state would
-- pass it is refused, as in process.
--
-- ARGV[1]  op: "check", "pause", or "probe" (decides nothing: is Redis
--          running scripts that write?)
-- ARGV[2]  clock: "redis" (TIME) or "caller" (ARGV[3], ARGV[4])
-- ARGV[3], ARGV[4]  the caller's now (seconds, nanoseconds)
-- ARGV[5], ARGV[6]  pause: until - now (seconds, nanoseconds)
-- ARGV[7]  the number of quotas, then six values per quota:
--   "g", interval s, interval ns, tolerance s, tolerance ns, 0
--   "w", period s, period ns, step s, step ns, count
-- ARGV[8]  how long a pause key outlives its pause, in ms (the longest
--          period of the asking replica's quotas: the ramp after a pause)
-- KEYS[1]: the key's pause, shared by every quota (and by replicas
-- configured with other quotas); then two per quota, in order: its
-- state, and (window) its grants.
--
-- A pause is the string "1:<until s>:<until ns>"; every check applies it
-- to each quota's state (idempotent: maxima) before deciding.
-- A GCRA state is the string "1:<tat s>:<tat ns>". A window's state is a
-- hash {v = 1, pu = paused until, re = ramp end, rn = ramp next} and its
-- grants a list of "<s>:<ns>", oldest first, at most `count` long.
--
-- Returns {0, now s, now ns} for a permit taken (check), {1, at s, at ns,
-- now s, now ns} for "no permit before at" (check, or a pause written: the
-- time a check would name once the pause is in force).

-- The common case first, before anything else is set up: a check of one
-- smooth (GCRA) quota. The same reads, arithmetic, writes and answers as
-- the general path below, inline: no helper closures but one, no table
-- per quota, one pattern match per value.
if ARGV[1] == 'check' and ARGV[7] == '1' and ARGV[9] == 'g' then
  local B, MAXS, MAXN = 1000000000, 18446744073, 709551615
  -- "1:<s>:<ns>" as two numbers; nil when it is not one.
  local function decode(v)
    local s, n = string.match(v, '^1:(%d+):(%d+)$')
    if not s or #s > 11 or #n > 9 then return nil end
    s, n = tonumber(s), tonumber(n)
    if s > MAXS or (s == MAXS and n > MAXN) then return nil end
    return s, n
  end
  local now_s, now_n
  if ARGV[2] == 'redis' then
    local t = redis.call('TIME')
    now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
  else
    now_s, now_n = tonumber(ARGV[3]), tonumber(ARGV[4])
  end
  local v = redis.call('MGET', KEYS[1], KEYS[2])
  local pus, pun
  if v[1] then
    pus, pun = decode(v[1])
    if not pus then
      return redis.error_reply('TOLLGATE_FORMAT state of another format at ' .. KEYS[1])
    end
  end
  local ts, tn = 0, 0
  if v[2] then
    ts, tn = decode(v[2])
    if not ts then
      return redis.error_reply('TOLLGATE_FORMAT state of another format at ' .. KEYS[2])
    end
  elseif redis.call('EXISTS', KEYS[2]) == 1 then
    -- MGET answers nil for a value of another type too.
    return redis.error_reply('TOLLGATE_FORMAT state of another format at ' .. KEYS[2])
  end
  -- tolerance (bs, bn) and interval (is, inn)
  local bs, bn = tonumber(ARGV[12]), tonumber(ARGV[13])
  if pus then
    -- The pause's end plus the tolerance (saturating), if later.
    local ps, pn = pus + bs, pun + bn
    if pn >= B then ps, pn = ps + 1, pn - B end
    if ps > MAXS or (ps == MAXS and pn > MAXN) then ps, pn = MAXS, MAXN end
    if ts < ps or (ts == ps and tn < pn) then ts, tn = ps, pn end
  end
  -- The decision starts at max(tat, now), d = that - now.
  if ts < now_s or (ts == now_s and tn < now_n) then ts, tn = now_s, now_n end
  local ds, dn = ts - now_s, tn - now_n
  if dn < 0 then ds, dn = ds - 1, dn + B end
  if bs < ds or (bs == ds and bn < dn) then
    -- Refused until tat - tolerance.
    local rs, rn = ts - bs, tn - bn
    if rn < 0 then rs, rn = rs - 1, rn + B end
    return {1, rs, rn, now_s, now_n}
  end
  local ns, nn = ts + tonumber(ARGV[10]), tn + tonumber(ARGV[11])
  if nn >= B then ns, nn = ns + 1, nn - B end
  if ns > MAXS or (ns == MAXS and nn > MAXN) then
    -- The next state would pass the end of u64: refused.
    return {1, MAXS, MAXN, now_s, now_n}
  end
  -- The new state and its expiry (one second after it constrains nothing).
  ds, dn = ns - now_s, nn - now_n
  if dn < 0 then ds, dn = ds - 1, dn + B end
  local ms = ds * 1000 + math.ceil(dn / 1000000) + 1000
  local value = string.format('1:%d:%d', ns, nn)
  if ms > 9000000000000 then
    -- About 285 years: no expiry (SET drops any).
    redis.call('SET', KEYS[2], value)
  else
    redis.call('SET', KEYS[2], value, 'PX', string.format('%d', ms))
  end
  return {0, now_s, now_n}
end

local B = 1000000000
local MAXS, MAXN = 18446744073, 709551615
local VERSION = '1'

local function lt(as, an, bs, bn)
  return as < bs or (as == bs and an < bn)
end

local function max(as, an, bs, bn)
  if lt(as, an, bs, bn) then return bs, bn end
  return as, an
end

-- a + b, saturating; the third value says it saturated.
local function add(as, an, bs, bn)
  local s, n = as + bs, an + bn
  if n >= B then s, n = s + 1, n - B end
  if lt(MAXS, MAXN, s, n) then return MAXS, MAXN, true end
  return s, n, false
end

-- a - b, 0 when b is later.
local function sub(as, an, bs, bn)
  if lt(as, an, bs, bn) then return 0, 0 end
  local s, n = as - bs, an - bn
  if n < 0 then s, n = s - 1, n + B end
  return s, n
end

local function enc(s, n)
  return string.format('%d:%d', s, n)
end

local function dec(v)
  local s, n = string.match(v, '^(%d+):(%d+)$')
  if not s or #s > 11 or #n > 9 then return nil end
  s, n = tonumber(s), tonumber(n)
  if lt(MAXS, MAXN, s, n) then return nil end
  return s, n
end

local function bad_format(key)
  return redis.error_reply('TOLLGATE_FORMAT state of another format at ' .. key)
end

-- The key expires once its state no longer constrains anything: `idle`
-- on the decision's clock. One extra second covers the clock's steps.
local function expire_at(key, idle_s, idle_n, now_s, now_n)
  local ds, dn = sub(idle_s, idle_n, now_s, now_n)
  local ms = ds * 1000 + math.ceil(dn / 1000000) + 1000
  -- About 285 years: beyond it, keep the state without an expiry.
  if ms > 9000000000000 then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIRE', key, string.format('%d', ms))
  end
end

local now_s, now_n
if ARGV[2] == 'redis' then
  local t = redis.call('TIME')
  now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
else
  now_s, now_n = tonumber(ARGV[3]), tonumber(ARGV[4])
end

-- A probe writes (KEYS[1] is a probe key of its own): Redis refusing
-- writes (out of memory, no replicas, read-only, no permission) has not
-- come back, though it answers PING.
if ARGV[1] == 'probe' then
  redis.call('SET', KEYS[1], '1', 'PX', 1000)
  return {0, now_s, now_n}
end

local quotas = tonumber(ARGV[7])
local linger = tonumber(ARGV[8])
local pause_key = KEYS[1]
local q = {}
for i = 1, quotas do
  local a = 8 + (i - 1) * 6
  q[i] = {
    kind = ARGV[a + 1],
    as = tonumber(ARGV[a + 2]), an = tonumber(ARGV[a + 3]),
    bs = tonumber(ARGV[a + 4]), bn = tonumber(ARGV[a + 5]),
    count = tonumber(ARGV[a + 6]),
    state = KEYS[2 * i], grants = KEYS[2 * i + 1],
  }
end

-- A versioned time: "1:<s>:<ns>" (nil when it is not one).
local function decv(v)
  local s, n = string.match(v, '^' .. VERSION .. ':(%d+):(%d+)$')
  if not s or #s > 11 or #n > 9 then return nil end
  s, n = tonumber(s), tonumber(n)
  if lt(MAXS, MAXN, s, n) then return nil end
  return s, n
end

-- Reads the pause and every smooth quota's state in one MGET, then each
-- window's. (A pause key of another type reads as no pause: it can only
-- hold back less than a pause would, never pass the quota.)
local names = {pause_key}
for i = 1, quotas do
  if q[i].kind == 'g' then names[#names + 1] = q[i].state end
end
local values = redis.call('MGET', unpack(names))
local pus, pun
if values[1] then
  pus, pun = decv(values[1])
  if not pus then return bad_format(pause_key) end
end
local at = 2
for i = 1, quotas do
  local x = q[i]
  if x.kind == 'g' then
    local v = values[at]
    at = at + 1
    x.ts, x.tn = 0, 0
    if v then
      x.ts, x.tn = decv(v)
      if not x.ts then return bad_format(x.state) end
    elseif redis.call('EXISTS', x.state) == 1 then
      -- MGET answers nil for a value of another type too.
      return bad_format(x.state)
    end
  else
    local h = redis.call('HMGET', x.state, 'v', 'pu', 're', 'rn')
    x.pus, x.pun, x.res, x.ren, x.rns, x.rnn = 0, 0, 0, 0, 0, 0
    if h[1] then
      if h[1] ~= VERSION then return bad_format(x.state) end
      x.pus, x.pun = dec(h[2] or '')
      x.res, x.ren = dec(h[3] or '')
      x.rns, x.rnn = dec(h[4] or '')
      if not (x.pus and x.res and x.rns) then return bad_format(x.state) end
    end
    x.len = redis.call('LLEN', x.grants)
  end
end

if ARGV[1] == 'pause' then
  local us, un = add(now_s, now_n, tonumber(ARGV[5]), tonumber(ARGV[6]))
  if not lt(now_s, now_n, us, un) then return {0, now_s, now_n} end
  -- Never shortens a pause in force.
  if pus then us, un = max(us, un, pus, pun) end
  redis.call('SET', pause_key, VERSION .. ':' .. enc(us, un))
  local ds, dn = sub(us, un, now_s, now_n)
  local ms = ds * 1000 + math.ceil(dn / 1000000) + linger + 1000
  if ms > 9000000000000 then
    redis.call('PERSIST', pause_key)
  else
    redis.call('PEXPIRE', pause_key, string.format('%d', ms))
  end
  -- Answers as a check would now (below, committing nothing): the pause's
  -- end, or a quota's later time, so the deny cache holds the true time.
  pus, pun = us, un
end

-- A pause holds every quota back until its end, then each resumes at its
-- rate without a burst (as in process; applying it twice changes nothing).
if pus then
  for i = 1, quotas do
    local x = q[i]
    if x.kind == 'g' then
      local ps, pn = add(pus, pun, x.bs, x.bn)
      x.ts, x.tn = max(x.ts, x.tn, ps, pn)
    else
      x.pus, x.pun = max(x.pus, x.pun, pus, pun)
      x.rns, x.rnn = max(x.rns, x.rnn, pus, pun)
      local es, en = add(pus, pun, x.as, x.an)
      x.res, x.ren = max(x.res, x.ren, es, en)
    end
  end
end

-- check: every quota decides first; a refusal by any spends nothing.
local ats, atn = 0, 0
local refused = false
for i = 1, quotas do
  local x = q[i]
  local rs, rn
  if x.kind == 'g' then
    local ss, sn = max(x.ts, x.tn, now_s, now_n)
    local ds, dn = sub(ss, sn, now_s, now_n)
    if lt(x.bs, x.bn, ds, dn) then
      rs, rn = sub(ss, sn, x.bs, x.bn)
    else
      local ns, nn, over = add(ss, sn, x.as, x.an)
      if over then
        rs, rn = MAXS, MAXN
      else
        x.nts, x.ntn = ns, nn
      end
    end
  else
    local ws, wn = now_s, now_n
    -- The oldest grant that counts still counts past the end of time.
    local stuck = false
    if x.len >= x.count then
      local first = redis.call('LINDEX', x.grants, x.len - x.count)
      local fs, fn = dec(first or '')
      if not fs then return bad_format(x.grants) end
      ws, wn, stuck = add(fs, fn, x.as, x.an)
    end
    local ps, pn = now_s, now_n
    if lt(now_s, now_n, x.res, x.ren) then ps, pn = x.rns, x.rnn end
    local as, an = max(ws, wn, x.pus, x.pun)
    as, an = max(as, an, ps, pn)
    if lt(now_s, now_n, as, an) then
      rs, rn = as, an
    elseif stuck and now_s == MAXS and now_n == MAXN then
      rs, rn = MAXS, MAXN
    end
  end
  if rs then
    refused = true
    ats, atn = max(ats, atn, rs, rn)
  end
end
if refused then return {1, ats, atn, now_s, now_n} end
if ARGV[1] == 'pause' then return {0, now_s, now_n} end

for i = 1, quotas do
  local x = q[i]
  if x.kind == 'g' then
    -- One call: the value and its expiry (as expire_at, inline).
    local ds, dn = sub(x.nts, x.ntn, now_s, now_n)
    local ms = ds * 1000 + math.ceil(dn / 1000000) + 1000
    if ms > 9000000000000 then
      redis.call('SET', x.state, VERSION .. ':' .. enc(x.nts, x.ntn))
      redis.call('PERSIST', x.state)
    else
      redis.call('SET', x.state, VERSION .. ':' .. enc(x.nts, x.ntn), 'PX', string.format('%d', ms))
    end
  else
    redis.call('RPUSH', x.grants, enc(now_s, now_n))
    redis.call('LTRIM', x.grants, -x.count, -1)
    local rns, rnn = x.rns, x.rnn
    if lt(now_s, now_n, x.res, x.ren) then
      local ms, mn = max(rns, rnn, now_s, now_n)
      rns, rnn = add(ms, mn, x.bs, x.bn)
    end
    redis.call('HSET', x.state, 'v', VERSION, 'pu', enc(x.pus, x.pun), 're', enc(x.res, x.ren),
      'rn', enc(rns, rnn))
    local gs, gn = add(now_s, now_n, x.as, x.an)
    local is, inn = max(gs, gn, x.pus, x.pun)
    is, inn = max(is, inn, x.res, x.ren)
    expire_at(x.state, is, inn, now_s, now_n)
    expire_at(x.grants, is, inn, now_s, now_n)
  end
end
return {0, now_s, now_n}
