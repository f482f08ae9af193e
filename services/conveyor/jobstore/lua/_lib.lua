-- Shared helpers, prepended to every job script after the generated key functions
-- (Redis scripts cannot import each other). Key names come only from those key_* functions
-- (conveyor.jobstore.keys), with the prefix passed as ARGV[1]: Conveyor needs a standalone
-- Redis (not Cluster), as Celery's Redis transport does.

-- Redis' clock, read once per script call: a script runs atomically, at one instant, and
-- each TIME is a command of its own.
local clock = {}
local function redis_time()
  if not clock[1] then
    local t = redis.call('TIME')
    clock[1], clock[2] = t[1], t[2]
  end
  return clock
end

-- Move `id` from one state index to another, keeping its creation-time score, and keep the
-- job's queue's running set in step with its state.
local function move_state_index(prefix, id, old_state, new_state)
  if old_state == new_state then
    return
  end
  if old_state == 'running' or new_state == 'running' then
    local queue = redis.call('HGET', key_job(prefix, id), 'queue')
    if queue then
      if new_state == 'running' then
        redis.call('ZADD', key_running(prefix, queue), redis_time()[1], id)
      else
        redis.call('ZREM', key_running(prefix, queue), id)
      end
    end
  end
  local score = redis.call('ZSCORE', key_index_all(prefix), id)
  if not score then
    return
  end
  redis.call('ZREM', key_index_state(prefix, old_state), id)
  redis.call('ZADD', key_index_state(prefix, new_state), score, id)
end

-- Whether `state` is one of the states listed as '|a|b|' (from conveyor.jobstore.machine).
local function allows(listed, state)
  return string.find(listed, '|' .. state .. '|', 1, true) ~= nil
end

-- Redis' own clock in ms, so every API replica's buckets agree on the time.
local function now_ms()
  local t = redis_time()
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket refilled at `rate` tokens per second up to `burst` (a rate of 0 means no
-- limit): its tokens now and Redis' time in ms (bucket_read), taken from (bucket_take),
-- written back (bucket_write); a call that takes for many jobs reads and writes it once.
local function bucket_read(key, rate, burst)
  local now = now_ms()
  if rate <= 0 then
    return burst, now
  end
  -- One string, '<tokens> <ms>': a GET and a SET instead of a hash's three commands.
  local saved = redis.call('GET', key)
  local tokens, at = burst, now
  if saved then
    local space = string.find(saved, ' ', 1, true)
    tokens = tonumber(string.sub(saved, 1, space - 1)) or burst
    at = tonumber(string.sub(saved, space + 1)) or now
  end
  return math.min(burst, tokens + math.max(0, now - at) * rate / 1000), now
end

-- Takes `cost` tokens of `tokens` if there are as many (a workflow takes one per step).
-- Returns the tokens now, taken (1/0), whole tokens left, and ms until there are enough.
local function bucket_take(tokens, rate, burst, cost)
  if rate <= 0 then
    return tokens, 1, burst, 0
  end
  if tokens >= cost then
    return tokens - cost, 1, math.floor(tokens - cost), 0
  end
  return tokens, 0, math.floor(tokens), math.ceil((cost - tokens) * 1000 / rate)
end

local function bucket_write(key, rate, burst, tokens, now)
  if rate > 0 then
    -- A full bucket is the same as no bucket: let idle tenants' keys go.
    redis.call('SET', key, tostring(tokens) .. ' ' .. tostring(now), 'PX',
               math.ceil(burst * 1000 / rate) + 1000)
  end
end

local function take_tokens(key, rate, burst, cost)
  local tokens, now = bucket_read(key, rate, burst)
  local left_tokens, taken, left, wait = bucket_take(tokens, rate, burst, cost)
  bucket_write(key, rate, burst, left_tokens, now)
  return taken, left, wait
end

local function take_token(bucket, rate, burst)
  return take_tokens(bucket, rate, burst, 1)
end

-- Each job's changes (state, progress) as a Redis stream, read by GET /v1/jobs/{id}/events.
-- Its entries' ids are the SSE event ids, so a client resumes with Last-Event-ID. It lives as
-- long as the job record: no expiry until the job finishes, then the same retention.
-- `kind` is 'state' for a change of state, 'progress' for a progress report.
-- A workflow step's changes also go to its workflow's stream, named by step and job.
local function emit(prefix, id, state, kind)
  local record = redis.call('HMGET', key_job(prefix, id), 'progress', 'attempts', 'workflow',
                            'step')
  redis.call('XADD', key_events(prefix, id), 'MAXLEN', '~', 1000, '*', 'kind', kind,
             'state', state, 'progress', record[1] or '', 'attempts', record[2] or '0')
  if record[3] and record[3] ~= '' then
    redis.call('XADD', key_workflow_events(prefix, record[3]), 'MAXLEN', '~', 10000, '*',
               'kind', kind, 'step', record[4] or '', 'job', id, 'state', state,
               'progress', record[1] or '', 'attempts', record[2] or '0')
  end
