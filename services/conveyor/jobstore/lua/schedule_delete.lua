-- Delete a schedule (schedules.py): its record, its name, its indexes, its next run.
-- ARGV: prefix, id. Returns 1, or 0 for no such schedule.
local prefix, id = ARGV[1], ARGV[2]
local key = key_schedule(prefix, id)
local current = redis.call('HMGET', key, 'tenant', 'name', 'source')
if not current[1] then return 0 end
redis.call('DEL', key)
local owner = (current[3] == 'file' and 'file/' or '') .. current[1] .. '/' .. current[2]
if redis.call('HGET', key_schedule_names(prefix), owner) == id then
  redis.call('HDEL', key_schedule_names(prefix), owner)
end
redis.call('SREM', key_schedules_all(prefix), id)
redis.call('SREM', key_schedules_tenant(prefix, current[1]), id)
redis.call('ZREM', key_schedules_due(prefix), id)
return 1
