-- Cancel a workflow: no step starts from now on, and every step that has not finished is
-- cancelled (verb cancel) in this one step; the workflow ends with them.
--
-- ARGV: 1 prefix, 2 workflow id, 3 tenant ('' for any: admins), 4 the states a step is
--       cancelled from as '|a|b|' (conveyor.jobstore.machine).
-- Returns {0} for an unknown workflow (or another tenant's), {1, state before, the workflow's
-- outcome or '', its seconds or '', the job ids of the steps that were running...}.
local prefix, id, tenant, cancellable = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local wkey = key_workflow(prefix, id)
local w = redis.call('HMGET', wkey, 'state', 'tenant', 'order')
if not w[1] or (tenant ~= '' and w[2] ~= tenant) then
  return {0}
end
if w[1] ~= 'running' then
  return {1, w[1], '', ''}
end
redis.call('HSET', wkey, 'halted', 'cancelled')
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local running = {}
for _, step in ipairs(wf_list(w[3])) do
  local key = key_job(prefix, step)
  local state = redis.call('HGET', key, 'state')
  if state and allows(cancellable, state) then
    redis.call('HSET', key, 'state', 'cancelled', 'finished_at', now, 'error', '')
    move_state_index(prefix, step, state, 'cancelled')
    emit(prefix, step, 'cancelled', 'state')
    local dropped = redis.call('HGET', key_delayed_messages(prefix), step)
    if dropped then
      redis.call('ZREM', key_delayed(prefix), step)
      redis.call('HDEL', key_delayed_messages(prefix), step)
      quota_add(prefix, redis.call('HGET', key, 'tenant') or '', 'delayed', -1, -#dropped)
    end
    if state == 'running' then
      running[#running + 1] = step
    end
    redis.call('HINCRBY', wkey, 'done', 1)
    redis.call('HINCRBY', wkey, 'cancelled', 1)
  end
end
local ended = wf_finish_if_done(prefix, id)
local reply = {1, 'running', ended and ended[1] or '', ended and tostring(ended[2]) or ''}
for _, step in ipairs(running) do
  reply[#reply + 1] = step
end
return reply
