-- Settle a reservation: replace the reserved tokens with the actual usage in every token
-- window of one admission (or release them when the amount is 0), keeping each running sum
-- exact. A reservation that already left its window (or was released) is left alone.
--
-- KEYS: pairs of (reservations zset, amounts hash), one pair per token window, then one per
--       cost window
-- ARGV[1] member  the admission's request id
-- ARGV[2] amount  actual tokens (integer >= 0); 0 releases the reservation
-- ARGV[3] token_pairs  how many leading pairs are token windows (absent: all of them)
-- ARGV[4] money   actual cost in nano-dollars for the cost windows (integer >= 0)
-- Returns the number of windows that still held the reservation.
-- Per window: HMGET (amount, sum) and one HSET (a release: ZREM, HDEL, HSET).

local member = ARGV[1]
local tokens = tonumber(ARGV[2])
local token_pairs = tonumber(ARGV[3]) or #KEYS / 2
local money = tonumber(ARGV[4]) or 0
local SUM = ''
local settled = 0
for i = 1, #KEYS, 2 do
  local zkey, hkey = KEYS[i], KEYS[i + 1]
  local amount = (i + 1) / 2 <= token_pairs and tokens or money
  local v = redis.call('HMGET', hkey, member, SUM)
  local old = tonumber(v[1])
  if old then
    settled = settled + 1
    local sum = (tonumber(v[2]) or 0) + amount - old
    if amount > 0 then
      if sum > 0 then
        redis.call('HSET', hkey, member, amount, SUM, sum)
      else
        redis.call('HSET', hkey, member, amount)
        redis.call('HDEL', hkey, SUM)
      end
    else
      redis.call('ZREM', zkey, member)
      if sum > 0 then
        redis.call('HDEL', hkey, member)
        redis.call('HSET', hkey, SUM, sum)
      else
        redis.call('HDEL', hkey, member, SUM)
      end
    end
  end
end
return settled
