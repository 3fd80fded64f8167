-- Would a turn of this conversation be refused by the tenant's quotas? The same check
-- conv_append makes again (atomically) when the turn is stored; like it, conversations that
-- expired leave the index first and give their bytes back (or a tenant at its cap whose
-- conversations all expired would stay refused).
--
-- KEYS[1] conv   hash `conv:{t:<tenant>}:<id>`
-- KEYS[2] index  sorted set `convidx:{t:<tenant>}`: conversation id -> updated (ms)
-- KEYS[3] sizes  hash `convsize:{t:<tenant>}`: conversation id -> bytes, '#total' -> their sum
-- ARGV[1] conv_id
-- ARGV[2] ttl_ms             conversation TTL (ms): older index entries have expired
-- ARGV[3] max_conversations  conversations a tenant may keep
-- ARGV[4] max_tenant_bytes   bytes of messages a tenant may keep
-- Returns {0} when the turn fits, else {cap (1 = conversations, 2 = bytes), used, limit}.

local conv, index, sizes = KEYS[1], KEYS[2], KEYS[3]
local conv_id = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local max_conversations = tonumber(ARGV[3])
local max_tenant_bytes = tonumber(ARGV[4])
local TOTAL = '#total'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl_ms)
for _, id in ipairs(expired) do
  local size = tonumber(redis.call('HGET', sizes, id))
  if size then
    redis.call('HINCRBY', sizes, TOTAL, -size)
    redis.call('HDEL', sizes, id)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl_ms) end

if redis.call('EXISTS', conv) == 0 and not redis.call('ZSCORE', index, conv_id) then
  local kept = redis.call('ZCARD', index)
  if kept >= max_conversations then return {1, kept, max_conversations} end
end
local total = tonumber(redis.call('HGET', sizes, TOTAL)) or 0
if total >= max_tenant_bytes then return {2, total, max_tenant_bytes} end
return {0}
