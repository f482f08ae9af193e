-- Start one delivery of a job: count the attempt, and count a worker death when the previous
-- delivery never finished (the record still says running).
--
-- ARGV: 1 prefix, 2 job id, 3 now (seconds), 4 deaths at which the job is poison,
--       5 the message's generation ('' when it carries none), 6 the states a delivery may
--       start from as '|a|b|' (conveyor.jobstore.machine), 7 the process that runs it
--       ('<host>:<pid>'), 8 this delivery's start token (the same call sent again, when
--       redis-py resends it after a lost reply, must not count another attempt or a death),
--       9 the delivery's tag ('' when unknown), kept as the record's `delivery`: the worker's
--       lease renewer keeps renewing a delivery past its start grace only once this shows
--       that the delivery's run started (a pool child that hangs before it lets the lease
--       lapse, and the message is redelivered), 10 the states a step of a halted workflow
--       is skipped from (verb skip), 11 the most bytes of parents' results a step takes.
-- The new attempt's number is its fence: every write of this run carries it, and is refused
-- once another attempt has started (a paused worker never overwrites a newer outcome).
-- Returns {verdict, previous state, attempts, deaths, inputs, released at} where inputs is what
-- a workflow step takes from its parents (_workflow.lua wf_inputs; '' for none) and released
-- at when its parents released it ('' for none); the workflow's outcome and seconds follow a
-- skip that ended its workflow; and verdict is
--   'run'     the job is now running: run it;
--   'skip'    cancelled, finished, expired, or a stale copy of an older generation:
--             do not run it, just ack the message;
--   'poison'  its workers died under it too often: dead-letter it instead.
local prefix, id, now, max_deaths = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = key_job(prefix, id)
local current = redis.call('HMGET', key, 'state', 'attempts', 'deaths', 'generation', 'workflow',
                          'inputs', 'released_at')
local state = current[1]
local attempts, deaths = tonumber(current[2] or '0'), tonumber(current[3] or '0')
if not state then
  return {'skip', '', 0, 0}
end
if ARGV[8] ~= '' and redis.call('HGET', key, 'start_token') == ARGV[8] then
  return {'run', '', attempts, deaths, wf_inputs(prefix, id, current[6], tonumber(ARGV[11])), current[7] or ''}
end
if ARGV[5] ~= '' and tonumber(ARGV[5]) < tonumber(current[4] or '0') then
  return {'skip', state, attempts, deaths}
end
-- A step of a workflow that halted (failed fast, or cancelled) never starts: skipped, and
-- counted in its workflow, which this may end.
if allows(ARGV[10], state) and wf_halted(prefix, current[5]) then
  wf_skip(prefix, id, state, 'its workflow halted before this step started')
  local ended = wf_settle(prefix, id, 'cancelled')
  if ended then
    return {'skip', state, attempts, deaths, '', '', ended[1], tostring(ended[2])}
  end
  return {'skip', state, attempts, deaths}
end
if not allows(ARGV[6], state) then
  return {'skip', state, attempts, deaths}
end
if state == 'running' then
  deaths = redis.call('HINCRBY', key, 'deaths', 1)
  if deaths >= max_deaths then
    return {'poison', state, attempts, deaths}
  end
end
attempts = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'state', 'running', 'started_at', now, 'progress', '', 'finished_at', '',
           'fence', attempts, 'owner', ARGV[7], 'start_token', ARGV[8],
           'delivery', ARGV[9] or '')
move_state_index(prefix, id, state, 'running')
-- Renewed from now on by this run (a redelivery of a running job keeps its entry otherwise,
-- with the dead run's last renewal: the repair sweep would take it for abandoned).
local queue = redis.call('HGET', key, 'queue')
if queue then
  redis.call('ZADD', key_running(prefix, queue), redis_time()[1], id)
end
emit(prefix, id, 'running', 'state')
return {'run', state, attempts, deaths, wf_inputs(prefix, id, current[6], tonumber(ARGV[11])), current[7] or ''}
