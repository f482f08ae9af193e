-- Renew a worker's leases at Redis' clock: the scores of its deliveries still unacked (XX: an
-- acked delivery is never resurrected), and of its jobs in their queue's running set (XX too:
-- the renewals are how the stuck-job sweep tells a live run from an abandoned one).
--
-- ARGV: 1 prefix, 2 the unacked index (kombu's key), 3 number of delivery tags N,
--       4 .. 3+N delivery tags, then (queue, job id) pairs.
-- Returns the number of deliveries renewed.
local prefix, index, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local renewed = 0
for i = 4, 3 + n do
  renewed = renewed + redis.call('ZADD', index, 'XX', 'CH', now, ARGV[i])
end
for i = 4 + n, #ARGV, 2 do
  redis.call('ZADD', key_running(prefix, ARGV[i]), 'XX', 'CH', t[1], ARGV[i + 1])
end
return renewed
