-- Admit one request against every limit that applies, atomically, on Redis time.
-- Trims expired entries, checks every window and records the request in all of them only if
-- every enforced window passes: a refused request consumes nothing. Shadow windows are
-- checked too; they record the request only when it fits them and never refuse.
--
-- KEYS, per check in ARGV order:
--   requests check ("r"): 1 key  - request log (zset: member -> admission time, ms)
--   counted requests ("c"): 1 key - time buckets (hash: field "" -> running sum, kept exact;
--                            "o" -> index of the oldest bucket, "ol" -> its last admission, ms;
--                            "<index>" -> "<requests>:<last admission, ms>")
--   tokens check ("t"): 2 keys - reservations (zset: member -> ms), amounts (hash: member ->
--                            tokens, field "" -> running sum of the window, kept exact)
--   cost check ("$"):   2 keys - as a tokens check, amounts in nano-dollars
-- A counted window groups requests by time bucket (index = ms // (window / BUCKETS)) and keeps
-- a bucket counted until its *last* request leaves the window, so no request of the window is
-- ever missed (never over-admits) and memory is bounded by BUCKETS + 1 buckets whatever the
-- limit. The common path is 2 calls: HMGET, HSET (PEXPIRE when the last admission was in an
-- earlier half second: the keys always live at least a window past their last admission).
-- A token window's common path is 4 calls: ZRANGE of its oldest LOOK reservations (those that
-- left the window, and the oldest still in it), HMGET of the sum, this member and the amounts
-- of those that left (subtracted from the sum: a reservation that left counts for nothing even
-- before it is deleted), ZADD and HSET; the ones that left are deleted once LINGER of them have
-- gathered, and the TTLs refreshed as above (the newest admission is known when the ZRANGE
-- read the whole set, else one PTTL says whether the last refresh was a tick ago).
-- ARGV[1] member    unique request id
-- ARGV[2] cost      tokens this request reserves (integer, >= 0)
-- ARGV[3] slack_ms  TTL of every key = its window + slack_ms (ms)
-- ARGV[4] money     nano-dollars this request reserves (integer, >= 0; cost checks)
-- ARGV[5..]         4 per check: kind ("r" | "c" | "t" | "$"), window_ms (ms), limit (requests |
--                   tokens | nano-dollars), shadow ("1" | "0")
-- Returns {admitted (1 | 0), now_ms, then 4 per check: state, used, reset_ms, retry_ms}
--   state:    0 fits, 1 over the limit, 2 the cost alone exceeds the limit (can never fit)
--   used:     requests (or tokens) counted in the window, this request included if recorded
--   reset_ms: ms until the oldest counted entry (or bucket) leaves the window (0 when empty)
--   retry_ms: when over: ms until enough entries leave for this request to fit
--             (a lower bound once more than WALK entries would have to leave)

