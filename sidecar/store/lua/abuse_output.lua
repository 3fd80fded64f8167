-- Add a response's output tokens to the current abuse bucket of its key and its tenant.
-- Called once after a response (off the request's critical path); abuse.lua reads the sum.
--
-- KEYS[1] key prefix     e.g. abuse:{t:acme}:k:<key id>:
-- KEYS[2] tenant prefix  e.g. abuse:{t:acme}:tenant:  ("": the tenant is not tracked)
-- ARGV[1] bucket_s       seconds per bucket (as abuse.lua)
-- ARGV[2] nbuckets       buckets per window (as abuse.lua)
-- ARGV[3] tokens         completion tokens of the response (integer, > 0)
-- ARGV[4] bucket         the bucket to count them in: the request's, from its admission's Redis
--                        time ("" or absent: the current one, from TIME)
-- Returns the key's output tokens in the current bucket.
-- One HINCRBY per entity into its hash P..'s' (field 'o'..bucket); the first of a bucket also
-- makes sure the hash has a TTL (it may have expired since the request was judged).

local bucket_s = tonumber(ARGV[1])
local nbuckets = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local cur = tonumber(ARGV[4] or '')
if not cur then cur = math.floor(tonumber(redis.call('TIME')[1]) / bucket_s) end
local ttl_s = bucket_s * (nbuckets + 1)
local out = 0
for i = #KEYS, 1, -1 do
  if KEYS[i] ~= '' then
    local s = KEYS[i] .. 's'
    out = redis.call('HINCRBY', s, 'o' .. cur, tokens)
    if out == tokens and redis.call('TTL', s) < 0 then redis.call('EXPIRE', s, ttl_s) end
  end
end
return out
