-- Record a run started outside the schedule's ticks (`trigger`): its id becomes the last run.
-- ARGV: prefix, id, run id, run kind (job|workflow). Returns 1, or 0 for no such schedule.
local key = key_schedule(ARGV[1], ARGV[2])
if redis.call('EXISTS', key) == 0 then return 0 end
local now = redis.call('TIME')
redis.call('HSET', key, 'last_run_id', ARGV[3], 'last_run_kind', ARGV[4], 'last_outcome',
  'triggered', 'last_run_at', tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)))
return 1
