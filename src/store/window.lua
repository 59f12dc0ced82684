-- The sliding-window log of one quota key, shared by every replica.
-- KEYS: [1] the key's sends (sorted set: member = call id, score = µs it ages
-- from), [2] the upstream-429 pause, [3] the epoch, [4] the settle after a new
-- epoch, [5] the decision counter (goes up by one per decision, so a Redis
-- that went back in time answers a number a replica has seen before). One set for all windows, each window counted over its own span, so the
-- layout does not depend on the order or number of [[limits]].
-- Redis TIME is the clock, so the replicas' own clocks do not matter.
-- ARGV: [1] op, [2] member, [3] flight_us, [4] now_us ('' = Redis TIME; tests
-- only), [5] the epoch the replica knows, [6] a new epoch should none exist,
-- [7] settle_us, [8] ahead (calls queued before this one on this replica),
-- [9] the highest decision counter this replica has seen in this epoch,
-- [10] this replica's newest landed send still well inside the window ('' =
-- none), [11] n windows, then n pairs limit, span_us, then the op's own
-- arguments.
-- Every reply is {code, value, counter, n pairs used, frees_us, pause_us}.
-- A reservation is scored now + flight_us (a crashed replica's reservations
-- still expire); `land` moves it to the moment its answer arrived.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[4] ~= '' then now = tonumber(ARGV[4]) end
local sends, pause, epoch, settle, counter = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, member = ARGV[1], ARGV[2]
local flight = tonumber(ARGV[3])
local n = tonumber(ARGV[11])
local limit, span, longest = {}, {}, 0
for i = 1, n do
  limit[i] = tonumber(ARGV[10 + 2 * i])
  span[i] = tonumber(ARGV[11 + 2 * i])
  if span[i] > longest then longest = span[i] end
end
local extra = 12 + 2 * n
local seq = 0
-- The set outlives its newest send by the longest span; the epoch by a day,
-- so an idle key does not pay the settle again and again.
local keep_ms = math.ceil((longest + flight) / 1000) + 1000
local epoch_ms = keep_ms + 86400000

-- Per window, remembered for this run: the sends counted now and the oldest
-- one's score (false: none), so a decision and the state it replies with ask
-- Redis once each. Scores are whole µs: "after now - span" is "from now -
-- span + 1". Numbers go to redis.call exactly; `..` would round them to 14
-- digits.
local counted, oldest, pause_left = {}, {}, nil
local function count(i)
  if counted[i] == nil then
    counted[i] = redis.call('ZCOUNT', sends, now - span[i] + 1, '+inf')
  end
  return counted[i]