end

-- Expire a finished job's record, its event stream and its idempotency key together.
-- A step of a workflow that has not finished keeps its record (its children read its result,
-- a resumed workflow its state): the workflow's end expires them all (_workflow.lua).
local function expire_job(prefix, id, seconds)
  local key = key_job(prefix, id)
  local workflow = redis.call('HGET', key, 'workflow')
  if workflow and workflow ~= ''
      and redis.call('HGET', key_workflow(prefix, workflow), 'state') == 'running' then
    return
  end
  redis.call('EXPIRE', key, seconds)
  redis.call('EXPIRE', key_events(prefix, id), seconds)
  -- The idempotency key lives as long as its job: from acceptance until the record expires.
  local idem = redis.call('HMGET', key, 'idempotency_key', 'tenant', 'unique_key', 'task',
                         'unique_mode')
  if idem[1] and idem[1] ~= '' then
    redis.call('EXPIRE', key_idempotency(prefix, idem[2] or '', idem[1]), seconds)
  end
  -- So do the keys of submissions its uniqueness answered (accept.lua).
  local answered = key_answered(prefix, id)
  for _, other in ipairs(redis.call('SMEMBERS', answered)) do
    redis.call('EXPIRE', key_idempotency(prefix, idem[2] or '', other), seconds)
  end
  redis.call('EXPIRE', answered, seconds)
  -- A uniqueness lock this job still holds goes with it (one another job took is left alone;
  -- a `ttl` lock keeps its own time).
  if idem[3] and idem[3] ~= '' and idem[5] ~= 'ttl' then
    local lock = key_unique(prefix, idem[2] or '', idem[4] or '', idem[3])
    if redis.call('GET', lock) == id then
      redis.call('EXPIRE', lock, seconds)
    end
  end
end

-- A tenant's usage its quotas are checked against (accept.lua): `field` (messages waiting on
-- a tier, or delayed) moves by `count`, its bytes by `bytes`; a field back at zero is dropped.
local function quota_add(prefix, tenant, field, count, bytes)
  local key = key_quota(prefix, tenant)
  if redis.call('HINCRBY', key, field, count) <= 0 then
    redis.call('HDEL', key, field)
  end
  if redis.call('HINCRBY', key, 'bytes', bytes) <= 0 then
    redis.call('HDEL', key, 'bytes')
  end
end

-- Fair share within a tier (conveyor.jobstore.fairq, docs/flow-control.md): ready messages
-- (a table of them in order, or one; `bytes`: their total size) go onto their tenant's list on the tier; the tenant
-- joins the tier's rotation at the tier's virtual clock unless it is in it; and a ready token
-- per message, the time it became ready, goes onto the tier's list, which consumers block on
-- (claim.lua then picks the message).
-- `front` puts a message (and its token) where they are taken next: a restored delivery.
-- `counted`: the messages enter the tenant's waiting usage (all but a gate's reopening; a
-- claim takes it out).
local function fair_push_many(prefix, queue, tenant, messages, bytes, ready, front, counted)
  local n = type(messages) == 'table' and #messages or 1
  if counted then
    quota_add(prefix, tenant, name_quota_queued(queue), n, bytes)
  end
  local push = front and 'RPUSH' or 'LPUSH'
  local jobs, queued = key_fair_jobs(prefix, queue, tenant), key_queue(prefix, queue)
  if n == 1 then  -- one message: no tables to make
    redis.call(push, jobs, type(messages) == 'table' and messages[1] or messages)
  else
    redis.call(push, jobs, unpack(messages))
  end
  local clock = redis.call('GET', key_fair_clock(prefix, queue)) or '0'
  redis.call('ZADD', key_fair_tenants(prefix, queue), 'NX', clock, tenant)
  if n == 1 then
    redis.call(push, queued, ready)
  else
    local tokens = {}
    for i = 1, n do
      tokens[i] = ready
    end
    redis.call(push, queued, unpack(tokens))
  end
end

