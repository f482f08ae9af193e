-- Shared helpers, prepended to every Conveyor script (Redis scripts cannot import each other).
-- Keys are built here from the prefix passed as ARGV[1]: Conveyor needs a standalone Redis
-- (not Cluster), as Celery's Redis transport does.

local function job_key(prefix, id)
  return prefix .. ':job:' .. id
end

local function state_index(prefix, state)
  return prefix .. ':index:state:' .. state
end

-- Move `id` from one state index to another, keeping its creation-time score.
local function move_state_index(prefix, id, old_state, new_state)
  if old_state == new_state then
    return
  end
  local score = redis.call('ZSCORE', prefix .. ':index:all', id)
  if not score then
    return
  end
  redis.call('ZREM', state_index(prefix, old_state), id)
  redis.call('ZADD', state_index(prefix, new_state), score, id)
end
