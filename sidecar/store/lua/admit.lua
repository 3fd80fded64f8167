-- Admit one request against every limit that applies, atomically, on Redis time.
-- Trims expired entries, checks every window and records the request in all of them only if
-- every enforced window passes: a refused request consumes nothing. Shadow windows are
-- checked too; they record the request only when it fits them and never refuse.
--
-- KEYS, per check in ARGV order:
--   requests check ("r"): 1 key  - request log (zset: member -> admission time, ms)
--   counted requests ("c"): 2 keys - buckets (zset: bucket -> time of its last admission, ms),
--                            counts (hash: bucket -> requests, field "" -> running sum, exact)
--   tokens check ("t"): 2 keys - reservations (zset: member -> ms), amounts (hash: member ->
--                            tokens, field "" -> running sum of the window, kept exact)
-- A counted window is the token layout with requests of cost 1 grouped by time bucket
-- (window / BUCKETS ms each): a bucket stays counted until its last request leaves the window,
-- so no request of the window is ever missed (never over-admits) and memory is bounded by
-- BUCKETS + 1 members whatever the limit.
-- ARGV[1] member    unique request id
-- ARGV[2] cost      tokens this request reserves (integer, >= 0)
-- ARGV[3] slack_ms  TTL of every key = its window + slack_ms (ms)
-- ARGV[4..]         4 per check: kind ("r" | "c" | "t"), window_ms (ms), limit (requests | tokens),
--                   shadow ("1" | "0")
-- Returns {admitted (1 | 0), now_ms, then 4 per check: state, used, reset_ms, retry_ms}
--   state:    0 fits, 1 over the limit, 2 the cost alone exceeds the limit (can never fit)
--   used:     requests (or tokens) counted in the window, this request included if recorded
--   reset_ms: ms until the oldest counted entry (or bucket) leaves the window (0 when empty)
--   retry_ms: when over: ms until enough entries leave for this request to fit
--             (a lower bound once more than WALK entries would have to leave)

local member = ARGV[1]
local cost = tonumber(ARGV[2])
local slack_ms = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local SUM = ''
local WALK = 1024   -- entries examined at most to compute a token retry time
local BATCH = 1000  -- members per HMGET/HDEL (keeps unpack() within Lua's stack)
local BUCKETS = 100 -- time buckets per counted window (<= 128: both keys stay listpacks)

local function oldest_left(key, window)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return tonumber(first[2]) + window - now
end

-- Drop reservations that left the window and subtract their amounts from the running sum.
local function trim_tokens(zkey, hkey, cutoff)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
  local sum = tonumber(redis.call('HGET', hkey, SUM)) or 0
  if #gone > 0 then
    local freed = 0
    for i = 1, #gone, BATCH do
      local j = math.min(i + BATCH - 1, #gone)
      local amounts = redis.call('HMGET', hkey, unpack(gone, i, j))
      for _, a in ipairs(amounts) do freed = freed + (tonumber(a) or 0) end
      redis.call('HDEL', hkey, unpack(gone, i, j))
    end
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
    sum = sum - freed
    if sum > 0 then
      redis.call('HINCRBY', hkey, SUM, -freed)
    else
      sum = 0
      redis.call('HDEL', hkey, SUM)
    end
  end
  return sum
end

-- ms until `need` tokens have left the window (walking the oldest reservations first).
local function token_retry(zkey, hkey, window, need)
  local entries = redis.call('ZRANGE', zkey, 0, WALK - 1, 'WITHSCORES')
  if #entries == 0 then return window end
  local members = {}
  for i = 1, #entries, 2 do members[#members + 1] = entries[i] end
  local freed, last = 0, 0
  for i = 1, #members, BATCH do
    local j = math.min(i + BATCH - 1, #members)
    local amounts = redis.call('HMGET', hkey, unpack(members, i, j))
    for k, a in ipairs(amounts) do
      freed = freed + (tonumber(a) or 0)
      last = tonumber(entries[(i + k - 1) * 2])
      if freed >= need then return last + window - now end
    end
  end
  return last + window - now
end

local out = {0, now}
local admitted = 1
local fits = {}
local k = 1
local n = (#ARGV - 3) / 4
for c = 1, n do
  local base = 3 + (c - 1) * 4
  local kind = ARGV[base + 1]
  local window = tonumber(ARGV[base + 2])
  local limit = tonumber(ARGV[base + 3])
  local shadow = ARGV[base + 4] == '1'
  local cutoff = now - window
  local state, used, retry = 0, 0, 0
  if kind == 'r' then
    local key = KEYS[k]
    k = k + 1
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    used = redis.call('ZCARD', key)
    if used + 1 > limit then
      state = 1
      local idx = used - limit
      local entry = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
      retry = tonumber(entry[2]) + window - now
    end
  elseif kind == 'c' then
    local zkey, hkey = KEYS[k], KEYS[k + 1]
    k = k + 2
    used = trim_tokens(zkey, hkey, cutoff)
    if used + 1 > limit then
      state = 1
      retry = token_retry(zkey, hkey, window, used + 1 - limit)
    end
  else
    local zkey, hkey = KEYS[k], KEYS[k + 1]
    k = k + 2
    used = trim_tokens(zkey, hkey, cutoff)
    if cost > limit then
      state = 2
    elseif used + cost > limit then
      state = 1
      retry = token_retry(zkey, hkey, window, used + cost - limit)
    end
  end
  fits[c] = state == 0
  if state ~= 0 and not shadow then admitted = 0 end
  out[#out + 1] = state
  out[#out + 1] = used
  out[#out + 1] = 0
  out[#out + 1] = retry
end

k = 1
for c = 1, n do
  local base = 3 + (c - 1) * 4
  local kind = ARGV[base + 1]
  local window = tonumber(ARGV[base + 2])
  local ttl = window + slack_ms
  local slot = 2 + (c - 1) * 4
  local record = admitted == 1 and fits[c]
  if kind == 'r' then
    local key = KEYS[k]
    k = k + 1
    if record then
      redis.call('ZADD', key, now, member)
      redis.call('PEXPIRE', key, ttl)
      out[slot + 2] = out[slot + 2] + 1
    end
    out[slot + 3] = oldest_left(key, window)
  elseif kind == 'c' then
    local zkey, hkey = KEYS[k], KEYS[k + 1]
    k = k + 2
    if record then
      local bucket = string.format('%d', math.floor(now / math.max(1, math.floor(window / BUCKETS))))
      -- GT: a bucket's score only moves forward, even if Redis time steps back (failover).
      redis.call('ZADD', zkey, 'GT', now, bucket)
      redis.call('HINCRBY', hkey, bucket, 1)
      redis.call('HINCRBY', hkey, SUM, 1)
      redis.call('PEXPIRE', zkey, ttl)
      redis.call('PEXPIRE', hkey, ttl)
      out[slot + 2] = out[slot + 2] + 1
    end
    out[slot + 3] = oldest_left(zkey, window)
  else
    local zkey, hkey = KEYS[k], KEYS[k + 1]
    k = k + 2
    if record then
      local old = tonumber(redis.call('HGET', hkey, member)) or 0
      redis.call('ZADD', zkey, now, member)
      redis.call('HSET', hkey, member, cost)
      redis.call('HINCRBY', hkey, SUM, cost - old)
      redis.call('PEXPIRE', zkey, ttl)
      redis.call('PEXPIRE', hkey, ttl)
      out[slot + 2] = out[slot + 2] + cost - old
    end
    out[slot + 3] = oldest_left(zkey, window)
  end
end
out[1] = admitted
return out
