-- Move the in-flight messages of a dead consumer back to the queue they came from.
--
-- ARGV: 1 in-flight list key, 2 the consumer's liveness key, 3 source queue.
-- Returns the number of messages moved, or -1 if the consumer is alive (nothing done).
local inflight, alive, source = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', alive) == 1 then
  return -1
end
local moved = 0
-- Oldest first, onto the end that is consumed next.
while redis.call('LMOVE', inflight, source, 'RIGHT', 'RIGHT') do
  moved = moved + 1
end
return moved
