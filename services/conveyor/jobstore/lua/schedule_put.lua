-- Create or change a schedule (schedules.py): its definition, its name's owner, its indexes
-- and its place among the due schedules, in one step.
-- ARGV: prefix, id, tenant, name, source, definition (JSON), paused (0|1), anchor (ms),
--   next tick (ms, '' when paused), next due (ms, '' when paused), expected version
--   ('' to create; '*' to upsert, the schedule file's; else the version being changed),
--   the tenant's schedule limit (0: none).
-- Returns {1, version}, or a refusal: {-1} the id exists, {-2, holder} the name is another
-- schedule's, {-3} the tenant has its limit, {-4} no such schedule, {-5, version} changed
-- meanwhile, {-6} a file schedule cannot be changed through the API.
local prefix, id, tenant, name, source = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local definition, paused, anchor = ARGV[6], ARGV[7], ARGV[8]
local next_tick, next_due, expected, limit = ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12])
local key = key_schedule(prefix, id)
local names = key_schedule_names(prefix)
-- The schedule file's names are apart from the tenants': an API schedule never blocks one.
local function owner_of(of_source, of_tenant, of_name)
  return (of_source == 'file' and 'file/' or '') .. of_tenant .. '/' .. of_name
end
local owner_field = owner_of(source, tenant, name)
local current = redis.call('HMGET', key, 'version', 'tenant', 'name', 'source')
local version = tonumber(current[1])
if expected == '' then
  if version then return {-1} end
  if limit > 0 and redis.call('SCARD', key_schedules_tenant(prefix, tenant)) >= limit then
    return {-3}
  end
elseif expected ~= '*' then
  if not version then return {-4} end
  if current[4] ~= source then return {-6} end
  if tostring(version) ~= expected then return {-5, version} end
end
local holder = redis.call('HGET', names, owner_field)
if holder and holder ~= id then return {-2, holder} end
if version and (current[2] ~= tenant or current[3] ~= name) then
  redis.call('HDEL', names, owner_of(current[4], current[2], current[3]))
  redis.call('SREM', key_schedules_tenant(prefix, current[2]), id)
end
local now = redis.call('TIME')
local now_ms = tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
version = (version or 0) + 1
redis.call('HSET', key, 'version', version, 'tenant', tenant, 'name', name, 'source', source,
  'definition', definition, 'paused', paused, 'anchor', anchor, 'next_tick', next_tick,
  'next_due', next_due, 'updated_at', now_ms)
redis.call('HSETNX', key, 'created_at', now_ms)
redis.call('HSET', names, owner_field, id)
redis.call('SADD', key_schedules_all(prefix), id)
redis.call('SADD', key_schedules_tenant(prefix, tenant), id)
if paused == '1' or next_due == '' then
  redis.call('ZREM', key_schedules_due(prefix), id)
else
  redis.call('ZADD', key_schedules_due(prefix), next_due, id)
end
return {1, version}
