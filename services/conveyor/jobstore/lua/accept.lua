-- Accept jobs: each job's record, indexes, idempotency key and queue message in one atomic
-- step, so a client can never be told "accepted" for a job that is not queued, nor a message
-- exist with no record. The tenant's rate limit and the queue's depth limit are checked in the
-- same step: one round trip per submission, whatever the limits. One call accepts one job or
-- several (a batch, bounded by the caller), each all-or-nothing on its own, in order, with the
-- answer it would have had alone.
--
-- ARGV: 1 prefix, 2 rate (tokens/s; '0' = unlimited), 3 burst, 4 max delayed jobs ('0' =
--       unlimited), 5 the tenant's fair-share weight ('1' unless its key names another), 6 its
--       own concurrency limit per tier ('' = the deployment's), 7 the tenant's quota of
--       messages waiting per tier, 8 of delayed messages, 9 of bytes of both ('0' = none),
--       10 the active states ('|a|b|', for unique mode 'active'); then 6 per job: the record's
--       fields as one JSON array of strings, field, value, field, value... (one argument, not
--       forty: packing arguments was a fifth of the API's CPU per submission; an array, not
--       an object, so that Redis writes it as it comes), starting with id, tenant, task,
--       queue and state in that order (conveyor.jobstore.model.RECORD_HEAD), request hash,
--       creation score (ms), delay (ms; '0' = run now; the due time is Redis' clock plus the
--       delay, never a caller's clock), Celery message, max queue depth of its tier ('0' =
--       unlimited).
-- The record's `unique_key` and `unique_mode` (queued, active, ttl, debounce) ask for
-- uniqueness: while a job of the same tenant, task and key is still queued (or scheduled),
-- active (not finished), or within `unique_ttl` seconds, that job is the answer, as for an
-- idempotent replay; debounce replaces a still-delayed job's arguments and pushes its due time
-- instead (see docs/flow-control.md).
-- Returns one reply per job, in order: {1, job id, tokens left} when created, {0, "<job
-- id>\n<request hash>"} for a known idempotency key, {2, ms until a token} when rate limited,
-- {3, depth} when the queue (or the delayed set) is full, {4, quota, its value} when the
-- tenant's own quota ('queued', 'delayed' or 'bytes') would be exceeded, {5, error} when Redis
-- refused one of its steps.
local prefix = ARGV[1]
local rate, burst, max_delayed = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local weight, concurrency = ARGV[5], ARGV[6]
local max_queued, max_delayed_own, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8]),
                                               tonumber(ARGV[9])
local active_states = ARGV[10]
local HEAD, EACH = 10, 6

