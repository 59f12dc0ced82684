-- The sliding-window log of one quota key, shared by every replica.
-- KEYS[1..n]: one sorted set per window (member = call id, score = µs it ages
-- from); KEYS[n+1]: the upstream-429 pause. Redis TIME is the clock, so the
-- replicas' own clocks do not matter. ARGV: op, member, flight_us, now_us
-- (empty: Redis TIME; set only by tests), then per window: limit, span_us.
-- A reservation is scored now + flight_us (a crashed replica's reservations
-- still expire); `land` moves it to the moment its answer arrived.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[4] ~= '' then now = tonumber(ARGV[4]) end
local n = #KEYS - 1
local op = ARGV[1]
local member = ARGV[2]
if op == 'land' then
  for i = 1, n do redis.call('ZADD', KEYS[i], 'XX', now, member) end
  return {1, now}
elseif op == 'release' then
  for i = 1, n do redis.call('ZREM', KEYS[i], member) end
  return {1, now}
elseif op == 'pause' then
  local ms = tonumber(ARGV[5])
  if redis.call('PTTL', KEYS[n + 1]) < ms then redis.call('SET', KEYS[n + 1], '1', 'PX', ms) end
  return {1, now}
end
if op == 'peek' then
  -- Per window: sends counted now, and µs until the oldest leaves.
  local out = {}
  for i = 1, n do
    local span = tonumber(ARGV[4 + 2 * i])
    -- Scores are whole µs: "after now - span" is "from now - span + 1". Numbers
    -- go to redis.call exactly; `..` would round them to 14 digits.
    local used = redis.call('ZCOUNT', KEYS[i], now - span + 1, '+inf')
    local oldest = redis.call('ZRANGEBYSCORE', KEYS[i], now - span + 1, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local frees = 0
    if oldest[2] then frees = math.max(0, math.min(tonumber(oldest[2]), now) + span - now) end
    out[2 * i - 1] = used
    out[2 * i] = frees
  end
  return out
end
-- Appends each window's count and µs until its oldest send leaves, so the
-- replica can write the RateLimit fields without asking again.
local function with_state(out)
  for i = 1, n do
    local span = tonumber(ARGV[4 + 2 * i])
    local frees = 0
    local o = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2]
    if o then frees = math.min(tonumber(o), now) + span - now end
    out[#out + 1] = redis.call('ZCARD', KEYS[i])
    out[#out + 1] = frees
  end
  return out
end
local paused = redis.call('PTTL', KEYS[n + 1])
if paused > 0 then return with_state({0, paused * 1000}) end
local flight = tonumber(ARGV[3])
local wait = 0
for i = 1, n do
  local limit = tonumber(ARGV[3 + 2 * i])
  local span = tonumber(ARGV[4 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = tonumber(redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2])
    -- Every slot still in flight: none frees before one lands and ages out.
    if oldest > now then oldest = now end
    if oldest + span - now > wait then wait = oldest + span - now end
  end
end
if wait > 0 then return with_state({0, wait}) end
for i = 1, n do
  local span = tonumber(ARGV[4 + 2 * i])
  redis.call('ZADD', KEYS[i], now + flight, member)
  redis.call('PEXPIRE', KEYS[i], math.ceil((span + flight) / 1000) + 1000)
end
return with_state({1, now})
