-- Move a job to a new state if it is in one of the allowed states, atomically with its
-- fields, state index, expiry and delayed-message bookkeeping.
--
-- ARGV: 1 prefix, 2 job id, 3 allowed states as '|a|b|', 4 new state, 5 expire after seconds
--       ('0' = keep), 6 '1' to count an attempt, 7 message op: '', 'add' (to the delayed set,
--       due at ARGV 8 ms), 'drop' (from the delayed set) or 'dead' (into the dead-letter set,
--       at ARGV 8 ms), 9 message for 'add' and 'dead', 10.. field/value pairs to set.
-- Returns {1, previous state, attempts, callback url or ''} on success, {0, current state or '',
-- attempts} if refused.
local prefix, id, allowed, new_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expire, count_attempt, delayed_op = tonumber(ARGV[5]), ARGV[6], ARGV[7]

local key = job_key(prefix, id)
local current = redis.call('HMGET', key, 'state', 'attempts')
local state, attempts = current[1], tonumber(current[2] or '0')
if not state then
  return {0, '', 0}
end
if not string.find(allowed, '|' .. state .. '|', 1, true) then
  return {0, state, attempts}
end

if #ARGV >= 10 then
  redis.call('HSET', key, unpack(ARGV, 10))
end
redis.call('HSET', key, 'state', new_state)
if count_attempt == '1' then
  attempts = redis.call('HINCRBY', key, 'attempts', 1)
end
move_state_index(prefix, id, state, new_state)
emit(prefix, id, new_state, state == new_state and 'progress' or 'state')

if delayed_op == 'add' then
  redis.call('ZADD', prefix .. ':delayed', ARGV[8], id)
  redis.call('HSET', prefix .. ':delayed:messages', id, ARGV[9])
elseif delayed_op == 'drop' then
  redis.call('ZREM', prefix .. ':delayed', id)
  redis.call('HDEL', prefix .. ':delayed:messages', id)
elseif delayed_op == 'dead' then
  redis.call('ZADD', prefix .. ':dead', ARGV[8], id)
  redis.call('HSET', prefix .. ':dead:messages', id, ARGV[9])
end
if expire > 0 then
  redis.call('EXPIRE', key, expire)
  redis.call('EXPIRE', events_key(prefix, id), expire)
  -- The idempotency key lives as long as its job: from acceptance until the record expires.
  local idem = redis.call('HMGET', key, 'idempotency_key', 'tenant')
  if idem[1] and idem[1] ~= '' then
    redis.call('EXPIRE', idem_key(prefix, idem[2] or '', idem[1]), expire)
  end
end
-- The callback URL tells the worker whether a completion callback is due, without another read.
return {1, state, attempts, redis.call('HGET', key, 'callback_url') or ''}
