-- Record one request's abuse signals for its key and its tenant and judge them, on Redis time.
-- Runs concurrently with admit.lua (same pipelined write): one round trip for both.
--
-- Per entity (the key, then the tenant) under prefix P, all keys with a TTL:
--   P..'w:'..b     hash per time bucket b = floor(now_s / bucket_s): n requests, e embedding
--                  inputs, o output tokens (abuse_output.lua), d prompts new to the bucket,
--                  'b'..id distinct prompts that fell into LSH bucket id, x/X the kept
--                  exact distinct count (see distinct())
--   P..'h:'..b     HyperLogLog of prompt hashes of bucket b (PFCOUNT over the window = distinct)
--   P..'day:'..d   requests on UTC day d (Redis time)
--   P..'cool'      hash a = "throttle" | "block", s = signals: a cool-down in force (PTTL left)
--   P..'thr:'..m   requests admitted during a throttle cool-down in minute m
--   P..'rep'       hash signal -> window epoch it was last reported in (report once a window)
--
-- KEYS[1] key prefix     e.g. abuse:{t:acme}:k:<key id>:
-- KEYS[2] tenant prefix  e.g. abuse:{t:acme}:tenant:   (same hash tag: same Cluster slot);
--                        "" when every tenant threshold is off (the tenant is not tracked)
-- ARGV[1] mode           "enforce" | "shadow" (shadow: judge and report, never cool down)
-- ARGV[2] bucket_s       seconds per bucket
-- ARGV[3] nbuckets       buckets per window (the current, partial one included)
-- ARGV[4] cooldown_ms    how long a throttle or block lasts (ms)
-- ARGV[5] throttle_rpm   requests per minute an entity in a throttle cool-down may still make
-- ARGV[6] prompt_hash    member for the HyperLogLogs ("" = the request has no text)
-- ARGV[7] inputs         embedding inputs in this request
-- ARGV[8..13]            key thresholds: requests, distinct, template, embedding inputs,
--                        output tokens (per window), requests per day; 0 = signal off
-- ARGV[14..19]           tenant thresholds, same order
-- ARGV[20..25]           policy per signal, same order: 0 off, 1 flag, 2 throttle, 3 block
-- ARGV[26..]             LSH bucket ids of this prompt
-- Returns {action, retry_ms, score_milli, signals, new_signals}
--   action:      "allow" | "throttle" | "block" (in shadow mode: what enforce would do)
--   retry_ms:    for throttle/block: ms until the request may be retried
--   score_milli: 1000 x the highest value/threshold over all signals
--   signals:     comma-separated tripped signals, e.g. "key:template,tenant:volume"
--   new_signals: those not yet reported in this window (log and count them once)

local mode = ARGV[1]
local bucket_s = tonumber(ARGV[2])
local nbuckets = tonumber(ARGV[3])
local cooldown_ms = tonumber(ARGV[4])
local throttle_rpm = tonumber(ARGV[5])
local phash = ARGV[6]
local inputs = tonumber(ARGV[7])
local NAMES = {'volume', 'distinct', 'template', 'embeddings', 'output', 'daily'}
local ACTIONS = {'allow', 'allow', 'throttle', 'block'}  -- by policy + 1 (off, flag, ...)
local SEVERITY = {allow = 0, throttle = 1, block = 2}

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = math.floor(now_s / bucket_s)
local day = math.floor(now_s / 86400)
local window_s = bucket_s * nbuckets
local ttl_s = window_s + bucket_s
local shadow = mode == 'shadow'
local entities = {{prefix = KEYS[1], level = 'key', thr = 7}}
if KEYS[2] ~= '' then entities[2] = {prefix = KEYS[2], level = 'tenant', thr = 13} end

-- 1. A cool-down in force: block at once, or admit up to throttle_rpm a minute. Neither records.
local throttled = {}
if not shadow then
  for i, ent in ipairs(entities) do
    local cool = redis.call('HMGET', ent.prefix .. 'cool', 'a', 's')
    if cool[1] then
      local left = redis.call('PTTL', ent.prefix .. 'cool')
      if left < 0 then left = 0 end
      if cool[1] == 'block' then
        return {'block', left, 0, cool[2] or '', ''}
      end
      local minute = math.floor(now_s / 60)
      local tkey = ent.prefix .. 'thr:' .. minute
      local used = redis.call('INCR', tkey)
      if used == 1 then redis.call('EXPIRE', tkey, 61) end
      if used > throttle_rpm then
        local to_next = (minute + 1) * 60000 - now_ms
        return {'throttle', math.min(left, to_next), 0, cool[2] or '', ''}
      end
      throttled[i] = true
    end
  end
end

-- 2. Record this request in the current bucket and the day, for both entities.
local function record(prefix)
  local w = prefix .. 'w:' .. cur
  local h = prefix .. 'h:' .. cur
  local new = 0
  if phash ~= '' then new = redis.call('PFADD', h, phash) else redis.call('PFADD', h) end
  if redis.call('HINCRBY', w, 'n', 1) == 1 then
    redis.call('EXPIRE', w, ttl_s)
    redis.call('EXPIRE', h, ttl_s)
  end
  if inputs > 0 then redis.call('HINCRBY', w, 'e', inputs) end
  if new == 1 then
    redis.call('HINCRBY', w, 'd', 1)
    for i = 26, #ARGV do redis.call('HINCRBY', w, 'b' .. ARGV[i], 1) end
  end
  local dkey = prefix .. 'day:' .. day
  local today = redis.call('INCR', dkey)
  if today == 1 then redis.call('EXPIRE', dkey, 2 * 86400) end
  return today
