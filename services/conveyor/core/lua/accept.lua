-- Accept a job: record, indexes, idempotency key and the queue message in one atomic step, so
-- a client can never be told "accepted" for a job that is not queued, nor a message exist with
-- no record. The tenant's rate limit and the queue's depth limit are checked in the same step:
-- one round trip per submission, whatever the limits.
--
-- ARGV: 1 prefix, 2 job id, 3 idempotency key ('' for none), 4 request hash, 5 retention seconds,
--       6 creation score (ms), 7 due time (ms; '0' = run now), 8 queue, 9 task, 10 state,
--       11 Celery message, 12 tenant, 13 rate (tokens/s; '0' = unlimited), 14 burst,
--       15 max queue depth ('0' = unlimited), 16 max delayed jobs ('0' = unlimited),
--       17 the record's fields as a JSON object of strings (one argument, not forty: packing
--       arguments was a fifth of the API's CPU per submission).
-- Returns {1, job id, tokens left} when created, {0, "<job id>\n<request hash>"} for a known
-- idempotency key, {2, ms until a token} when rate limited, {3, depth} when the queue (or the
-- delayed set) is full.
local prefix, id, idem, request_hash = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local score, due = ARGV[6], tonumber(ARGV[7])
local queue, task, state, message = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local tenant, rate, burst = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local max_depth, max_delayed = tonumber(ARGV[15]), tonumber(ARGV[16])

-- Every request takes a token, replays included.
local taken, left, wait = take_token(prefix .. ':ratelimit:' .. tenant, rate, burst)
if taken == 0 then
  return {2, wait}
end

-- A replay of an accepted request answers with its job even when the queue is full: a client
-- retrying after a lost response must learn that its job exists.
local ikey = idem_key(prefix, tenant, idem)
if idem ~= '' then
  local existing = redis.call('GET', ikey)
  if existing then
    return {0, existing}
  end
end

if due > 0 then
  if max_delayed > 0 then
    local depth = redis.call('ZCARD', prefix .. ':delayed')
    if depth >= max_delayed then
      return {3, depth}
    end
  end
elseif max_depth > 0 then
  local depth = redis.call('LLEN', queue)
  if depth >= max_depth then
    return {3, depth}
  end
end

local key = job_key(prefix, id)
local flat = {}
for field, value in pairs(cjson.decode(ARGV[17])) do
  flat[#flat + 1] = field
  flat[#flat + 1] = value
end
redis.call('HSET', key, unpack(flat))
redis.call('ZADD', prefix .. ':index:all', score, id)
redis.call('ZADD', prefix .. ':index:tenant:' .. tenant, score, id)
redis.call('ZADD', state_index(prefix, state), score, id)
redis.call('ZADD', prefix .. ':index:task:' .. task, score, id)
redis.call('ZADD', prefix .. ':index:queue:' .. queue, score, id)
if due > 0 then
  redis.call('ZADD', prefix .. ':delayed', due, id)
  redis.call('HSET', prefix .. ':delayed:messages', id, message)
else
  redis.call('LPUSH', queue, message)
end
if idem ~= '' then
  -- No expiry yet: the key must outlive a long delay or backlog. It expires with the record,
  -- a retention period after the job finishes (transition.lua).
  redis.call('SET', ikey, id .. '\n' .. request_hash)
end
return {1, id, left}
