-- Accept a job: record, indexes, idempotency key and the queue message in one atomic step, so
-- a client can never be told "accepted" for a job that is not queued, nor a message exist with
-- no record. The tenant's rate limit and the queue's depth limit are checked in the same step:
-- one round trip per submission, whatever the limits.
--
-- ARGV: 1 prefix, 2 the record's fields as a JSON object of strings (one argument, not forty:
--       packing arguments was a fifth of the API's CPU per submission; tenant, task, queue
--       and state are read from it), 3 request hash, 4 creation score (ms), 5 delay (ms;
--       '0' = run now; the due time is Redis' clock plus the delay, never a caller's clock), 6 Celery message, 7 rate (tokens/s; '0' = unlimited), 8 burst,
--       9 max queue depth ('0' = unlimited), 10 max delayed jobs ('0' = unlimited),
--       11 the tenant's fair-share weight ('1' unless its key names another), 12 its own
--       concurrency limit per tier ('' = the deployment's), 13 the tenant's quota of messages
--       waiting per tier, 14 of delayed messages, 15 of bytes of both ('0' = none).
-- The record's `unique_key` and `unique_mode` (queued, active, ttl, debounce) ask for
-- uniqueness: while a job of the same tenant, task and key is still queued (or scheduled),
-- active (not finished), or within `unique_ttl` seconds, that job is the answer, as for an
-- idempotent replay; debounce replaces a still-delayed job's arguments and pushes its due time
-- instead (see docs/flow-control.md).
-- Returns {1, job id, tokens left} when created, {0, "<job id>\n<request hash>"} for a known
-- idempotency key, {2, ms until a token} when rate limited, {3, depth} when the queue (or the
-- delayed set) is full, {4, quota, its value} when the tenant's own quota ('queued', 'delayed'
-- or 'bytes') would be exceeded.
local prefix, record = ARGV[1], cjson.decode(ARGV[2])
local request_hash, score, delay = ARGV[3], ARGV[4], tonumber(ARGV[5])
local message, rate, burst = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local max_depth, max_delayed = tonumber(ARGV[9]), tonumber(ARGV[10])
local id, tenant, idem = record['id'], record['tenant'], record['idempotency_key']
local queue, task, state = record['queue'], record['task'], record['state']

-- Every request takes a token, replays included.
local taken, left, wait = take_token(key_rate_limit(prefix, tenant), rate, burst)
if taken == 0 then
  return {2, wait}
end

-- The same call sent again (redis-py resends a script whose reply was lost): the job id is
-- made by the caller, so an existing record is this very job. Never a second message.
if redis.call('EXISTS', key_job(prefix, id)) == 1 then
  return {1, id, left}
end

-- A replay of an accepted request answers with its job even when the queue is full: a client
-- retrying after a lost response must learn that its job exists.
local ikey = key_idempotency(prefix, tenant, idem)
if idem ~= '' then
  local existing = redis.call('GET', ikey)
  if existing then
    return {0, existing}
  end
end

-- A submission the holder answers keeps that answer under its idempotency key (a retry
-- after a lost response must not make another job); the key goes with the holder's record.
local function answered_by(holder)
  if idem ~= '' then
    redis.call('SET', ikey, holder .. '\n' .. request_hash)
    local ttl = redis.call('TTL', key_job(prefix, holder))
    if ttl > 0 then
      redis.call('EXPIRE', ikey, ttl)
    else
      redis.call('SADD', key_answered(prefix, holder), idem)
    end
  end
end

