-- Repair a job stuck in `running` whose run was abandoned: nobody renewed it in its queue's
-- running set since ARGV 4, and no delivery of it is unacked (its message was acked without
-- an outcome, or lost). The job is queued again with a message of the next generation, so
-- any older copy that still turns up is skipped; `repairs` counts why it runs again.
--
-- ARGV: 1 prefix, 2 job id, 3 the message (of generation ARGV 5), 4 the running set score
--       the sweep saw, 5 the new generation, 6 the attempts the sweep saw (a run started
--       since is not abandoned).
-- Returns 1 when repaired, 0 when the job moved on meanwhile.
local prefix, id, message = ARGV[1], ARGV[2], ARGV[3]
local key = key_job(prefix, id)
local record = redis.call('HMGET', key, 'state', 'queue', 'attempts', 'tenant')
if record[1] ~= 'running' or record[3] ~= ARGV[6] then
  return 0
end
local score = redis.call('ZSCORE', key_running(prefix, record[2]), id)
if not score or tonumber(score) > tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', key, 'state', 'queued', 'generation', ARGV[5], 'progress', '')
redis.call('HINCRBY', key, 'repairs', 1)
move_state_index(prefix, id, 'running', 'queued')
fair_push(prefix, record[2], record[4] or '', message, now_token(), false, true)
emit(prefix, id, 'queued', 'state')
return 1
