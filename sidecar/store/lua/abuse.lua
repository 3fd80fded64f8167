-- Record one request's abuse signals for its key and its tenant and judge them, on Redis time.
-- Runs concurrently with admit.lua (same pipelined write): one round trip for both.
--
-- Per entity (the key, then the tenant) under prefix P, all keys with a TTL:
--   P..'s'         hash: everything the judgement reads, in one HMGET per request:
--                  per time bucket b = floor(now_s / bucket_s) of the window: 'n'..b requests,
--                  'e'..b embedding inputs, 'o'..b output tokens (abuse_output.lua), 'd'..b
--                  prompts new to the bucket; 'N', 'D', 'E' the running sums of n, d and e
--                  over the window's buckets (a bucket comes off them when it leaves the
--                  window; output tokens, written after the response, are summed per request
--                  over the window's 'o' fields); 'i'..id the distinct prompts that fell into LSH
--                  bucket id, as "b:count,b:count" per time bucket (entries that left the window
--                  count for nothing and are dropped when the field is next written);
--                  'lo' the bucket of the last roll-over; 'xb','x','X' the kept exact distinct
--                  count (see distinct()); 'ca','cs','cu' a cool-down: action, signals, until
--                  (ms); 'r'..signal the window epoch a signal was last reported in;
--                  'sc' the cursor of a sweep that drops id fields whose buckets all left;
--                  'pad' a 65-byte value that keeps the hash a hash table (see PAD)
--   P..'h:'..b     HyperLogLog of prompt hashes of bucket b (PFCOUNT over the window = distinct)
--   P..'day:'..d   requests on UTC day d (Redis time)
--   P..'thr:'..m   requests admitted during a throttle cool-down in minute m
-- Per request and entity that is HMGET, PFADD, INCR (the day) and HSET; the first request of a
-- bucket also takes the buckets that left the window off the sums (HMGET, HDEL), refreshes the
-- TTLs and starts a sweep of the hash (HSCAN, SWEEP fields per request until it is done).
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
local SCALARS = {'n', 'd', 'e', 'o'}
local SWEEP = 256  -- hash fields a sweep examines per request
-- A field whose value is longer than hash-max-listpack-value (64 by default) keeps the hash a
-- hash table: O(1) per field read. As a listpack (up to 512 fields by default) every field of
-- the HMGET, and every one it misses, would be a linear scan of the whole hash.
local PAD = string.rep('-', 65)

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = math.floor(now_s / bucket_s)
local first = cur - nbuckets + 1  -- oldest bucket of the window
local day = math.floor(now_s / 86400)
local window_s = bucket_s * nbuckets
local ttl_ms = (window_s + bucket_s) * 1000
local shadow = mode == 'shadow'
local ids = {}
for i = 26, #ARGV do ids[#ids + 1] = ARGV[i] end

-- What one HMGET reads per entity: 8 fixed fields, the 6 report epochs, the running sums of
-- requests, new prompts and inputs and the current bucket's own, each window bucket's output
-- tokens, one per LSH id of this prompt.
local REPORTED = {'rvolume', 'rdistinct', 'rtemplate', 'rembeddings', 'routput', 'rdaily'}
local RUNNING = {'n', 'd', 'e'}  -- kept as running sums 'N', 'D', 'E' over the window
local SUMS = {'N', 'D', 'E'}
local scur = string.format('%d', cur)
local fields = {'ca', 'cs', 'cu', 'lo', 'xb', 'x', 'X', 'sc', 'rvolume', 'rdistinct',
                'rtemplate', 'rembeddings', 'routput', 'rdaily', 'N', 'D', 'E',
                'n' .. scur, 'd' .. scur, 'e' .. scur}