-- The writes several jobs of a call share are gathered and made once, at the end (or before
-- a step that reads them): a bucket's GET and SET, one ZADD per index, one push per tenant's
-- list, one quota update per tenant, instead of each per job. What the checks read (queue
-- depths, the tenants' quota usage) is read once and kept up to date with what is gathered.
-- A call of one job writes at once, with helpers of a few upvalues each: Redis makes every
-- closure of a script anew on each call, and the gathering ones would cost one job more than
-- they save it.
local take, add_sorted, depth_of, delayed_depth, usage_of, enqueue, remember, keep, kept, flush
local broken
local many = #ARGV > HEAD + EACH
if not many then
  take = function(tenant)
    return take_token(key_rate_limit(prefix, tenant), rate, burst)
  end
  add_sorted = function(key, score, member)
    redis.call('ZADD', key, score, member)
  end
  -- Every message waiting on the tier: ready (a token in its list) or held back (parked).
  depth_of = function(queue)
    return redis.call('LLEN', key_queue(prefix, queue))
           + redis.call('LLEN', key_fair_parked(prefix, queue))
  end
  delayed_depth = function()
    return redis.call('ZCARD', key_delayed(prefix))
  end
  -- The tenant's usage its own quotas are checked against (kept by quota_add as messages
  -- come and go): {delayed, bytes, queued = {per tier}}.
  usage_of = function(tenant, queue)
    local read = redis.call('HMGET', key_quota(prefix, tenant), 'delayed', 'bytes',
                            name_quota_queued(queue))
    return {tonumber(read[1]) or 0, tonumber(read[2]) or 0,
            queued = {[queue] = tonumber(read[3]) or 0}}
  end
  -- The message of an accepted job: on its tier, or delayed until `due`.
  enqueue = function(id, tenant, queue, message, due)
    if due > 0 then
      redis.call('ZADD', key_delayed(prefix), due, id)
      redis.call('HSET', key_delayed_messages(prefix), id, message)
      quota_add(prefix, tenant, 'delayed', 1, #message)
    else
      fair_push(prefix, queue, tenant, message, now_token(), false, true)
    end
  end
  remember = function(tenant)
    remember_tenant(prefix, tenant, weight, concurrency)
  end
  -- A key that answers later submissions (idempotency, uniqueness lock), expiring after
  -- `seconds` when given.
  keep = function(key, value, seconds)
    if seconds then
      redis.call('SET', key, value, 'EX', seconds)
    else
      redis.call('SET', key, value)
    end
  end
  kept = function(key)
    return redis.call('GET', key)
  end
  flush = function() end
else
  local buckets, sorted, hashes, pushes, delayed_usage, tenants, depths, usages, keys

  local function gathered()
    buckets, sorted, hashes, pushes, delayed_usage, tenants = {}, {}, {}, {}, {}, {}
    depths, usages, keys = {}, {}, {}
  end
  gathered()

  -- The gathered writes, each made once: the tables are emptied before the first write, so a
  -- write Redis refuses part-way is never made a second time. The keys that answer later
  -- submissions go last: a call that fails in here leaves no idempotency key or lock naming
  -- a job it did not queue (a retry makes the job anew rather than finding one that will
  -- never run).
  local function write(b, so, h, p, d, t, k)
    for key, bucket in pairs(b) do
      bucket_write(key, rate, burst, bucket[1], bucket[2])
    end
    for key, members in pairs(so) do
      redis.call('ZADD', key, unpack(members))
    end
    for key, fields in pairs(h) do
      redis.call('HSET', key, unpack(fields))
    end
    for _, push in pairs(p) do
      fair_push_many(prefix, push.queue, push.tenant, push.messages, push.bytes, now_token(),
                     false, true)
    end
    for tenant, usage in pairs(d) do
      quota_add(prefix, tenant, 'delayed', usage[1], usage[2])
    end
    for tenant in pairs(t) do
      remember_tenant(prefix, tenant, weight, concurrency)
    end
    for key, entry in pairs(k) do
      if entry[2] then
        redis.call('SET', key, entry[1], 'EX', entry[2])
      else
        redis.call('SET', key, entry[1])
      end
    end
  end

  -- A flush that fails fails the whole call (`broken`, raised after the job that asked for
  -- it): the jobs before it were answered accepted, and some of their writes are not made.
  flush = function()
    local b, so, h, p, d, t, k = buckets, sorted, hashes, pushes, delayed_usage, tenants, keys
    gathered()
    local ok, err = pcall(write, b, so, h, p, d, t, k)
    if not ok then
      broken = err
      error(err)
    end
  end

  keep = function(key, value, seconds)
    keys[key] = {value, seconds}
  end
  kept = function(key)
    local entry = keys[key]
    return entry and entry[1] or redis.call('GET', key)
  end

  take = function(tenant)
    local key = key_rate_limit(prefix, tenant)
    local bucket = buckets[key]
    if not bucket then
      bucket = {bucket_read(key, rate, burst)}
      buckets[key] = bucket
    end
    local taken, left, wait
    bucket[1], taken, left, wait = bucket_take(bucket[1], rate, burst, 1)
    return taken, left, wait
  end

  add_sorted = function(key, score, member)
    local members = sorted[key] or {}
    sorted[key] = members
    members[#members + 1] = score
    members[#members + 1] = member
  end

  -- Messages gathered for a tier (of one tenant, or of all when `tenant` is nil): how many,
  -- and their bytes.
  local function gathered_pushes(queue, tenant)
    local n, bytes = 0, 0
    for _, push in pairs(pushes) do
      if (queue == nil or push.queue == queue) and (tenant == nil or push.tenant == tenant) then
        n, bytes = n + #push.messages, bytes + push.bytes
      end
    end
    return n, bytes
  end

  depth_of = function(queue)
    if not depths[queue] then
      depths[queue] = redis.call('LLEN', key_queue(prefix, queue))
                      + redis.call('LLEN', key_fair_parked(prefix, queue))
                      + gathered_pushes(queue, nil)
    end
    return depths[queue]
  end

  delayed_depth = function()
    if not depths['\n'] then
      local members = sorted[key_delayed(prefix)] or {}
      depths['\n'] = redis.call('ZCARD', key_delayed(prefix)) + #members / 2
    end
    return depths['\n']
  end

  usage_of = function(tenant, queue)
    local usage = usages[tenant]
    if not usage then
      local read = redis.call('HMGET', key_quota(prefix, tenant), 'delayed', 'bytes')
      local _, pushed = gathered_pushes(nil, tenant)
      local delayed = delayed_usage[tenant] or {0, 0}
      usage = {(tonumber(read[1]) or 0) + delayed[1],
               (tonumber(read[2]) or 0) + pushed + delayed[2], queued = {}}
      usages[tenant] = usage
    end
    if not usage.queued[queue] then
      local read = redis.call('HGET', key_quota(prefix, tenant), name_quota_queued(queue))
      usage.queued[queue] = (tonumber(read) or 0) + gathered_pushes(queue, tenant)
    end
    return usage
  end

  enqueue = function(id, tenant, queue, message, due)
    local usage = usages[tenant]
    if usage then
      usage[2] = usage[2] + #message
    end
    if due > 0 then
      add_sorted(key_delayed(prefix), due, id)
      local messages = hashes[key_delayed_messages(prefix)] or {}
      hashes[key_delayed_messages(prefix)] = messages
      messages[#messages + 1] = id
      messages[#messages + 1] = message
      local pending = delayed_usage[tenant] or {0, 0}
      delayed_usage[tenant] = {pending[1] + 1, pending[2] + #message}
      if usage then
        usage[1] = usage[1] + 1
      end
      if depths['\n'] then
        depths['\n'] = depths['\n'] + 1
      end
      return
    end
    local name = queue .. '\n' .. tenant
    local push = pushes[name] or {queue = queue, tenant = tenant, messages = {}, bytes = 0}
    pushes[name] = push
    push.messages[#push.messages + 1] = message
    push.bytes = push.bytes + #message
    if usage and usage.queued[queue] then
      usage.queued[queue] = usage.queued[queue] + 1
    end
    if depths[queue] then
      depths[queue] = depths[queue] + 1
    end
  end

  remember = function(tenant)
    tenants[tenant] = true
  end
end

-- The record's named fields past its head, as a table: only the rare paths (uniqueness)
-- need one.
local function named(flat)
  local record = {}
  for at = 11, #flat, 2 do
    record[flat[at]] = flat[at + 1]
  end
  return record
end

local function accept(record_json, request_hash, score, delay, message, max_depth)
  local flat = cjson.decode(record_json)
  delay, max_depth = tonumber(delay), tonumber(max_depth)
  -- A record not in that shape is this job's error, never another tenant's or task's keys.
  if flat[1] ~= 'id' or flat[3] ~= 'tenant' or flat[9] ~= 'state' then
    error('the record does not start with id, tenant, task, queue and state')
  end
  local id, tenant, task, queue, state = flat[2], flat[4], flat[6], flat[8], flat[10]
  -- The fields read by name, picked out of the tail in one pass.
  local idem, ukey = '', ''
  for at = 11, #flat, 2 do
    local field = flat[at]
    if field == 'idempotency_key' then
      idem = flat[at + 1]
    elseif field == 'unique_key' then
      ukey = flat[at + 1]
    end
  end

  -- Every request takes a token, replays included.
  local taken, left, wait = take(tenant)
  if taken == 0 then
    return {2, wait}
  end

  -- The same call sent again (redis-py resends a script whose reply was lost): the job id is
  -- made by the caller, so an existing record is this very job. Never a second message.
  if redis.call('EXISTS', key_job(prefix, id)) == 1 then
    return {1, id, left}
  end

  -- A replay of an accepted request answers with its job even when the queue is full: a
  -- client retrying after a lost response must learn that its job exists.
  local ikey = key_idempotency(prefix, tenant, idem)
  if idem ~= '' then
    local existing = kept(ikey)
    if existing then
      return {0, existing}
    end
  end

  -- Uniqueness: the lock's holder answers while it is in a state the mode covers. The
  -- holder may be a job of this call: what is gathered is written first.
  local lock = ukey ~= '' and key_unique(prefix, tenant, task, ukey) or nil
  local record, umode = nil, ''
  if lock then
    record = named(flat)
    umode = record['unique_mode'] or ''
    flush()
    -- A submission the holder answers keeps that answer under its idempotency key (a retry
    -- after a lost response must not make another job); the key goes with the holder's
    -- record.
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
    local holder = redis.call('GET', lock)
    local held = holder and redis.call('HMGET', key_job(prefix, holder), 'state', 'created_at',
                                       'queue') or {}
    local held_state = held[1]
    if held_state then
      local ttl_end = ((tonumber(held[2]) or 0) + (tonumber(record['unique_ttl']) or 0)) * 1000
      local covered = (umode == 'ttl' and ttl_end > now_ms())
        or (umode == 'queued' and (held_state == 'queued' or held_state == 'scheduled'))
        or (umode == 'active' and allows(active_states, held_state))
      if covered then
        answered_by(holder)
        return {0, holder .. '\n' .. request_hash}
      end
      local pending = redis.call('HGET', key_delayed_messages(prefix), holder)
      if umode == 'debounce' and held_state == 'scheduled' and pending then
        -- The holder takes this submission's arguments and due time; its message is this
        -- one, with the holder's id (ids are UUIDs: a plain replacement).
        local replaced = string.gsub(message, (string.gsub(id, '%-', '%%-')), holder)
        local used = tonumber(redis.call('HGET', key_quota(prefix, tenant), 'bytes')) or 0
        if max_bytes > 0 and #replaced > #pending and used + #replaced - #pending > max_bytes then
          return {4, 'bytes', max_bytes}
        end
        local due_at = now_ms() + delay
        -- The record takes all the message carries, not only the arguments: the worker runs
        -- the message (tier, retries, time limit, concurrency key).
        redis.call('HSET', key_job(prefix, holder), 'args', record['args'], 'scheduled_for',
                   string.format('%.3f', due_at / 1000), 'queue', queue,
                   'max_retries', record['max_retries'],
                   'timeout_seconds', record['timeout_seconds'] or '',
                   'callback_url', record['callback_url'] or '',
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
    flat[#flat + 1] = 'scheduled_for'
    flat[#flat + 1] = string.format('%.3f', due / 1000)
    local depth = max_delayed > 0 and delayed_depth() or 0
    if max_delayed > 0 and depth >= max_delayed then
      return {3, depth}
    end
  else
    local depth = max_depth > 0 and depth_of(queue) or 0
    if max_depth > 0 and depth >= max_depth then
      return {3, depth}
    end
  end

  -- The tenant's own quotas, read only when it has one.
  if max_queued > 0 or max_delayed_own > 0 or max_bytes > 0 then
    local usage = usage_of(tenant, queue)
    if delay > 0 then
      if max_delayed_own > 0 and usage[1] >= max_delayed_own then
        return {4, 'delayed', max_delayed_own}
      end
    elseif max_queued > 0 and usage.queued[queue] >= max_queued then
      return {4, 'queued', max_queued}
    end
    if max_bytes > 0 and usage[2] + #message > max_bytes then
      return {4, 'bytes', max_bytes}
    end
  end

  -- Accepted: the record and its keys now, the shared writes gathered.
  redis.call('HSET', key_job(prefix, id), unpack(flat))
  add_sorted(key_index_all(prefix), score, id)
  add_sorted(key_index_tenant(prefix, tenant), score, id)
  add_sorted(key_index_state(prefix, state), score, id)
  add_sorted(key_index_task(prefix, task), score, id)
  add_sorted(key_index_queue(prefix, queue), score, id)
  enqueue(id, tenant, queue, message, due)
  remember(tenant)
  if lock then
    -- A `ttl` lock keeps its own time; the others expire with the record (expire_job).
    keep(lock, id, umode == 'ttl' and (tonumber(record['unique_ttl']) or 1) or nil)
  end
  if idem ~= '' then
    -- No expiry yet: the key must outlive a long delay or backlog. It expires with the
    -- record, a retention period after the job finishes (transition.lua).
    keep(ikey, id .. '\n' .. request_hash)
  end
  return {1, id, left}
end

-- A job whose step Redis refused (a key of the wrong type) is answered {5, the error}: it
-- stands for itself, and the call's other jobs keep their answers.
local replies = {}
for at = HEAD + 1, #ARGV, EACH do
  local ok, reply = pcall(accept, ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3],
                          ARGV[at + 4], ARGV[at + 5])
  if broken then
    error(broken)
  end
  if not ok then
    reply = {5, type(reply) == 'table' and reply.err or tostring(reply)}
  end
  replies[#replies + 1] = reply
end
flush()
return replies
