-- Purge dead letters: they leave the dead-letter set and their records expire as finished
-- jobs' do.
--
-- ARGV: 1 prefix, 2 retention seconds, 3.. job ids.
-- Returns the number purged.
local prefix, retention = ARGV[1], tonumber(ARGV[2])
local purged = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', prefix .. ':dead', id) == 1 then
    purged = purged + 1
    redis.call('HDEL', prefix .. ':dead:messages', id)
    redis.call('EXPIRE', job_key(prefix, id), retention)
    redis.call('EXPIRE', events_key(prefix, id), retention)
    local idem = redis.call('HMGET', job_key(prefix, id), 'idempotency_key', 'tenant')
    if idem[1] and idem[1] ~= '' then
      redis.call('EXPIRE', idem_key(prefix, idem[2] or '', idem[1]), retention)
    end
  end
end
return purged