local AT_SUMS = 14
local AT_OUT = #fields
for b = first, cur do fields[#fields + 1] = 'o' .. b end
local AT_IDS = #fields
for _, id in ipairs(ids) do fields[#fields + 1] = 'i' .. id end

local function fmt(n) return string.format('%d', n) end

local function load(prefix, level, thr)
  local key = prefix .. 's'
  local v = redis.call('HMGET', key, unpack(fields))
  return {prefix = prefix, key = key, level = level, thr = thr, v = v,
          cool = v[1], signals = v[2], cool_until = tonumber(v[3]), lo = tonumber(v[4]),
          sets = {}, dels = {}}
end

local entities = {load(KEYS[1], 'key', 7)}
if KEYS[2] ~= '' then entities[2] = load(KEYS[2], 'tenant', 13) end

-- 1. A cool-down in force: block at once, or admit up to throttle_rpm a minute. Neither records.
local throttled = {}
if not shadow then
  for i, ent in ipairs(entities) do
    if ent.cool_until and ent.cool_until > now_ms then
      local left = ent.cool_until - now_ms
      if ent.cool == 'block' then
        return {'block', left, 0, ent.signals or '', ''}
      end
      local minute = math.floor(now_s / 60)
      local tkey = ent.prefix .. 'thr:' .. minute
      local used = redis.call('INCR', tkey)
      if used == 1 then redis.call('EXPIRE', tkey, 61) end
      if used > throttle_rpm then
        local to_next = (minute + 1) * 60000 - now_ms
        return {'throttle', math.min(left, to_next), 0, ent.signals or '', ''}
      end
      throttled[i] = true
    end
  end
end

local function set(ent, field, value)
  local sets = ent.sets
  sets[#sets + 1] = field
  sets[#sets + 1] = value
end

-- "b:count,b:count" -> count in the window, and the entries still in it
local function ring(value)
  local total, kept = 0, {}
  if value then
    for b, c in string.gmatch(value, '(%d+):(%d+)') do
      if tonumber(b) >= first then
        total = total + tonumber(c)
        kept[#kept + 1] = b .. ':' .. c
      end
    end
  end
  return total, kept
end

-- Take a bucket field that left the window off its running sum (once: `gone` remembers it).
local function drop(ent, field, value)
  if ent.gone[field] then return end
  ent.gone[field] = true
  ent.dels[#ent.dels + 1] = field
  local f = string.sub(field, 1, 1)
  if f ~= 'o' then
    local sum = ent.sums[f]
    ent.sums[f] = math.max(0, sum - (tonumber(value) or 0))
  end
end

-- The first request of a bucket: the buckets that left the window since the last roll-over come
-- off the running sums and are deleted (the hash lives window + one bucket after a roll-over,
-- so no older bucket can remain but from a step back of Redis time, which the sweep catches);
-- the hash's TTL is refreshed and a sweep of its fields starts.
local function roll_over(ent)
  if ent.lo and ent.lo - nbuckets + 1 <= first - 1 then
    local names = {}
    for b = math.max(ent.lo - nbuckets + 1, first - nbuckets - 2), first - 1 do
      for _, f in ipairs(SCALARS) do names[#names + 1] = f .. b end
    end
    local values = redis.call('HMGET', ent.key, unpack(names))
    for j = 1, #names do
      if values[j] then drop(ent, names[j], values[j]) end
    end
  end
  set(ent, 'lo', scur)
  if not ent.lo then set(ent, 'pad', PAD) end
  ent.expire = true
  if not ent.v[8] then ent.sweep = '0' end
end

-- One step of the sweep: id fields whose every entry left the window are dropped, and bucket
-- fields older than the window (output tokens of a request that outlasted it; a bucket of
-- before a step back of Redis time) come off their sums.
local function sweep(ent, cursor)
  local r = redis.call('HSCAN', ent.key, cursor, 'COUNT', SWEEP)
  local kv = r[2]
  for j = 1, #kv, 2 do
    local f = kv[j]
    if string.byte(f, 1) == 105 then  -- 'i'
      local total = ring(kv[j + 1])
      if total == 0 then ent.dels[#ent.dels + 1] = f end
    else
      local b = tonumber(string.match(f, '^[ndeo](%d+)$'))
      if b and b < first then drop(ent, f, kv[j + 1]) end
    end
  end
  if r[1] == '0' then
    if ent.v[8] then ent.dels[#ent.dels + 1] = 'sc' end
  else
    set(ent, 'sc', r[1])
  end
end

-- 2. Record this request in the current bucket and the day; returns the window's values.
local function record(ent)
  local v = ent.v
  ent.sums, ent.gone = {}, {}
  for j, f in ipairs(RUNNING) do ent.sums[f] = tonumber(v[AT_SUMS + j]) or 0 end
  if not ent.lo or ent.lo < cur then roll_over(ent) end
  local cursor = ent.sweep or v[8]
  if cursor then sweep(ent, cursor) end
  if ent.cool and not (ent.cool_until and ent.cool_until > now_ms) then
    ent.dels[#ent.dels + 1] = 'ca'
    ent.dels[#ent.dels + 1] = 'cs'
    ent.dels[#ent.dels + 1] = 'cu'
  end
  local new = 0
  if phash ~= '' then
    local h = ent.prefix .. 'h:' .. scur
    new = redis.call('PFADD', h, phash)
    if ent.expire or not v[AT_SUMS + 4] then redis.call('PEXPIRE', h, ttl_ms) end
  end
  local add = {n = 1, d = new, e = inputs}
  for j, f in ipairs(RUNNING) do
    if add[f] > 0 then
      ent.sums[f] = ent.sums[f] + add[f]
      set(ent, f .. scur, (tonumber(v[AT_SUMS + 3 + j]) or 0) + add[f])
    end
  end
  for j, f in ipairs(RUNNING) do set(ent, SUMS[j], ent.sums[f]) end
  local out = 0
  for b = 1, nbuckets do out = out + (tonumber(v[AT_OUT + b]) or 0) end
  local template = 0
  for j = 1, #ids do
    local count, kept = ring(v[AT_IDS + j])
    if new == 1 then
      local here = 0
      if #kept > 0 then
        local b, c = string.match(kept[#kept], '^(%d+):(%d+)$')
        if tonumber(b) == cur then here = tonumber(c); kept[#kept] = nil end
      end
      kept[#kept + 1] = scur .. ':' .. (here + 1)
      count = count + 1
      set(ent, 'i' .. ids[j], table.concat(kept, ','))
    end
    if count > template then template = count end
  end
  local dkey = ent.prefix .. 'day:' .. day
  local today = redis.call('INCR', dkey)
  if today == 1 then redis.call('EXPIRE', dkey, 2 * 86400) end
  return {ent.sums.n, ent.sums.d, template, ent.sums.e, out, today}
end

-- Distinct prompts over the window, exactly (PFCOUNT over the window's HyperLogLogs), asked
-- only when the cheap bound (the sum of prompts new to their bucket) reaches the threshold.
-- A multi-key PFCOUNT merges registers (~100 us for a dense HyperLogLog), so its answer is kept
-- for the current bucket (x: bound at which to ask again, X: the count; x = -1: over the
-- threshold). Within one bucket the window's buckets are fixed and the count only grows, by at
-- most as much as the bound, so the kept answer stays right until the bound has grown by the
-- gap to the threshold; the next bucket asks afresh.
local function distinct(ent, bound, limit)
  local v = ent.v
  local again = tonumber(v[6])
  if tonumber(v[5]) == cur and again and (again == -1 or bound < again) then
    return tonumber(v[7])
  end
  local keys = {}
  for b = first, cur do keys[#keys + 1] = ent.prefix .. 'h:' .. b end
  local exact = redis.call('PFCOUNT', unpack(keys))
  if exact >= limit then again = -1 else again = bound + limit - exact end
  set(ent, 'xb', scur)
  set(ent, 'x', fmt(again))
  set(ent, 'X', fmt(exact))
  return exact
end

-- Write what one entity recorded: one HDEL (rarely), one HSET, and the TTL after a roll-over.
local function save(ent)
  if #ent.dels > 0 then redis.call('HDEL', ent.key, unpack(ent.dels)) end
  if #ent.sets > 0 then redis.call('HSET', ent.key, unpack(ent.sets)) end
  if ent.expire then
    local keep = ttl_ms
    if ent.cool_until and ent.cool_until - now_ms > keep then keep = ent.cool_until - now_ms end
    redis.call('PEXPIRE', ent.key, keep)
  end
end

-- 4. A cool-down starts: the entity's window is forgotten (it starts over when the cool-down
--    ends); its reports and day count stay.
local function cool_down(ent, action, signals, span)
  local keys = {ent.key}
  for b = first, cur do keys[#keys + 1] = ent.prefix .. 'h:' .. b end
  redis.call('DEL', unpack(keys))
  local sets = {'ca', action, 'cs', signals, 'cu', fmt(now_ms + span), 'lo', scur,
                'pad', PAD}
  for s = 1, 6 do
    local epoch = ent.reported[s] or ent.v[8 + s]
    if epoch then
      sets[#sets + 1] = REPORTED[s]
      sets[#sets + 1] = epoch
    end
  end
  redis.call('HSET', ent.key, unpack(sets))
  redis.call('PEXPIRE', ent.key, math.max(ttl_ms, span))
end

local tripped, fresh = {}, {}
local action, retry_ms, score = 'allow', 0, 0
local epoch = tostring(math.floor(now_s / window_s))
local to_day_end = (day + 1) * 86400000 - now_ms

for i, ent in ipairs(entities) do
  local values = record(ent)
  local ent_action, ent_signals, daily = 'allow', {}, false
  ent.reported = {}
  for s = 1, 6 do
    local limit = tonumber(ARGV[ent.thr + s])
    local policy = tonumber(ARGV[19 + s])
    if limit > 0 and policy > 0 then
      local v = values[s]
      if s == 2 and v >= limit then v = distinct(ent, v, limit) end
      if v * 1000 / limit > score then score = math.floor(v * 1000 / limit) end
      if v >= limit then
        local name = ent.level .. ':' .. NAMES[s]
        tripped[#tripped + 1] = name
        ent_signals[#ent_signals + 1] = name
        local a = ACTIONS[policy + 1]
        if SEVERITY[a] > SEVERITY[ent_action] then ent_action = a end
        if a ~= 'allow' and s == 6 then daily = true end
        if ent.v[8 + s] ~= epoch then
          set(ent, REPORTED[s], epoch)
          ent.reported[s] = epoch
          fresh[#fresh + 1] = name
        end
      end
    end
  end
  -- A throttle or block starts a cool-down on this entity (not while one already runs: the
  -- throttled requests are the cool-down's allowance, unless it escalates to a block). The
  -- daily cap cools down until the day ends.
  if ent_action ~= 'allow' and not shadow and (ent_action == 'block' or not throttled[i]) then
    local span = cooldown_ms
    if daily and to_day_end > span then span = to_day_end end
    cool_down(ent, ent_action, table.concat(ent_signals, ','), span)
    if ent_action == 'throttle' then
      local tkey = ent.prefix .. 'thr:' .. math.floor(now_s / 60)
      redis.call('INCR', tkey)  -- this request is the cool-down's first
      redis.call('EXPIRE', tkey, 61)
    end
    if SEVERITY[ent_action] > SEVERITY[action] then
      action = ent_action
      retry_ms = span
    end
  else
    save(ent)
    if shadow and SEVERITY[ent_action] > SEVERITY[action] then action = ent_action end
  end
end

-- The request that starts a throttle is itself admitted (the first of the allowance).
if action == 'throttle' and not shadow then action = 'allow' end
return {action, retry_ms, score, table.concat(tripped, ','), table.concat(fresh, ',')}
