-- Move the in-flight messages of a queue's dead consumers back to the queue.
-- A consumer is dead when its heartbeat in the queue's consumer set is older than the TTL.
--
-- ARGV: 1 prefix, 2 queue, 3 unused (heartbeats are Redis' clock, and so is now), 4 TTL
-- (seconds).
-- Returns the number of messages moved.
local t = redis.call('TIME')
local prefix, queue, ttl = ARGV[1], ARGV[2], tonumber(ARGV[4])
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local consumers = key_consumers(prefix, queue)
local list = key_queue(prefix, queue)
local moved = 0
for _, consumer in ipairs(redis.call('ZRANGEBYSCORE', consumers, '-inf', now - ttl)) do
  local inflight = key_inflight(prefix, consumer, queue)
  -- Oldest first, onto the end that is consumed next.
  while redis.call('LMOVE', inflight, list, 'RIGHT', 'RIGHT') do
    moved = moved + 1
  end
  redis.call('ZREM', consumers, consumer)
end
return moved