-- Uniqueness: the lock's holder answers while it is in a state the mode covers.
local ukey, umode = record['unique_key'] or '', record['unique_mode'] or ''
local lock = ukey ~= '' and key_unique(prefix, tenant, task, ukey) or nil
if lock then
  local holder = redis.call('GET', lock)
  local held = holder and redis.call('HMGET', key_job(prefix, holder), 'state', 'created_at',
                                     'queue') or {}
  local held_state = held[1]
  if held_state then
    local ttl_end = ((tonumber(held[2]) or 0) + (tonumber(record['unique_ttl']) or 0)) * 1000
    local covered = (umode == 'ttl' and ttl_end > now_ms())
      or (umode == 'queued' and (held_state == 'queued' or held_state == 'scheduled'))
      or (umode == 'active' and allows(ARGV[16], held_state))
    if covered then
      answered_by(holder)
      return {0, holder .. '\n' .. request_hash}
    end
    local pending = redis.call('HGET', key_delayed_messages(prefix), holder)
    if umode == 'debounce' and held_state == 'scheduled' and pending then
      -- The holder takes this submission's arguments and due time; its message is this one,
      -- with the holder's id (ids are UUIDs: a plain replacement).
      local replaced = string.gsub(message, (string.gsub(id, '%-', '%%-')), holder)
      local max_bytes = tonumber(ARGV[15])
      local used = tonumber(redis.call('HGET', key_quota(prefix, tenant), 'bytes')) or 0
      if max_bytes > 0 and #replaced > #pending and used + #replaced - #pending > max_bytes then
        return {4, 'bytes', max_bytes}
      end
      local due_at = now_ms() + delay
      -- The record takes all the message carries, not only the arguments: the worker runs
      -- the message (tier, retries, time limit, concurrency key).
      redis.call('HSET', key_job(prefix, holder), 'args', record['args'], 'scheduled_for',
                 string.format('%.3f', due_at / 1000), 'queue', queue,
                 'max_retries', record['max_retries'], 'timeout_seconds', record['timeout_seconds'],
                 'callback_url', record['callback_url'],
                 'concurrency_key', record['concurrency_key'] or '')
      if held[3] ~= queue then
        local at = redis.call('ZSCORE', key_index_queue(prefix, held[3]), holder)
        redis.call('ZREM', key_index_queue(prefix, held[3]), holder)
        if at then
          redis.call('ZADD', key_index_queue(prefix, queue), at, holder)
        end
      end
      answered_by(holder)
      redis.call('ZADD', key_delayed(prefix), due_at, holder)
      redis.call('HSET', key_delayed_messages(prefix), holder, replaced)
      quota_add(prefix, tenant, 'delayed', 0, #replaced - #pending)
      emit(prefix, holder, 'scheduled', 'progress')
      return {0, holder .. '\n' .. request_hash}
    end
  end
end

local due = 0
if delay > 0 then
  due = now_ms() + delay
  record['scheduled_for'] = string.format('%.3f', due / 1000)
  if max_delayed > 0 then
    local depth = redis.call('ZCARD', key_delayed(prefix))
    if depth >= max_delayed then
      return {3, depth}
    end
  end
elseif max_depth > 0 then
  -- Every message waiting on the tier: ready (a token in its list) or held back (parked).
  local depth = redis.call('LLEN', key_queue(prefix, queue))
                + redis.call('LLEN', key_fair_parked(prefix, queue))
  if depth >= max_depth then
    return {3, depth}
  end
end

-- The tenant's own quotas (its usage is kept by quota_add as messages come and go), read
-- only when it has one.
local max_queued, max_delayed_own, max_bytes = tonumber(ARGV[13]), tonumber(ARGV[14]),
                                               tonumber(ARGV[15])
local usage = {}
if max_queued > 0 or max_delayed_own > 0 or max_bytes > 0 then
  usage = redis.call('HMGET', key_quota(prefix, tenant), name_quota_queued(queue), 'delayed',
                     'bytes')
end
if delay > 0 then
  if max_delayed_own > 0 and (tonumber(usage[2]) or 0) >= max_delayed_own then
    return {4, 'delayed', max_delayed_own}
  end
elseif max_queued > 0 and (tonumber(usage[1]) or 0) >= max_queued then
  return {4, 'queued', max_queued}
end
if max_bytes > 0 and (tonumber(usage[3]) or 0) + #message > max_bytes then
  return {4, 'bytes', max_bytes}
end

local flat = {}
for field, value in pairs(record) do
  flat[#flat + 1] = field
  flat[#flat + 1] = value
end
redis.call('HSET', key_job(prefix, id), unpack(flat))
redis.call('ZADD', key_index_all(prefix), score, id)
redis.call('ZADD', key_index_tenant(prefix, tenant), score, id)
redis.call('ZADD', key_index_state(prefix, state), score, id)
redis.call('ZADD', key_index_task(prefix, task), score, id)
redis.call('ZADD', key_index_queue(prefix, queue), score, id)
if due > 0 then
  redis.call('ZADD', key_delayed(prefix), due, id)
  redis.call('HSET', key_delayed_messages(prefix), id, message)
  quota_add(prefix, tenant, 'delayed', 1, #message)
else
  fair_push(prefix, queue, tenant, message, now_token(), false, true)
end
remember_tenant(prefix, tenant, ARGV[11], ARGV[12])
if lock then
  if umode == 'ttl' then
    redis.call('SET', lock, id, 'EX', tonumber(record['unique_ttl']) or 1)
  else
    redis.call('SET', lock, id)  -- expires with the record (expire_job)
  end
end
if idem ~= '' then
  -- No expiry yet: the key must outlive a long delay or backlog. It expires with the record,
  -- a retention period after the job finishes (transition.lua).
  redis.call('SET', ikey, id .. '\n' .. request_hash)
end
return {1, id, left}
