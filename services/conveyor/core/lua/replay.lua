-- Replay dead-lettered jobs: each goes back onto its queue as a new attempt of the same job.
--
-- ARGV: 1 prefix, 2.. job ids.
-- Returns the number replayed (ids not in the dead-letter set are ignored).
local prefix = ARGV[1]
local dead, messages = prefix .. ':dead', prefix .. ':dead:messages'
local replayed = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local message = redis.call('HGET', messages, id)
  local key = job_key(prefix, id)
  local record = redis.call('HMGET', key, 'state', 'queue')
  redis.call('ZREM', dead, id)
  redis.call('HDEL', messages, id)
  if message and record[1] then
    redis.call('HSET', key, 'state', 'queued', 'deaths', '0', 'finished_at', '', 'progress', '')
    redis.call('PERSIST', key)
    move_state_index(prefix, id, record[1], 'queued')
    redis.call('LPUSH', record[2], message)
    replayed = replayed + 1
  end
end
return replayed
