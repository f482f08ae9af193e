-- Move a due schedule to its next run, recording what its tick did (beat's leader). Fenced:
-- refused unless the schedule still has the version and due time beat decided from, so a
-- change made meanwhile (an edit, a pause, another beat's advance) is never overwritten.
-- ARGV: prefix, id, version, due (ms), next tick (ms), next due (ms), tick (ms), outcome,
--   run id ('' for none), run kind (job|workflow).
-- Returns 1, or 0 when refused.
local prefix, id = ARGV[1], ARGV[2]
local key = key_schedule(prefix, id)
local current = redis.call('HMGET', key, 'version', 'next_due', 'paused')
if current[1] ~= ARGV[3] or current[2] ~= ARGV[4] or current[3] ~= '0' then return 0 end
redis.call('HSET', key, 'next_tick', ARGV[5], 'next_due', ARGV[6], 'last_tick', ARGV[7],
  'last_outcome', ARGV[8])
if ARGV[9] ~= '' then
  local now = redis.call('TIME')
  redis.call('HSET', key, 'last_run_id', ARGV[9], 'last_run_kind', ARGV[10],
    'last_run_at', tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)))
end
redis.call('ZADD', key_schedules_due(prefix), ARGV[6], id)
return 1