end
local function oldest_of(i)
  if oldest[i] == nil then
    oldest[i] = false
    if count(i) > 0 then
      local e = redis.call('ZRANGEBYSCORE', sends, now - span[i] + 1, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      if e[2] then oldest[i] = tonumber(e[2]) end
    end
  end
  return oldest[i]
end
local function pause_us()
  if pause_left == nil then pause_left = math.max(0, redis.call('PTTL', pause)) * 1000 end
  return pause_left
end

-- µs until the i-th window has room for `need` more sends (0: they fit now).
local function window(i, need)
  local used = count(i)
  local over = used + need - limit[i]
  if over <= 0 then return 0 end
  -- Calls past what the window holds now wait whole spans more: the
  -- (over - 1)-th entry frees once, then the slots it frees are retaken.
  local rounds = 0
  while over > used do
    over = over - limit[i]
    rounds = rounds + 1
  end
  if over <= 0 then return rounds * span[i] end
  local s
  if over == 1 then
    s = oldest_of(i)
  else
    local e = redis.call('ZRANGEBYSCORE', sends, now - span[i] + 1, '+inf', 'WITHSCORES', 'LIMIT', over - 1, 1)
    s = tonumber(e[2])
  end
  -- Every such slot still in flight: none frees before it lands and ages out.
  s = math.min(s, now)
  return s + span[i] - now + rounds * span[i]
end

-- Each window's count and µs until its oldest send leaves, then the pause
-- left: what the replica writes into RateLimit fields and /quota.
local function state(out)
  out[3] = seq
  for i = 1, n do
    local frees = 0
    local o = oldest_of(i)
    if o then frees = math.min(o, now) + span[i] - now end
    out[#out + 1] = count(i)
    out[#out + 1] = frees
  end
  out[#out + 1] = pause_us()
  return out
end

if op == 'land' then
  -- A plain ZADD: a send delayed past its reservation's life is still counted.
  redis.call('ZADD', sends, now, member)
  redis.call('PEXPIRE', sends, keep_ms)
  return state({1, now})
elseif op == 'release' then
  redis.call('ZREM', sends, member)
  return state({1, now})
elseif op == 'pause' then
  local ms = tonumber(ARGV[extra])
  if redis.call('PTTL', pause) < ms then redis.call('SET', pause, '1', 'PX', ms) end
  return state({1, now})
elseif op == 'peek' then
  return state({1, now})
elseif op == 'restore' then
  -- A replica's own sends, written back after Redis lost them or missed them:
  -- pairs of member and µs before now (negative: still in flight).
  for j = extra, #ARGV, 2 do
    redis.call('ZADD', sends, now - tonumber(ARGV[j + 1]), ARGV[j])
  end
  redis.call('PEXPIRE', sends, keep_ms)
  return state({1, now})
end

-- reserve, project and check: first the epoch. None means Redis lost this key (a
-- restart without persistence, a flush, an eviction) or never had it: a new
-- one is made, and for settle_us nobody is admitted, so that every replica
-- writes back the sends it made before anyone decides on a partial log.
local function new_epoch()
  local e = ARGV[6]
  redis.call('SET', epoch, e, 'PX', epoch_ms)
  local settle_ms = math.ceil(tonumber(ARGV[7]) / 1000)
  if settle_ms > 0 then redis.call('SET', settle, '1', 'PX', settle_ms) end
  return e
end
local e = redis.call('GET', epoch)
if not e then e = new_epoch() end
if e ~= ARGV[5] then return {-1, tonumber(e), 0} end
-- The same epoch, but did Redis lose part of what this replica knows it
-- holds? The counter went back (an older dump restored, a failover to a
-- lagging replica, writes lost with AOF everysec), or this replica's newest
-- send is gone (the sends key evicted alone). Then a new epoch: everyone
-- writes back, and nobody is admitted until the settle ends.
seq = redis.call('INCR', counter)
-- Lifetimes are renewed when a send is added (below); a new counter gets one now.
if seq == 1 then redis.call('PEXPIRE', counter, epoch_ms) end
local newest = ARGV[10]
if seq <= tonumber(ARGV[9]) or (newest ~= '' and not redis.call('ZSCORE', sends, newest)) then
  return {-1, tonumber(new_epoch()), seq}
end
if op == 'check' then return state({1, now}) end

local settling = redis.call('PTTL', settle)
if settling > 0 then return state({2, settling * 1000}) end
local ahead = tonumber(ARGV[8])
local wait = pause_us()
for i = 1, n do
  local w = window(i, ahead + 1)
  if w > wait then wait = w end
end
-- A refusal writes nothing.
if wait > 0 or ahead > 0 or op == 'project' then return state({0, math.max(wait, 1)}) end
redis.call('ZREMRANGEBYSCORE', sends, '-inf', now - longest)
redis.call('ZADD', sends, now + flight, member)
redis.call('PEXPIRE', sends, keep_ms)
redis.call('PEXPIRE', epoch, epoch_ms)
redis.call('PEXPIRE', counter, epoch_ms)
-- The new send is the newest: it adds one to every window, and is the
-- oldest only of a window that was empty.
for i = 1, n do
  counted[i] = count(i) + 1
  if not oldest_of(i) then oldest[i] = now + flight end
end
return state({1, now})
