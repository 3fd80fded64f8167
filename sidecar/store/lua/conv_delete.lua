-- Delete one conversation and its entry in the tenant's index.
--
-- KEYS[1] conv   hash `conv:{t:<tenant>}:<id>`
-- KEYS[2] index  sorted set `convidx:{t:<tenant>}`
-- ARGV[1] conv_id
-- Returns 1 when the conversation existed, else 0.

local existed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return existed