local function fair_push(prefix, queue, tenant, message, ready, front, counted)
  fair_push_many(prefix, queue, tenant, message, #message, ready, front, counted)
end

-- Redis' clock in seconds, as a ready token's value.
local function now_token()
  local t = redis_time()
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- How many more of a tenant's jobs may start on a tier now: 0 when paused or at its
-- concurrency limit (its own from the keys file, else `default_limit`; 0 = none), else what
-- its limit leaves (math.huge without one).
local function tenant_room(prefix, queue, tenant, default_limit)
  if redis.call('SISMEMBER', key_paused(prefix), name_paused_member('tenant', tenant)) == 1 then
    return 0
  end
  local limit = tonumber(redis.call('HGET', key_fair_limits(prefix), tenant)) or default_limit
  if limit <= 0 then
    return math.huge
  end
  local running = tonumber(redis.call('HGET', key_fair_active(prefix, queue), tenant)) or 0
  return math.max(0, limit - running)
end

-- Whether a tenant is held off a tier: paused, or at its concurrency limit there.
local function tenant_held(prefix, queue, tenant, default_limit)
  return tenant_room(prefix, queue, tenant, default_limit) == 0
end

-- Unless it is still held, put a tenant back in the tier's rotation (if held off it) and move
-- parked tokens back to the tier's list: up to `tokens`, no more than it has messages waiting
-- nor than its limit lets start now. Its tokens may have been parked while it was held; a
-- token moved back that finds nothing to claim is parked again, but one too few would leave a
-- message waiting for ever.
local function unhold(prefix, queue, tenant, default_limit, tokens)
  local room = tenant_room(prefix, queue, tenant, default_limit)
  if room == 0 then
    return 0
  end
  redis.call('ZREM', key_fair_held(prefix, queue), tenant)
  local waiting = redis.call('LLEN', key_fair_jobs(prefix, queue, tenant))
  if waiting == 0 then
    return 0
  end
  local clock = redis.call('GET', key_fair_clock(prefix, queue)) or '0'
  redis.call('ZADD', key_fair_tenants(prefix, queue), 'NX', clock, tenant)
  local moved, most = 0, math.min(tokens, waiting, room)
  local parked, list = key_fair_parked(prefix, queue), key_queue(prefix, queue)
  while moved < most and redis.call('LMOVE', parked, list, 'RIGHT', 'RIGHT') do
    moved = moved + 1
  end
  return moved
end

-- Move up to `count` messages waiting at a gate, oldest first, back to their tenants' lists,
-- each where its tenant's next claim takes it (so pushed newest first), with a new token.
-- Returns how many moved.
local function reopen_gate(prefix, gate, count, default_limit)
  local waiting = key_gate_waiting(prefix, gate)
  local entries, runnable = {}, 0
  while runnable < count do
    local entry = redis.call('RPOP', waiting)
    if not entry then
      break
    end
    entries[#entries + 1] = entry
    -- A message of a held tenant or paused tier leaves the gate (its tenant's list keeps it)
    -- without taking the slot: the next waiter gets it.
    local first = string.find(entry, '\n', 1, true)
    local second = string.find(entry, '\n', first + 1, true)
    local queue, tenant = string.sub(entry, 1, first - 1), string.sub(entry, first + 1, second - 1)
    if redis.call('SISMEMBER', key_paused(prefix), name_paused_member('tier', queue)) == 0
        and tenant_room(prefix, queue, tenant, default_limit) > 0 then
      runnable = runnable + 1
    end
  end
  for i = #entries, 1, -1 do
    local entry = entries[i]
    local first = string.find(entry, '\n', 1, true)
    local second = string.find(entry, '\n', first + 1, true)
    local queue, tenant = string.sub(entry, 1, first - 1), string.sub(entry, first + 1, second - 1)
    fair_push(prefix, queue, tenant, string.sub(entry, second + 1), now_token(), true, false)
  end
  return #entries
end

-- The weight and concurrency limit a tenant's next claims are served with (the keys file's,
-- as the accepting API replica read it: weight '1' and limit '' are the defaults, kept as no
-- entry; a no-op HDEL writes nothing).
local function remember_tenant(prefix, tenant, weight, limit)
  if weight ~= '1' then
    redis.call('HSET', key_fair_weights(prefix), tenant, weight)
  else
    redis.call('HDEL', key_fair_weights(prefix), tenant)
  end
  if limit ~= '' then
    redis.call('HSET', key_fair_limits(prefix), tenant, limit)
  else
    redis.call('HDEL', key_fair_limits(prefix), tenant)
  end
end

-- Runs that ended (or will retry) in the current minute of Redis' clock, for the console's
-- throughput (keys.py: stats): `<tier>/<outcome>` and `tenant/<tenant>/<outcome>` counts,
-- kept an hour.
local function count_outcome(prefix, key, outcome)
  local stats = key_stats(prefix, tostring(math.floor(now_ms() / 60000)))
  local fields = redis.call('HMGET', key, 'queue', 'tenant')
  redis.call('HINCRBY', stats, (fields[1] or '') .. '/' .. outcome, 1)
  redis.call('HINCRBY', stats, 'tenant/' .. (fields[2] or '') .. '/' .. outcome, 1)
  redis.call('EXPIRE', stats, 3900)
end