end

-- 3. Sum the window: {requests, distinct (upper bound), template, inputs, output}.
local fields = {'n', 'd', 'e', 'o'}
for i = 26, #ARGV do fields[#fields + 1] = 'b' .. ARGV[i] end
local function window(prefix)
  local n, d, e, o = 0, 0, 0, 0
  local per_band = {}
  for b = 0, nbuckets - 1 do
    local r = redis.call('HMGET', prefix .. 'w:' .. (cur - b), unpack(fields))
    n = n + (tonumber(r[1]) or 0)
    d = d + (tonumber(r[2]) or 0)
    e = e + (tonumber(r[3]) or 0)
    o = o + (tonumber(r[4]) or 0)
    for j = 5, #r do per_band[j] = (per_band[j] or 0) + (tonumber(r[j]) or 0) end
  end
  local template = 0
  for _, c in pairs(per_band) do if c > template then template = c end end
  return n, d, template, e, o
end

-- Distinct prompts over the window, exactly (PFCOUNT over the window's HyperLogLogs), asked
-- only when the cheap bound (the sum of prompts new to their bucket) reaches the threshold.
-- A multi-key PFCOUNT merges registers (~100 us for a dense HyperLogLog), so its answer is kept
-- in the current bucket (x: bound at which to ask again, X: the count; x = -1: over the
-- threshold). Within one bucket the window's buckets are fixed and the count only grows, by at
-- most as much as the bound, so the kept answer stays right until the bound has grown by the
-- gap to the threshold; the next bucket asks afresh.
local function distinct(prefix, bound, limit)
  local w = prefix .. 'w:' .. cur
  local kept = redis.call('HMGET', w, 'x', 'X')
  local again = tonumber(kept[1])
  if again and (again == -1 or bound < again) then return tonumber(kept[2]) end
  local keys = {}
  for b = 0, nbuckets - 1 do keys[#keys + 1] = prefix .. 'h:' .. (cur - b) end
  local exact = redis.call('PFCOUNT', unpack(keys))
  if exact >= limit then again = -1 else again = bound + limit - exact end
  redis.call('HSET', w, 'x', again, 'X', exact)
  return exact
end

local function forget_window(prefix)
  for b = 0, nbuckets - 1 do
    redis.call('DEL', prefix .. 'w:' .. (cur - b), prefix .. 'h:' .. (cur - b))
  end
end

local tripped, fresh = {}, {}
local action, retry_ms, score = 'allow', 0, 0
local epoch = tostring(math.floor(now_s / window_s))
local to_day_end = (day + 1) * 86400000 - now_ms

for i, ent in ipairs(entities) do
  local today = record(ent.prefix)
  local n, d, template, e, o = window(ent.prefix)
  local values = {n, d, template, e, o, today}
  local ent_action, ent_signals, daily = 'allow', {}, false
  for s = 1, 6 do
    local limit = tonumber(ARGV[ent.thr + s])
    local policy = tonumber(ARGV[19 + s])
    if limit > 0 and policy > 0 then
      local v = values[s]
      if s == 2 and v >= limit then v = distinct(ent.prefix, v, limit) end
      if v * 1000 / limit > score then score = math.floor(v * 1000 / limit) end
      if v >= limit then
        local name = ent.level .. ':' .. NAMES[s]
        tripped[#tripped + 1] = name
        ent_signals[#ent_signals + 1] = name
        local a = ACTIONS[policy + 1]
        if SEVERITY[a] > SEVERITY[ent_action] then ent_action = a end
        if a ~= 'allow' and s == 6 then daily = true end
        local rep = ent.prefix .. 'rep'
        if redis.call('HGET', rep, name) ~= epoch then
          redis.call('HSET', rep, name, epoch)
          redis.call('EXPIRE', rep, 2 * window_s)
          fresh[#fresh + 1] = name
        end
      end
    end
  end
  -- 4. A throttle or block starts a cool-down on this entity (not while one already runs: the
  --    throttled requests are the cool-down's allowance, unless it escalates to a block) and
  --    forgets its window, so the entity starts over when the cool-down ends. The daily cap
  --    cools down until the day ends.
  if ent_action ~= 'allow' and not shadow and (ent_action == 'block' or not throttled[i]) then
    local span = cooldown_ms
    if daily and to_day_end > span then span = to_day_end end
    local cool = ent.prefix .. 'cool'
    redis.call('HSET', cool, 'a', ent_action, 's', table.concat(ent_signals, ','))
    redis.call('PEXPIRE', cool, span)
    forget_window(ent.prefix)
    if ent_action == 'throttle' then
      local tkey = ent.prefix .. 'thr:' .. math.floor(now_s / 60)
      redis.call('INCR', tkey)  -- this request is the cool-down's first
      redis.call('EXPIRE', tkey, 61)
    end
    if SEVERITY[ent_action] > SEVERITY[action] then
      action = ent_action
      retry_ms = span
    end
  elseif shadow and SEVERITY[ent_action] > SEVERITY[action] then
    action = ent_action
  end
end

-- The request that starts a throttle is itself admitted (the first of the allowance).
if action == 'throttle' and not shadow then action = 'allow' end
return {action, retry_ms, score, table.concat(tripped, ','), table.concat(fresh, ',')}
