-- Read a tenant's hourly usage reports over a range of hours (admin API, not the request path).
--
-- KEYS[1] prefix      e.g. usage:{t:acme}:
-- ARGV[1] first_hour  first hour (Unix seconds / 3600), inclusive
-- ARGV[2] last_hour   last hour, inclusive (at most 24 * 400 hours after first_hour)
-- Returns {hour, {field, value, field, value, ...}, hour, {...}, ...} for hours with data.

local out = {}
for hour = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  local fields = redis.call('HGETALL', KEYS[1] .. 'h:' .. hour)
  if #fields > 0 then
    out[#out + 1] = hour
    out[#out + 1] = fields
  end
end
return out
