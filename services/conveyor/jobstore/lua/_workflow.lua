-- Workflows (conveyor.jobstore.workflow, docs/workflows.md), prepended to every job script
-- after _lib: the verbs that finish a step settle its workflow in the same atomic step.
--
-- A step is a job record with `workflow`, `step` (its name), `parents` and `children` (JSON
-- lists of job ids), `waiting_on` (parents not yet succeeded) and, when it takes its parents'
-- results, `inputs` (JSON: argument name -> a parent's job id, or '*' for all of them). Its
-- message is kept in the workflow's messages hash for the workflow's life. The workflow's
-- record counts `steps`, `done`, `succeeded`, `failed` and `cancelled`; `halted` is '' while
-- steps may start, 'failed' once a failure stopped a fail-fast workflow, 'cancelled' once the
-- workflow was cancelled; `order` lists its steps' job ids, parents before children.

-- A waiting step whose parents all succeeded (verb release): its kept message is queued.
local function wf_release(prefix, workflow, id)
  local key = key_job(prefix, id)
  local record = redis.call('HMGET', key, 'queue', 'tenant')
  local message = redis.call('HGET', key_workflow_messages(prefix, workflow), id)
  local t = redis.call('TIME')
  redis.call('HSET', key, 'state', 'queued',
             'released_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
  move_state_index(prefix, id, 'waiting', 'queued')
  emit(prefix, id, 'queued', 'state')
  if message then
    fair_push(prefix, record[1], record[2], message, now_token(), false, true)
  end
end

-- A step that will not run (verb skip): cancelled, marked skipped so that a resumed workflow
-- can queue it again.
local function wf_skip(prefix, id, state, why)
  local key = key_job(prefix, id)
  local error = cjson.encode({type = 'Skipped', message = why})
  local t = redis.call('TIME')
  -- No run of it may write from now on (a paused one waking after a resume revived it).
  redis.call('HSET', key, 'state', 'cancelled', 'skipped', '1', 'error', error,
             'finished_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])),
             'fence', '', 'owner', '')
  move_state_index(prefix, id, state, 'cancelled')
  emit(prefix, id, 'cancelled', 'state')
end

local function wf_list(raw)
  if not raw or raw == '' then
    return {}
  end
  return cjson.decode(raw)
end

-- End the workflow if every step is done: its outcome (succeeded when every step did, failed
-- when one failed, cancelled otherwise: cancelled, or stopped by a cancelled step), its events, and the expiry of everything it
-- kept. Returns {outcome, seconds it took} when it ended now, else nil.
local function wf_finish_if_done(prefix, workflow)
  local wkey = key_workflow(prefix, workflow)
  local w = redis.call('HMGET', wkey, 'state', 'steps', 'done')
  if w[1] ~= 'running' or tonumber(w[3] or '0') < tonumber(w[2] or '0') then
    return nil
  end
  w = redis.call('HMGET', wkey, 'state', 'steps', 'done', 'succeeded', 'failed', 'created_at',
                 'retention', 'dead_retention', 'order', 'tenant', 'idempotency_key')
  local outcome = 'cancelled'
  if tonumber(w[4] or '0') >= tonumber(w[2] or '0') then
    outcome = 'succeeded'
  elseif tonumber(w[5] or '0') > 0 then
    outcome = 'failed'
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  redis.call('HSET', wkey, 'state', outcome, 'finished_at', string.format('%.6f', now))
  redis.call('XADD', key_workflow_events(prefix, workflow), 'MAXLEN', '~', 10000, '*',
             'kind', 'workflow', 'step', '', 'job', '', 'state', outcome, 'progress', '',
             'attempts', '0')
  -- Every step keeps as long as the longest-kept one (a dead letter's retention if a step
  -- is one): a replay resumes the whole workflow, never a part of it.
  local order = wf_list(w[9])
  local longest = tonumber(w[7])
  for _, id in ipairs(order) do
    if redis.call('ZSCORE', key_dead(prefix), id) then
      longest = math.max(longest, tonumber(w[8]))
      break
    end
  end
  for _, id in ipairs(order) do
    expire_job(prefix, id, longest)
  end
  redis.call('EXPIRE', wkey, longest)
  redis.call('EXPIRE', key_workflow_messages(prefix, workflow), longest)
  redis.call('EXPIRE', key_workflow_events(prefix, workflow), longest)
  if w[11] and w[11] ~= '' then
    redis.call('EXPIRE', key_workflow_idempotency(prefix, w[10] or '', w[11]), longest)
  end
  return {outcome, now - tonumber(w[6])}
end

-- Count step `id`, which has just reached the terminal `state`, in its workflow: a success
-- releases the children it was the last parent of; anything else skips the waiting steps
-- that can no longer run (its waiting descendants; every waiting step, and from then on
-- every step that would start, when the workflow fails fast). Returns what
-- wf_finish_if_done returns (nil for a job outside any workflow).
local function wf_settle(prefix, id, state)
  local workflow = redis.call('HGET', key_job(prefix, id), 'workflow')
  if not workflow or workflow == '' then
    return nil
  end
  local wkey = key_workflow(prefix, workflow)
  local w = redis.call('HMGET', wkey, 'state', 'halted', 'policy')
  if w[1] ~= 'running' then
    return nil
  end
  local halted = w[2] or ''
  local settled = {{id, state}}
  local i = 0
  while i < #settled do
    i = i + 1
    local step, step_state = settled[i][1], settled[i][2]
    local counter = 'cancelled'
    if step_state == 'succeeded' or step_state == 'failed' then
      counter = step_state
    end
    redis.call('HINCRBY', wkey, 'done', 1)
    redis.call('HINCRBY', wkey, counter, 1)
    local children = wf_list(redis.call('HGET', key_job(prefix, step), 'children'))
    if step_state == 'succeeded' then
      for _, child in ipairs(children) do
        local left = redis.call('HINCRBY', key_job(prefix, child), 'waiting_on', -1)
        if left <= 0 and halted == ''
            and redis.call('HGET', key_job(prefix, child), 'state') == 'waiting' then
          wf_release(prefix, workflow, child)
        end
      end
    elseif i == 1 and halted == '' and w[3] == 'fail_fast' then
      -- The failure that stops a fail-fast workflow: nothing waiting will run, and nothing
      -- queued will start (start.lua skips it).
      halted = 'failed'
      redis.call('HSET', wkey, 'halted', halted)
      local name = redis.call('HGET', key_job(prefix, id), 'step') or id
      for _, other in ipairs(wf_list(redis.call('HGET', wkey, 'order'))) do
        if redis.call('HGET', key_job(prefix, other), 'state') == 'waiting' then
          wf_skip(prefix, other, 'waiting', 'step ' .. name .. ' ' .. state
                  .. ' and the workflow fails fast')
          settled[#settled + 1] = {other, 'cancelled'}
        end
      end
    else
      local name = redis.call('HGET', key_job(prefix, step), 'step') or step
      for _, child in ipairs(children) do
        if redis.call('HGET', key_job(prefix, child), 'state') == 'waiting' then
          wf_skip(prefix, child, 'waiting', 'parent step ' .. name .. ' did not succeed')
          settled[#settled + 1] = {child, 'cancelled'}
        end
      end
    end
  end
  return wf_finish_if_done(prefix, workflow)
end

-- Whether step `id` must not start: its workflow halted (fail fast, or cancelled).
local function wf_halted(prefix, workflow)
  if not workflow or workflow == '' then
    return false
  end
  local halted = redis.call('HGET', key_workflow(prefix, workflow), 'halted')
  return halted ~= nil and halted ~= false and halted ~= ''
end

-- What a starting step takes from its parents: argument name, JSON value, ... (the named
-- parent's result, or the list of every parent's result in `depends_on` order for '*'); ''
-- when it takes nothing. A parent whose result is gone makes it '!' and that parent's id;
-- results larger than `max_bytes` in all make it '!', '' and their size.
local function wf_inputs(prefix, id, inputs, max_bytes)
  if not inputs or inputs == '' then
    return ''
  end
  local parents = wf_list(redis.call('HGET', key_job(prefix, id), 'parents'))
  local sources = cjson.decode(inputs)
  -- Sized before anything is read: a step must not make Redis build megabytes it refuses.
  local size = 0
  for _, source in pairs(sources) do
    for _, parent in ipairs(source == '*' and parents or {source}) do
      size = size + redis.call('HSTRLEN', key_job(prefix, parent), 'result')
    end
  end
  if size > max_bytes then
    return {'!', '', tostring(size)}
  end
  local parts = {}
  for name, source in pairs(sources) do
    local sources = source == '*' and parents or {source}
    local results = {}
    for _, parent in ipairs(sources) do
      local result = redis.call('HMGET', key_job(prefix, parent), 'state', 'result')
      if result[1] ~= 'succeeded' or not result[2] or result[2] == '' then
        return '!' .. parent
      end
      results[#results + 1] = result[2]
    end
    local value = results[1]
    if source == '*' then
      value = '[' .. table.concat(results, ',') .. ']'
    end
    parts[#parts + 1] = name
    parts[#parts + 1] = value
  end
  return parts
end

-- Resume the workflow of step `id`, a dead letter being replayed: it counts as not done
-- again, and every step a failure skipped whose parents have not failed waits again (or is
-- queued, its parents all succeeded), in order, so that its own skipped children follow.
-- A finished workflow runs again, its records kept once more. A cancelled workflow stays
-- cancelled.
local function wf_resume(prefix, id, state)
  local workflow = redis.call('HGET', key_job(prefix, id), 'workflow')
  if not workflow or workflow == '' then
    return
  end
  local wkey = key_workflow(prefix, workflow)
  local w = redis.call('HMGET', wkey, 'state', 'halted', 'order', 'tenant', 'idempotency_key')
  if not w[1] or w[2] == 'cancelled' then
    return
  end
  local order = wf_list(w[3])
  if w[1] ~= 'running' then
    redis.call('HSET', wkey, 'state', 'running', 'finished_at', '')
    redis.call('PERSIST', wkey)
    redis.call('PERSIST', key_workflow_messages(prefix, workflow))
    redis.call('PERSIST', key_workflow_events(prefix, workflow))
    if w[5] and w[5] ~= '' then
      redis.call('PERSIST', key_workflow_idempotency(prefix, w[4] or '', w[5]))
    end
    for _, step in ipairs(order) do
      redis.call('PERSIST', key_job(prefix, step))
      redis.call('PERSIST', key_events(prefix, step))
    end
  end
  redis.call('HINCRBY', wkey, 'done', -1)
  local failed = redis.call('HINCRBY', wkey, state == 'failed' and 'failed' or 'cancelled', -1)
  if state ~= 'failed' then
    failed = tonumber(redis.call('HGET', wkey, 'failed') or '0')
  end
  -- A fail-fast workflow with another failure still standing stays halted: what it would
  -- revive could only end in a failed workflow.
  if failed > 0 and redis.call('HGET', wkey, 'policy') == 'fail_fast' then
    return
  end
  redis.call('HSET', wkey, 'halted', '')
  for _, step in ipairs(order) do
    local key = key_job(prefix, step)
    local record = redis.call('HMGET', key, 'state', 'skipped', 'parents')
    if record[1] == 'cancelled' and record[2] == '1' then
      local blocked, waiting_on = false, 0
      for _, parent in ipairs(wf_list(record[3])) do
        local parent_state = redis.call('HGET', key_job(prefix, parent), 'state')
        if parent_state == 'failed' or parent_state == 'cancelled' then
          blocked = true
        elseif parent_state ~= 'succeeded' then
          waiting_on = waiting_on + 1
        end
      end
      if not blocked then
        redis.call('HINCRBY', wkey, 'done', -1)
        redis.call('HINCRBY', wkey, 'cancelled', -1)
        -- Its kept message is of generation 0: every later copy of it was consumed.
        redis.call('HSET', key, 'state', 'waiting', 'skipped', '', 'error', '',
                   'finished_at', '', 'waiting_on', waiting_on, 'generation', '0',
                   'fence', '', 'owner', '')
        move_state_index(prefix, step, 'cancelled', 'waiting')
        emit(prefix, step, 'waiting', 'state')
        if waiting_on == 0 then
          wf_release(prefix, workflow, step)
        end
      end
    end
  end
end

-- Whether `workflow` (a step's field; '' for none) was cancelled.
local function wf_cancelled(prefix, workflow)
  if not workflow or workflow == '' then
    return false
  end
  return redis.call('HGET', key_workflow(prefix, workflow), 'halted') == 'cancelled'
end
