-- Pause or resume a tier, a task or a tenant. Paused work stays queued and durable; running
-- jobs finish. A pause takes effect at the next claim (claim.lua parks, holds or gates);
-- a resume puts back what the pause set aside, at most ARGV 6 at a time (call it again
-- while it returns that many).
--
-- 'sweep' (the beat leader, every tick) gives back parked tokens to tenants that may run
-- (a limit raised in the keys file since their tokens were parked), and puts held tenants
-- that may run again back in the rotation.
--
-- ARGV: 1 prefix, 2 'pause', 'resume' or 'sweep', 3 kind ('tier', 'task' or 'tenant'), 4 name,
--       5 a tenant's concurrency limit per tier unless its own is set ('0' = none),
--       6 most to move back in this call, 7.. the tiers (for a tenant's resume).
-- Returns, for a pause, 1 when newly paused; for a resume, the number of tokens or messages
-- moved back (with -1 when it was not paused).
local prefix, verb, kind, name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local default_limit, batch = tonumber(ARGV[5]), tonumber(ARGV[6])
local paused = key_paused(prefix)
local member = name_paused_member(kind, name)
if verb == 'sweep' then
  local moved = 0
  for i = 7, #ARGV do
    local queue = ARGV[i]
    if redis.call('LLEN', key_fair_parked(prefix, queue)) > 0
        and redis.call('SISMEMBER', paused, name_paused_member('tier', queue)) == 0 then
      for _, tenant in ipairs(redis.call('ZRANGE', key_fair_held(prefix, queue), 0, -1)) do
        unhold(prefix, queue, tenant, default_limit, 0)
      end
      -- Only the tokens missing: what the rotation's tenants may start, less those ready.
      local parked, list = key_fair_parked(prefix, queue), key_queue(prefix, queue)
      local want = -redis.call('LLEN', list)
      for _, tenant in ipairs(redis.call('ZRANGE', key_fair_tenants(prefix, queue), 0, -1)) do
        local room = tenant_room(prefix, queue, tenant, default_limit)
        want = want + math.min(room, redis.call('LLEN', key_fair_jobs(prefix, queue, tenant)))
      end
      local here = 0
      while here < math.min(want, batch) and redis.call('LMOVE', parked, list, 'RIGHT', 'RIGHT') do
        here = here + 1
      end
      moved = moved + here
    end
  end
  return moved
end
if verb == 'pause' then
  return redis.call('SADD', paused, member)
end
local was = verb == 'drain' and 1 or redis.call('SREM', paused, member)
if was == 0 then
  return -1
end
local moved = 0
if kind == 'tier' then
  local parked, list = key_fair_parked(prefix, name), key_queue(prefix, name)
  while moved < batch and redis.call('LMOVE', parked, list, 'RIGHT', 'RIGHT') do
    moved = moved + 1
  end
elseif kind == 'task' then
  moved = reopen_gate(prefix, name_task_gate(name), batch, default_limit)
elseif kind == 'tenant' then
  for i = 7, #ARGV do
    moved = moved + unhold(prefix, ARGV[i], name, default_limit, batch)
  end
end
if was == 0 and moved == 0 then
  return -1
end
return moved
