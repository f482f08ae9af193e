-- Renew the leases of running deliveries at Redis' clock: refresh the scores of those still
-- unacked (XX: an acked delivery is never resurrected).
--
-- ARGV: 1 the unacked index (kombu's key), 2.. delivery tags.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', ARGV[1], 'XX', 'CH', now, ARGV[i])
end
return renewed
