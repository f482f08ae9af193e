-- Move a job to a new state if it is in one of the allowed states, atomically with its
-- fields, state index, expiry and delayed-message bookkeeping. The verbs that use it, with
-- their allowed and new states, are conveyor.jobstore.machine's table.
--
-- ARGV: 1 prefix, 2 job id, 3 allowed states as '|a|b|', 4 new state, 5 expire after seconds
--       ('0' = keep), 6 message op: '', 'add' (to the delayed set, due ARGV 7 ms after Redis'
--       clock now), 'drop' (from the delayed set) or 'dead' (into the dead-letter set, at
--       Redis' clock now), 8 message for 'add' and 'dead', 9 fence field ('' for none:
--       'fence' for a run's attempt token, 'owner' for the process running it), 10 the value
--       that field must hold (a write from a run that is no longer current is refused),
--       11.. field/value pairs to set.
-- Returns {1, previous state, attempts, callback pending (1/0)} on success (and '', the
-- workflow's outcome and its seconds when this ended the job's workflow), {0, current state
-- or '', attempts, 0, 'stale' when the fence refused it} if refused; 'unrecorded' instead of
-- 'stale' when the record has not counted the run's attempt at all: its start was lost (a
-- failover promoted a replica that never received it), so no newer attempt superseded it and
-- the run's message must not be acked as if its outcome were recorded.
local prefix, id, allowed, new_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expire, delayed_op = tonumber(ARGV[5]), ARGV[6]

local key = key_job(prefix, id)
local current = redis.call('HMGET', key, 'state', 'attempts')
local state, attempts = current[1], tonumber(current[2] or '0')
if not state then
  return {0, '', 0}
end
if ARGV[9] ~= '' and redis.call('HGET', key, ARGV[9]) ~= ARGV[10] then
  -- Attempts only grow (start.lua): fewer than this run's own number means its start is
  -- not in this record's history.
  if ARGV[9] == 'fence' and attempts < (tonumber(ARGV[10]) or 0) then
    return {0, state, attempts, 0, 'unrecorded'}
  end
  return {0, state, attempts, 0, 'stale'}
end
if not allows(allowed, state) then
  return {0, state, attempts}
end

if #ARGV >= 11 then
  redis.call('HSET', key, unpack(ARGV, 11))
end
redis.call('HSET', key, 'state', new_state)
move_state_index(prefix, id, state, new_state)
if state ~= new_state and (new_state == 'succeeded' or new_state == 'failed'
    or new_state == 'retrying') then
  count_outcome(prefix, key, new_state)
end
emit(prefix, id, new_state, state == new_state and 'progress' or 'state')

if delayed_op == 'add' then
  local replaced = redis.call('HGET', key_delayed_messages(prefix), id)
  redis.call('ZADD', key_delayed(prefix), now_ms() + tonumber(ARGV[7]), id)
  redis.call('HSET', key_delayed_messages(prefix), id, ARGV[8])
  quota_add(prefix, redis.call('HGET', key, 'tenant') or '', 'delayed', replaced and 0 or 1,
            #ARGV[8] - (replaced and #replaced or 0))
elseif delayed_op == 'drop' then
  local dropped = redis.call('HGET', key_delayed_messages(prefix), id)
  redis.call('ZREM', key_delayed(prefix), id)
  redis.call('HDEL', key_delayed_messages(prefix), id)
  if dropped then
    quota_add(prefix, redis.call('HGET', key, 'tenant') or '', 'delayed', -1, -#dropped)
  end
elseif delayed_op == 'dead' then
  redis.call('ZADD', key_dead(prefix), now_ms(), id)
  redis.call('HSET', key_dead_messages(prefix), id, ARGV[8])
end
if expire > 0 then
  expire_job(prefix, id, expire)
end
-- A workflow step's end settles its workflow in the same step (_workflow.lua): children
-- released or skipped, and the workflow ended when it was the last.
local ended = expire > 0 and wf_settle(prefix, id, new_state) or nil
-- A terminal job with a completion callback is marked pending in the same step: the callback
-- is enqueued by whoever made the change, and by the beat leader's sweep if that party dies
-- (or Redis refuses the enqueue) before it clears the mark.
local pending = 0
if expire > 0 and (redis.call('HGET', key, 'callback_url') or '') ~= '' then
  redis.call('ZADD', key_callbacks_pending(prefix), now_ms(), id)
  pending = 1
end
if ended then
  return {1, state, attempts, pending, '', ended[1], tostring(ended[2])}
end
return {1, state, attempts, pending}
