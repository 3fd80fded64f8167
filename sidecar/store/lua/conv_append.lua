-- Append one turn's messages to a conversation, trim oldest first to the caps, and refresh
-- the conversation's TTL and its entry in the tenant's index, on Redis time. A turn id that
-- was stored already makes the call a no-op, so a retried write never stores a turn twice.
-- The tenant's quotas are checked first: a new conversation when the tenant already has
-- max_conversations, or any turn when its stored bytes are at max_tenant_bytes, writes nothing.
--
-- KEYS[1] conv   hash `conv:{t:<tenant>}:<id>`: meta fields (created, updated, key_id, count,
--                bytes, first, next, turns) and one field per message, "m:<seq>" =
--                "<created ms>|<record>"
-- KEYS[2] index  sorted set `convidx:{t:<tenant>}`: conversation id -> updated (ms)
-- KEYS[3] sizes  hash `convsize:{t:<tenant>}`: conversation id -> bytes, '#total' -> their sum
-- ARGV[1] conv_id       the conversation id (member of the index)
-- ARGV[2] key_id        the API key that wrote this turn
-- ARGV[3] turn_id       unique id of the turn (the request id); no spaces
-- ARGV[4] ttl_ms        TTL of the three keys after this write (ms)
-- ARGV[5] max_messages  messages kept (oldest trimmed first)
-- ARGV[6] max_bytes     bytes of message fields kept (oldest trimmed first)
-- ARGV[7] max_conversations  conversations a tenant may keep
-- ARGV[8] max_tenant_bytes   bytes of messages a tenant may keep
-- ARGV[9..]             one encoded record per new message, oldest first
-- Returns {stored (1, or 0 when the turn was stored before), count, bytes, trimmed}, or
-- {2, cap (1 = conversations, 2 = bytes), used, limit} when a quota refused the turn.

local conv, index, sizes = KEYS[1], KEYS[2], KEYS[3]
local conv_id, key_id, turn_id = ARGV[1], ARGV[2], ARGV[3]
local ttl_ms = tonumber(ARGV[4])
local max_messages = tonumber(ARGV[5])
local max_bytes = tonumber(ARGV[6])
local max_conversations = tonumber(ARGV[7])
local max_tenant_bytes = tonumber(ARGV[8])
local RECENT_TURNS = 8  -- turn ids remembered for idempotent retries
local TOTAL = '#total'  -- '#' is never in a conversation id

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = redis.call('HMGET', conv, 'first', 'next', 'count', 'bytes', 'turns')
local first = tonumber(meta[1]) or 0
local nxt = tonumber(meta[2]) or 0
local count = tonumber(meta[3]) or 0
local bytes = tonumber(meta[4]) or 0
local recent = {}
for id in string.gmatch(meta[5] or '', '%S+') do
  if id == turn_id then return {0, count, bytes, 0} end
  recent[#recent + 1] = id
end

-- Conversations that expired leave the index and give their bytes back.
local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl_ms)
for _, id in ipairs(expired) do
  local size = tonumber(redis.call('HGET', sizes, id))
  if size then
    redis.call('HINCRBY', sizes, TOTAL, -size)
    redis.call('HDEL', sizes, id)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl_ms) end

local total = tonumber(redis.call('HGET', sizes, TOTAL)) or 0
if not meta[2] and not redis.call('ZSCORE', index, conv_id) then
  local kept = redis.call('ZCARD', index)
  if kept >= max_conversations then return {2, 1, kept, max_conversations} end
end
if total >= max_tenant_bytes then return {2, 2, total, max_tenant_bytes} end

if not meta[2] then redis.call('HSET', conv, 'created', now) end

local stamp = tostring(now) .. '|'
for i = 9, #ARGV do
  local value = stamp .. ARGV[i]
  redis.call('HSET', conv, 'm:' .. nxt, value)
  nxt = nxt + 1
  count = count + 1
  bytes = bytes + #value
end

local trimmed = 0
while count > 0 and (count > max_messages or bytes > max_bytes) do
  local field = 'm:' .. first
  bytes = bytes - redis.call('HSTRLEN', conv, field)
  redis.call('HDEL', conv, field)
  first = first + 1
  count = count - 1
  trimmed = trimmed + 1
end
if bytes < 0 then bytes = 0 end

recent[#recent + 1] = turn_id
local keep = {}
for i = math.max(1, #recent - RECENT_TURNS + 1), #recent do keep[#keep + 1] = recent[i] end

redis.call('HSET', conv, 'updated', now, 'key_id', key_id, 'first', first, 'next', nxt,
           'count', count, 'bytes', bytes, 'turns', table.concat(keep, ' '))
redis.call('PEXPIRE', conv, ttl_ms)
redis.call('ZADD', index, now, conv_id)
redis.call('PEXPIRE', index, ttl_ms)
local before = tonumber(redis.call('HGET', sizes, conv_id)) or 0
redis.call('HSET', sizes, conv_id, bytes)
redis.call('HINCRBY', sizes, TOTAL, bytes - before)
redis.call('PEXPIRE', sizes, ttl_ms)
return {1, count, bytes, trimmed}
