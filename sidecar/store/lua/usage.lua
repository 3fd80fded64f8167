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
redis.call('HINCRBY', key, 'r' .. suffix, 1)
redis.call('HINCRBY', key, 'p' .. suffix, tonumber(ARGV[3]))
redis.call('HINCRBY', key, 'c' .. suffix, tonumber(ARGV[4]))
local cost = tonumber(ARGV[5])
if cost > 0 then redis.call('HINCRBY', key, 'n' .. suffix, cost) end
redis.call('EXPIRE', key, tonumber(ARGV[6]))
return hour
