-- Accept a workflow: its record, every step's job record and kept message, and the root
-- steps' messages on their queues, in one atomic step: a workflow is accepted whole or not
-- at all. The tenant's bucket gives one token per step; the queues' depth limits and the
-- tenant's quotas are checked for the steps queued now (and its bytes quota for every
-- step's message, all kept from now on).
--
-- ARGV: 1 prefix, 2 the workflow's record as a JSON object of strings, 3 request hash,
--       4 creation score (ms), 5 rate (tokens/s; '0' = unlimited), 6 burst, 7 each tier's
--       depth limit as a JSON object ('0' = none), 8 the tenant's fair-share weight,
--       9 its own concurrency limit per tier ('' = the deployment's), 10 its quota of
--       messages waiting per tier, 11 of bytes ('0' = none), 12.. per step: its record as a
--       JSON object of strings (state 'queued' for a root, 'waiting' otherwise), its message.
-- Returns {1, workflow id, tokens left} when created, {0, "<workflow id>\n<request hash>"}
-- for a known idempotency key, {2, ms until enough tokens, 1 when the burst is smaller than
-- the workflow} when rate limited, {3, tier, depth} when a tier is full, {4, quota, value}
-- when the tenant's own quota ('queued' or 'bytes') would be exceeded.
local prefix, workflow = ARGV[1], cjson.decode(ARGV[2])
local request_hash, score = ARGV[3], ARGV[4]
local rate, burst = tonumber(ARGV[5]), tonumber(ARGV[6])
local id, tenant, idem = workflow['id'], workflow['tenant'], workflow['idempotency_key']
local steps = (#ARGV - 11) / 2

local taken, left, wait = take_tokens(key_rate_limit(prefix, tenant), rate, burst, steps)
if taken == 0 then
  return {2, wait, steps > burst and 1 or 0}
end

-- The same call sent again (a resent script): the workflow id is the caller's.
if redis.call('EXISTS', key_workflow(prefix, id)) == 1 then
  return {1, id, left}
end
local ikey = key_workflow_idempotency(prefix, tenant, idem)
if idem ~= '' then
  local existing = redis.call('GET', ikey)
  if existing then
    return {0, existing}
  end
end

-- What the roots add to each tier, and the bytes every step keeps.
local records, roots, bytes = {}, {}, 0
for i = 12, #ARGV, 2 do
  local record = cjson.decode(ARGV[i])
  records[#records + 1] = record
  bytes = bytes + #ARGV[i + 1]
  if record['state'] == 'queued' then
    roots[record['queue']] = (roots[record['queue']] or 0) + 1
  end
end
local depths = cjson.decode(ARGV[7])
local usage_key = key_quota(prefix, tenant)
local max_queued, max_bytes = tonumber(ARGV[10]), tonumber(ARGV[11])
for queue, count in pairs(roots) do
  local max_depth = tonumber(depths[queue] or 0) or 0
  if max_depth > 0 then
    local depth = redis.call('LLEN', key_queue(prefix, queue))
                  + redis.call('LLEN', key_fair_parked(prefix, queue))
    if depth + count > max_depth then
      return {3, queue, depth}
    end
  end
  local queued = tonumber(redis.call('HGET', usage_key, name_quota_queued(queue))) or 0
  if max_queued > 0 and queued + count > max_queued then
    return {4, 'queued', max_queued}
  end
end
if max_bytes > 0 and (tonumber(redis.call('HGET', usage_key, 'bytes')) or 0) + bytes > max_bytes then
  return {4, 'bytes', max_bytes}
end

local wkey = key_workflow(prefix, id)
local flat = {}
for field, value in pairs(workflow) do
  flat[#flat + 1] = field
  flat[#flat + 1] = value
end
redis.call('HSET', wkey, unpack(flat))
redis.call('HSET', wkey, 'state', 'running', 'halted', '', 'steps', steps, 'done', 0,
           'succeeded', 0, 'failed', 0, 'cancelled', 0)
redis.call('ZADD', key_workflow_index_all(prefix), score, id)
redis.call('ZADD', key_workflow_index_tenant(prefix, tenant), score, id)
local messages = key_workflow_messages(prefix, id)
for n, record in ipairs(records) do
  local job, task, queue, state = record['id'], record['task'], record['queue'], record['state']
  local message = ARGV[11 + 2 * n]
  local fields = {}
  for field, value in pairs(record) do
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  end
  redis.call('HSET', key_job(prefix, job), unpack(fields))
  redis.call('ZADD', key_index_all(prefix), score, job)
  redis.call('ZADD', key_index_tenant(prefix, tenant), score, job)
  redis.call('ZADD', key_index_state(prefix, state), score, job)
  redis.call('ZADD', key_index_task(prefix, task), score, job)
  redis.call('ZADD', key_index_queue(prefix, queue), score, job)
  redis.call('HSET', messages, job, message)
  if state == 'queued' then
    fair_push(prefix, queue, tenant, message, now_token(), false, true)
  end
end
remember_tenant(prefix, tenant, ARGV[8], ARGV[9])
if idem ~= '' then
  -- Kept until the workflow ends, then as long as its records.
  redis.call('SET', ikey, id .. '\n' .. request_hash)
end
return {1, id, left}
