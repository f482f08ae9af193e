-- Run a failed step of a workflow again (verb rerun): its kept message is queued once more
-- and its workflow resumes from it (wf_resume), whether it failed for good or was
-- dead-lettered (it then leaves the dead-letter set: the kept message replaces the dead one).
--
-- ARGV: 1 prefix, 2 workflow id, 3 the step's job id, 4 tenant ('' for any: admins), 5 the
-- states a step is rerun from as '|a|b|' (conveyor.jobstore.machine).
-- Returns {1} when queued again, {0, reason}: 'unknown' (no such workflow or step, or another
-- tenant's), 'cancelled' (its workflow was cancelled), or the step's state when it is not
-- one it may be rerun from.
local prefix, workflow, id, tenant, allowed = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = key_job(prefix, id)
local record = redis.call('HMGET', key, 'state', 'workflow', 'tenant', 'queue')
local w = redis.call('HMGET', key_workflow(prefix, workflow), 'tenant', 'halted')
if not record[1] or record[2] ~= workflow or not w[1] or (tenant ~= '' and w[1] ~= tenant) then
  return {0, 'unknown'}
end
if w[2] == 'cancelled' then
  return {0, 'cancelled'}
end
if not allows(allowed, record[1]) then
  return {0, record[1]}
end
local message = redis.call('HGET', key_workflow_messages(prefix, workflow), id)
if not message then
  return {0, 'unknown'}
end
redis.call('ZREM', key_dead(prefix), id)
redis.call('HDEL', key_dead_messages(prefix), id)
-- The kept message is of generation 0: every later copy of this step was consumed.
redis.call('HSET', key, 'state', 'queued', 'deaths', '0', 'generation', '0', 'error', '',
           'finished_at', '', 'progress', '', 'dead_lettered_at', '', 'fence', '', 'owner', '')
redis.call('PERSIST', key)
redis.call('PERSIST', key_events(prefix, id))
move_state_index(prefix, id, record[1], 'queued')
fair_push(prefix, record[4], record[3], message, now_token(), false, true)
emit(prefix, id, 'queued', 'state')
wf_resume(prefix, id, record[1])
return {1}
