-- Shared helpers, prepended to every Conveyor script (Redis scripts cannot import each other).
-- Keys are built here from the prefix passed as ARGV[1]: Conveyor needs a standalone Redis
-- (not Cluster), as Celery's Redis transport does.

local function job_key(prefix, id)
  return prefix .. ':job:' .. id
end

local function state_index(prefix, state)
  return prefix .. ':index:state:' .. state
end

-- A queue's running jobs (ids), so a tier's demand is O(1) to read (ZCARD) for autoscaling.
local function running_set(prefix, queue)
  return prefix .. ':running:' .. queue
end

-- Move `id` from one state index to another, keeping its creation-time score, and keep the
-- job's queue's running set in step with its state.
local function move_state_index(prefix, id, old_state, new_state)
  if old_state == new_state then
    return
  end
  if old_state == 'running' or new_state == 'running' then
    local queue = redis.call('HGET', job_key(prefix, id), 'queue')
    if queue then
      if new_state == 'running' then
        redis.call('ZADD', running_set(prefix, queue), redis.call('TIME')[1], id)
      else
        redis.call('ZREM', running_set(prefix, queue), id)
      end
    end
  end
  local score = redis.call('ZSCORE', prefix .. ':index:all', id)
  if not score then
    return
  end
  redis.call('ZREM', state_index(prefix, old_state), id)
  redis.call('ZADD', state_index(prefix, new_state), score, id)
end

-- Idempotency keys are per tenant: two tenants may use the same key without meeting.
local function idem_key(prefix, tenant, idem)
  return prefix .. ':idem:' .. tenant .. ':' .. idem
end

-- Redis' own clock in ms, so every API replica's buckets agree on the time.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket refilled at `rate` tokens per second up to `burst`; takes one token if there
-- is one. Returns taken (1/0), whole tokens left, and ms until the next token.
-- A rate of 0 means no limit.
local function take_token(bucket, rate, burst)
  if rate <= 0 then
    return 1, burst, 0
  end
  local now = now_ms()
  local saved = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = tonumber(saved[1]) or burst
  local at = tonumber(saved[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  local taken = 0
  if tokens >= 1 then
    tokens = tokens - 1
    taken = 1
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'at', tostring(now))
  -- A full bucket is the same as no bucket: let idle tenants' keys go.
  redis.call('PEXPIRE', bucket, math.ceil(burst * 1000 / rate) + 1000)
  local wait = 0
  if tokens < 1 then
    wait = math.ceil((1 - tokens) * 1000 / rate)
  end
  return taken, math.floor(tokens), wait
end

-- Each job's changes (state, progress) as a Redis stream, read by GET /v1/jobs/{id}/events.
-- Its entries' ids are the SSE event ids, so a client resumes with Last-Event-ID. It lives as
-- long as the job record: no expiry until the job finishes, then the same retention.
local function events_key(prefix, id)
  return prefix .. ':events:' .. id
end

-- `kind` is 'state' for a change of state, 'progress' for a progress report.
local function emit(prefix, id, state, kind)
  local record = redis.call('HMGET', job_key(prefix, id), 'progress', 'attempts')
  redis.call('XADD', events_key(prefix, id), 'MAXLEN', '~', 1000, '*', 'kind', kind,
             'state', state, 'progress', record[1] or '', 'attempts', record[2] or '0')
end
