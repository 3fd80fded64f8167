-- One page of a tenant's conversations, newest first, with each one's meta fields.
-- The conversation hashes are named from the index key itself ("convidx:{t:X}" ->
-- "conv:{t:X}:<id>"), so a page can only ever show the index's own tenant; they share its
-- hash tag, hence its Cluster slot. Index entries older than the TTL, or whose hash is gone
-- (evicted), are dropped on the way.
--
-- KEYS[1] index   sorted set `convidx:{t:<tenant>}`: conversation id -> updated (ms)
-- KEYS[2] sizes   hash `convsize:{t:<tenant>}`: conversation id -> bytes, '#total' -> their
--                 sum; a dropped entry gives its bytes back
-- ARGV[1] ttl_ms  conversation TTL (ms): entries updated before now - ttl_ms have expired
-- ARGV[2] limit   conversations per page (>= 1)
-- ARGV[3] cursor_ms  '' for the first page, else the `updated` (ms) of the last item shown
-- ARGV[4] cursor_id  '' for the first page, else the id of the last item shown
-- Returns {more (1 | 0), then 6 per conversation: id, created, updated (the index score, ms),
--          count, bytes, key_id}

local index, sizes = KEYS[1], KEYS[2]
local ttl_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cursor_ms, cursor_id = ARGV[3], ARGV[4]
local prefix = 'conv:' .. string.sub(index, 9) .. ':'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function forget_size(id)
  local size = tonumber(redis.call('HGET', sizes, id))
  if size then
    redis.call('HINCRBY', sizes, '#total', -size)
    redis.call('HDEL', sizes, id)
  end
end
local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl_ms)
for _, id in ipairs(expired) do forget_size(id) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl_ms) end

local max, ties, cursor = '+inf', 0, nil
if cursor_ms ~= '' then
  cursor = tonumber(cursor_ms)
  max = cursor_ms
  ties = redis.call('ZCOUNT', index, cursor_ms, cursor_ms)
end
local want = limit + 1 + ties
local rows = redis.call('ZREVRANGEBYSCORE', index, max, '-inf', 'WITHSCORES', 'LIMIT', 0, want)

local out = {0}
local shown = 0
for i = 1, #rows, 2 do
  local id, score = rows[i], tonumber(rows[i + 1])
  -- Same `updated` as the cursor: members come in reverse byte order, so ids >= the
  -- cursor's were on earlier pages.
  if not (cursor and score == cursor and id >= cursor_id) then
    if shown == limit then
      out[1] = 1
      break
    end
    local m = redis.call('HMGET', prefix .. id, 'created', 'updated', 'count', 'bytes', 'key_id')
    if m[1] then
      shown = shown + 1
      out[#out + 1] = id
      out[#out + 1] = m[1]
      out[#out + 1] = string.format('%d', score)  -- the index's time: what cursors compare
      out[#out + 1] = m[3] or '0'
      out[#out + 1] = m[4] or '0'
      out[#out + 1] = m[5] or ''
    else
      redis.call('ZREM', index, id)
      forget_size(id)
    end
  end
end
if out[1] == 0 and #rows == want * 2 then out[1] = 1 end
return out
