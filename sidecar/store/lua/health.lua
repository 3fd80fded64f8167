-- Health probe that exercises the EVALSHA path (a PING alone stays green through NOSCRIPT).
-- KEYS: none. ARGV: none.
-- Returns: Redis server time as {seconds, microseconds}.
return redis.call('TIME')
