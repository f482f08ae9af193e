-- Shared helpers, prepended to every job script after the generated key functions
-- (Redis scripts cannot import each other). Key names come only from those key_* functions
-- (conveyor.jobstore.keys), with the prefix passed as ARGV[1]: Conveyor needs a standalone
-- Redis (not Cluster), as Celery's Redis transport does.

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
        redis.call('ZADD', key_running(prefix, queue), redis.call('TIME')[1], id)
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
-- `kind` is 'state' for a change of state, 'progress' for a progress report.
local function emit(prefix, id, state, kind)
  local record = redis.call('HMGET', key_job(prefix, id), 'progress', 'attempts')
  redis.call('XADD', key_events(prefix, id), 'MAXLEN', '~', 1000, '*', 'kind', kind,
             'state', state, 'progress', record[1] or '', 'attempts', record[2] or '0')
end

-- Expire a finished job's record, its event stream and its idempotency key together.
local function expire_job(prefix, id, seconds)
  local key = key_job(prefix, id)
  redis.call('EXPIRE', key, seconds)
  redis.call('EXPIRE', key_events(prefix, id), seconds)
  -- The idempotency key lives as long as its job: from acceptance until the record expires.
  local idem = redis.call('HMGET', key, 'idempotency_key', 'tenant')
  if idem[1] and idem[1] ~= '' then
    redis.call('EXPIRE', key_idempotency(prefix, idem[2] or '', idem[1]), seconds)
  end
end