local member = ARGV[1]
local cost = tonumber(ARGV[2])
local slack_ms = tonumber(ARGV[3])
local money = tonumber(ARGV[4])
local FIRST = 4     -- ARGV index before the first check's fields
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local SUM = ''
local WALK = 1024   -- entries examined at most to compute a token retry time
local BATCH = 1000  -- members per HMGET/HDEL (keeps unpack() within Lua's stack)
local BUCKETS = 100 -- time buckets per counted window (<= 101 held + 3 fields: a listpack hash)
local CHUNK = 16    -- bucket indices read per HMGET when looking for the next bucket
local LOOK = 16     -- oldest token reservations read per admission
local LINGER = 8    -- reservations that left a token window are deleted once this many gathered
local TICK = math.max(1, math.floor(slack_ms / 2))  -- TTLs are refreshed once per tick

-- True when the previous admission (ms; nil: none known) fell in an earlier tick than now: the
-- keys' TTL (window + slack) was last refreshed at most TICK ago otherwise, so they outlive
-- this admission by a window.
local function stale_ttl(previous)
  return not previous or math.floor(previous / TICK) ~= math.floor(now / TICK)
end

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

local function fmt(index) return string.format('%d', index) end

-- "<requests>:<last ms>" -> requests, last ms
local function split(value)
  local count, last = string.match(value, '^(%d+):(%d+)$')
  return tonumber(count), tonumber(last)
end

-- The first bucket of a counted window after index `after`: index, requests, last ms. Only
-- called while the running sum says one exists; `limit` bounds the search (nil: none found).
local function next_bucket(key, after, limit)
  local i = after + 1
  while i <= limit do
    local j = math.min(i + CHUNK - 1, limit)
    local names = {}
    for x = i, j do names[#names + 1] = fmt(x) end
    local values = redis.call('HMGET', key, unpack(names))
    for x = 1, #names do
      if values[x] then
        local count, last = split(values[x])
        return i + x - 1, count, last
      end
    end
    i = j + 1
  end
  return nil
end

-- ms until `need` tokens have left the window (walking the oldest reservations first; those
-- that already left, not yet deleted, are passed over).
local function token_retry(zkey, hkey, window, need)
  local cutoff = now - window
  local all = redis.call('ZRANGE', zkey, 0, WALK - 1, 'WITHSCORES')
  local entries = {}
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) > cutoff then
      entries[#entries + 1] = all[i]
      entries[#entries + 1] = all[i + 1]
    end
  end
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

-- A token window's state in 2 calls: {used (reservations still in the window), sum as stored,
-- this member's amount, oldest score still in the window (nil: none), newest score seen (nil)}.
-- Reservations that left are subtracted, and deleted when LINGER of them have gathered (or all
-- of the LOOK read had left: then everything that left is trimmed at once).
local function token_state(zkey, hkey, cutoff)
  local head = redis.call('ZRANGE', zkey, 0, LOOK - 1, 'WITHSCORES')
  local gone, oldest, newest = {}, nil, nil
  for i = 1, #head, 2 do
    local score = tonumber(head[i + 1])
    if score <= cutoff then gone[#gone + 1] = head[i] elseif not oldest then oldest = score end
    newest = score
  end
  if #head == 2 * LOOK then newest = nil end  -- more may follow: the newest is not known
  if #gone == LOOK then
    local used = trim_tokens(zkey, hkey, cutoff)
    local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
    local mine = tonumber(redis.call('HGET', hkey, member)) or 0
    oldest = tonumber(first[2])
    return {used = used, sum = used, mine = mine, oldest = oldest, newest = nil}
  end
  local v = redis.call('HMGET', hkey, SUM, member, unpack(gone))
  local sum = tonumber(v[1]) or 0
  local freed = 0
  for i = 3, #v do freed = freed + (tonumber(v[i]) or 0) end
  if #gone >= LINGER then
    redis.call('HDEL', hkey, unpack(gone))
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
    sum = sum - freed
    if sum > 0 then redis.call('HSET', hkey, SUM, sum) else sum = 0; redis.call('HDEL', hkey, SUM) end
    freed = 0
  end
  return {used = sum - freed, sum = sum, mine = tonumber(v[2]) or 0, oldest = oldest,
          newest = newest}
end

local out = {0, now}
local tokens = {}   -- per token check: its state, for the recording pass
local admitted = 1
local fits = {}
local counted = {}  -- per counted check: its state after trimming, for the recording pass
local k = 1
local n = (#ARGV - FIRST) / 4
for c = 1, n do
  local base = FIRST + (c - 1) * 4
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
    local key = KEYS[k]
    k = k + 1
    local cur = math.floor(now / math.max(1, math.floor(window / BUCKETS)))
    local v = redis.call('HMGET', key, SUM, 'o', 'ol', fmt(cur))
    local sum, o, ol = tonumber(v[1]) or 0, tonumber(v[2]), tonumber(v[3]) or now
    local cur_count, cur_last = 0, 0
    if v[4] then cur_count, cur_last = split(v[4]) end
    local horizon = math.max(cur, o or cur) + 2 * BUCKETS + 2  -- past any bucket still held
    local trimmed = false
    -- Buckets leave oldest first (last admissions grow with the index); the sum says when
    -- none is left, so a gap in the indices costs a read only while buckets remain.
    while o and ol <= cutoff do
      local gone = fmt(o)
      sum = sum - (split(redis.call('HGET', key, gone) or '0:0'))
      redis.call('HDEL', key, gone)
      if o == cur then cur_count, cur_last = 0, 0 end
      trimmed = true
      local requests
      if sum > 0 then o, requests, ol = next_bucket(key, o, horizon) else o = nil end
    end
    if not o then sum = 0 end
    used = sum
    if used + 1 > limit then
      state = 1
      -- Every bucket holds >= 1 request: one slot frees when the oldest bucket leaves.
      local need, walk, freed = used + 1 - limit, o, 0
      local count, last = split(redis.call('HGET', key, fmt(o)) or '0:0')
      freed, retry = count, last + window - now
      while freed < need do
        walk, count, last = next_bucket(key, walk, horizon)
        if not walk then break end
        freed, retry = freed + count, last + window - now
      end
    end
    counted[c] = {key = key, cur = cur, count = cur_count, last = cur_last, sum = sum, o = o,
                  ol = ol, trimmed = trimmed}
  else
    local zkey, hkey = KEYS[k], KEYS[k + 1]
    k = k + 2
    local amount = kind == '$' and money or cost
    local st = token_state(zkey, hkey, cutoff)
    tokens[c] = st
    used = st.used
    if amount > limit then
      state = 2
    elseif used + amount > limit then
      state = 1
      retry = token_retry(zkey, hkey, window, used + amount - limit)
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
  local base = FIRST + (c - 1) * 4
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
    k = k + 1
    local w = counted[c]
    local key, o, ol = w.key, w.o, w.ol
    if record then
      local bucket, count, last = w.cur, w.count, w.last
      if o and o > bucket then
        -- Redis time stepped back (failover): count the request in the oldest bucket held,
        -- which stays counted longer than the request needs (buckets keep their order).
        bucket = o
        count, last = split(redis.call('HGET', key, fmt(o)) or '0:0')
      end
      last = math.max(last, now)
      local fields = {SUM, w.sum + 1, fmt(bucket), (count + 1) .. ':' .. fmt(last)}
      if not o or o == bucket or w.trimmed then
        if not o or o == bucket then o, ol = bucket, last end
        fields[5], fields[6], fields[7], fields[8] = 'o', fmt(o), 'ol', fmt(ol)
      end
      redis.call('HSET', key, unpack(fields))
      if w.count == 0 or stale_ttl(w.last) then redis.call('PEXPIRE', key, ttl) end
      out[slot + 2] = out[slot + 2] + 1
    elseif w.trimmed and o then
      redis.call('HSET', key, SUM, w.sum, 'o', fmt(o), 'ol', fmt(ol))
    elseif w.trimmed then
      redis.call('HDEL', key, SUM, 'o', 'ol')
    end
    out[slot + 3] = o and ol + window - now or 0
  else
    local zkey, hkey = KEYS[k], KEYS[k + 1]
    k = k + 2
    local st = tokens[c]
    local oldest = st.oldest
    if record then
      local amount = kind == '$' and money or cost
      local old = st.mine
      redis.call('ZADD', zkey, now, member)
      redis.call('HSET', hkey, member, amount, SUM, st.sum + amount - old)
      local refresh
      if st.newest then refresh = stale_ttl(st.newest) else
        refresh = redis.call('PTTL', zkey) < ttl - TICK  -- (-2: no key yet)
      end
      if refresh then
        redis.call('PEXPIRE', zkey, ttl)
        redis.call('PEXPIRE', hkey, ttl)
      end
      out[slot + 2] = out[slot + 2] + amount - old
      if not oldest then oldest = now end
    end
    out[slot + 3] = oldest and oldest + window - now or 0
  end
end
out[1] = admitted
return out
