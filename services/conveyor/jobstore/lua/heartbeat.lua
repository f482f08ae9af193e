-- Record that a consumer is alive, at Redis' clock (a worker's clock may be skewed).
--
-- ARGV: 1 prefix, 2 consumer, 3 '1' to retire it (score 0: dead at once), 4.. queues.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[3] == '1' then
  now = 0
end
for i = 4, #ARGV do
  redis.call('ZADD', key_consumers(ARGV[1], ARGV[i]), now, ARGV[2])
end
return #ARGV - 3
