-- Claim a delivery: remove it from the consumer's in-flight list and record it as unacked,
-- in one step, only if it is still there. If a sweeper already moved it back to the queue
-- (the consumer looked dead), the claim fails and the consumer must drop the delivery, so the
-- message never runs twice.
--
-- ARGV: 1 in-flight list, 2 raw message, 3 unacked hash, 4 unacked index, 5 delivery tag,
--       6 unused (the lease starts at Redis' clock, never a worker's), 7 unacked record.
-- Returns 1 when claimed, 0 when the message was no longer in flight here.
if redis.call('LREM', ARGV[1], 1, ARGV[2]) == 0 then
  return 0
end
local t = redis.call('TIME')
redis.call('ZADD', ARGV[4], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[5])
redis.call('HSET', ARGV[3], ARGV[5], ARGV[7])
return 1
