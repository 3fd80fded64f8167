-- Add one answered request's usage to its tenant's hourly report, on Redis time.
-- Sent in the same write as settle.lua (one round trip for both).
--
-- KEYS[1] prefix      e.g. usage:{t:acme}:  (the hour key is prefix..'h:'..hour, same slot)
-- ARGV[1] key_id      the API key that made the request
-- ARGV[2] model       the model the request named
-- ARGV[3] prompt      prompt tokens the provider reported (integer >= 0)
-- ARGV[4] completion  completion tokens the provider reported (integer >= 0)
-- ARGV[5] cost_nusd   cost in nano-dollars (integer >= 0; 0 = no price for the model)
-- ARGV[6] ttl_s       how long an hour's report is kept (seconds)
-- Fields of the hour hash, each '<counter>|<key_id>|<model>':
--   r requests, p prompt tokens, c completion tokens, n cost in nano-dollars
-- Returns the hour (Redis TIME seconds / 3600) the usage was booked in.

local suffix = '|' .. ARGV[1] .. '|' .. ARGV[2]
local hour = math.floor(tonumber(redis.call('TIME')[1]) / 3600)
local key = KEYS[1] .. 'h:' .. hour
local adds = {1, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local fields = {'r' .. suffix, 'p' .. suffix, 'c' .. suffix}
if adds[4] > 0 then fields[4] = 'n' .. suffix end
-- One read and one write (not a HINCRBY per counter); the TTL is set when the key and model
-- first appear in the hour (the hash was new, or had not counted them yet).
local v = redis.call('HMGET', key, unpack(fields))
local sets = {}
for i, field in ipairs(fields) do
  sets[#sets + 1] = field
  sets[#sets + 1] = string.format('%d', (tonumber(v[i]) or 0) + adds[i])
end
redis.call('HSET', key, unpack(sets))
if not v[1] then redis.call('EXPIRE', key, tonumber(ARGV[6])) end
return hour
