-- Delete one conversation, its entry in the tenant's index and its share of the tenant's bytes.
--
-- KEYS[1] conv   hash `conv:{t:<tenant>}:<id>`
-- KEYS[2] index  sorted set `convidx:{t:<tenant>}`
-- KEYS[3] sizes  hash `convsize:{t:<tenant>}`: conversation id -> bytes, '#total' -> their sum
-- ARGV[1] conv_id
-- Returns 1 when the conversation existed, else 0.

local existed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local size = tonumber(redis.call('HGET', KEYS[3], ARGV[1]))
if size then
  redis.call('HINCRBY', KEYS[3], '#total', -size)
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return existed
