-- Accept a job: record, indexes, idempotency key and the queue message in one atomic step, so
-- a client can never be told "accepted" for a job that is not queued, nor a message exist with
-- no record.
--
-- ARGV: 1 prefix, 2 job id, 3 idempotency key ('' for none), 4 request hash, 5 retention seconds,
--       6 creation score (ms), 7 due time (ms; '0' = run now), 8 queue, 9 task, 10 state,
--       11 Celery message, 12.. record field/value pairs.
-- Returns {1, job id} when created, {0, "<job id>\n<request hash>"} for a known idempotency key.
local prefix, id, idem, request_hash = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retention, score, due = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local queue, task, state, message = ARGV[8], ARGV[9], ARGV[10], ARGV[11]

local idem_key = prefix .. ':idem:' .. idem
if idem ~= '' then
  local existing = redis.call('GET', idem_key)
  if existing then
    return {0, existing}
  end
end

local key = job_key(prefix, id)
redis.call('HSET', key, unpack(ARGV, 12))
redis.call('ZADD', prefix .. ':index:all', score, id)
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
  redis.call('SET', idem_key, id .. '\n' .. request_hash)
end
return {1, id}
