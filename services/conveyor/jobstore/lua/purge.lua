-- Purge dead letters: they leave the dead-letter set and their records expire as finished
-- jobs' do.
--
-- ARGV: 1 prefix, 2 retention seconds, 3.. job ids.
-- Returns {purged, 0} (nothing stays: the shape of replay.lua's reply).
local prefix, retention = ARGV[1], tonumber(ARGV[2])
local purged = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', key_dead(prefix), id) == 1 then
    purged = purged + 1
    redis.call('HDEL', key_dead_messages(prefix), id)
    expire_job(prefix, id, retention)
  end
end
return {purged, 0}
