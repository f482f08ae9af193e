-- Move delayed jobs (delay_seconds, retry backoff) that are due onto their queue.
-- Atomic, so any number of workers can run it concurrently without duplicating a message.
--
-- ARGV: 1 prefix, 2 unused (due times are compared with Redis' clock, never a worker's),
--       3 most to move in one call, 4 the states whose message is
--       pushed as '|a|b|', 5 the states that become queued as '|a|b|'
--       (conveyor.jobstore.machine: a scheduled job becomes queued; a retrying one stays
--       retrying until a worker starts it).
-- Returns the number of messages pushed.
local prefix, now, limit = ARGV[1], now_ms(), tonumber(ARGV[3])
local pushable, becomes_queued = ARGV[4], ARGV[5]
local delayed, messages = key_delayed(prefix), key_delayed_messages(prefix)

local pushed = 0
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit, 'WITHSCORES')
for i = 1, #due, 2 do
  local id, ready = due[i], string.format('%.3f', tonumber(due[i + 1]) / 1000)
  local message = redis.call('HGET', messages, id)
  redis.call('ZREM', delayed, id)
  redis.call('HDEL', messages, id)
  local record = redis.call('HMGET', key_job(prefix, id), 'state', 'queue', 'tenant')
  local state, queue = record[1], record[2]
  if message then
    quota_add(prefix, record[3] or '', 'delayed', -1, -#message)
  end
  -- A job cancelled (or expired) while it waited is dropped here: it never runs.
  if message and state and allows(pushable, state) then
    fair_push(prefix, queue, record[3] or '', message, ready, false, true)
    pushed = pushed + 1
    if allows(becomes_queued, state) then
      redis.call('HSET', key_job(prefix, id), 'state', 'queued')
      move_state_index(prefix, id, state, 'queued')
      emit(prefix, id, 'queued', 'state')
    end
  end
end
return pushed
