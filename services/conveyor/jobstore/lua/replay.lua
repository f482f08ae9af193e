-- Replay dead-lettered jobs: each goes back onto its queue as a new attempt of the same job.
--
-- ARGV: 1 prefix, 2 the states a dead letter may be replayed from as '|a|b|'
--       (conveyor.jobstore.machine), 3.. job ids.
-- Returns {replayed, kept}: how many were replayed (ids not in the dead-letter set are
-- ignored), and how many stay dead letters (steps of a cancelled workflow: a replay of every
-- dead letter pages past them); a step's workflow resumes (_workflow.lua).
local prefix, replayable = ARGV[1], ARGV[2]
local dead, messages = key_dead(prefix), key_dead_messages(prefix)
local replayed, kept = 0, 0
local function replay_one(id)
  local message = redis.call('HGET', messages, id)
  local key = key_job(prefix, id)
  local record = redis.call('HMGET', key, 'state', 'queue', 'idempotency_key', 'tenant',
                           'unique_key', 'task', 'unique_mode', 'workflow')
  if wf_cancelled(prefix, record[8]) then
    -- A step of a cancelled workflow stays a dead letter: its workflow is over.
    if redis.call('ZSCORE', dead, id) then
      kept = kept + 1
    end
    return
  end
  redis.call('ZREM', dead, id)
  redis.call('HDEL', messages, id)
  if message and record[1] and allows(replayable, record[1]) then
    -- The record takes the stored message's generation (0 when it has none): that message
    -- runs, and any older copy is skipped from now on.
    local generation = cjson.decode(message)['headers']['conveyor_generation']
    if type(generation) ~= 'number' then
      generation = 0
    end
    redis.call('HSET', key, 'generation', generation)
    -- No earlier run may write from now on: a "dead" worker that was only paused fails
    -- nothing of the replay.
    redis.call('HSET', key, 'state', 'queued', 'deaths', '0', 'finished_at', '', 'progress', '',
               'error', '', 'dead_lettered_at', '', 'fence', '', 'owner', '')
    redis.call('PERSIST', key)
    redis.call('PERSIST', key_events(prefix, id))
    local tenant = record[4] or ''
    if record[3] and record[3] ~= '' then
      redis.call('PERSIST', key_idempotency(prefix, tenant, record[3]))
    end
    -- So does the uniqueness lock it still holds (a `ttl` lock keeps its own time).
    if record[5] and record[5] ~= '' and record[7] ~= 'ttl' then
      local lock = key_unique(prefix, tenant, record[6] or '', record[5])
      if redis.call('GET', lock) == id then
        redis.call('PERSIST', lock)
      end
    end
    for _, other in ipairs(redis.call('SMEMBERS', key_answered(prefix, id))) do
      redis.call('PERSIST', key_idempotency(prefix, tenant, other))
    end
    redis.call('PERSIST', key_answered(prefix, id))
    -- This run's completion callback is a new delivery, not a replay of the last one.
    redis.call('DEL', key_callback_idempotency(prefix, tenant, id))
    move_state_index(prefix, id, record[1], 'queued')
    fair_push(prefix, record[2], tenant, message, now_token(), false, true)
    emit(prefix, id, 'queued', 'state')
    -- Its workflow resumes from here: the steps its failure skipped wait for it again.
    wf_resume(prefix, id, record[1])
    replayed = replayed + 1
  end
end
for i = 3, #ARGV do
  replay_one(ARGV[i])
end
return {replayed, kept}
