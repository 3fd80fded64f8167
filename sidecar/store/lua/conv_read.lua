-- Read one conversation whole (meta fields and messages) in one round trip.
--
-- KEYS[1] conv  hash `conv:{t:<tenant>}:<id>`
-- Returns the flat HGETALL list (empty when the conversation does not exist).

return redis.call('HGETALL', KEYS[1])
