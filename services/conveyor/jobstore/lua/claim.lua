-- Claim a ready message for a consumer that took a ready token off the tier's list (a BLMOVE
-- into its in-flight list), in one step: the token leaves the in-flight list, the tier's next
-- tenant in fair order gives up its oldest message, the delivery is recorded as unacked, and
-- the slots it takes (its tenant's on the tier, its task's, its concurrency key's) are
-- counted. At every moment a message is in its tenant's list, a gate's waiting list or
-- unacked, and each message in a tenant's list has one token: in the tier's list, in some
-- consumer's in-flight list (recover_inflight moves a dead consumer's back) or parked.
--
-- Fair order is stride scheduling: the tenant with the lowest virtual pass is served, and its
-- pass grows by 1/weight. A tenant that joins takes the tier's clock (the pass served last),
-- so a newcomer is served next whatever the others' backlogs.
--
-- Flow control, without polling:
-- * a paused tier parks the token (flow.lua's resume puts parked tokens back);
-- * a tenant paused, or at its concurrency limit on the tier, is held off the rotation (its
--   messages stay in its list), and the next tenant is tried; release.lua or a resume puts
--   it back, with a parked token;
-- * a message whose task is paused, or whose task or concurrency key is at its limit, moves
--   to that gate's waiting list and takes this token with it (the claim ends; the consumer
--   polls again): release.lua moves one back, with a new token, when the gate frees a slot.
-- When no message can be claimed, the token is parked.
--
-- A consumer that has just been served takes its next token here instead (take: no
-- in-flight list and no token given): while a tier has a backlog, a delivery is one round
-- trip instead of a blocking pop and a claim. Both steps are one atomic script, so no token
-- can be left between them; an empty tier answers false and the consumer blocks again.
--
-- ARGV: 1 prefix, 2 queue, 3 the consumer's in-flight list ('' = take), 4 the token ('' to
--       take), 5 unacked hash, 6 unacked index, 7 a tenant's concurrency limit per tier
--       unless its own is set ('0' = none).
-- Returns the message claimed, or false: the token was no longer in flight here (the consumer
-- looked dead and it was requeued: the consumer drops it), the tier had no token to take, or
-- nothing could be claimed.
local prefix, queue, inflight, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local default_limit = tonumber(ARGV[7])
if inflight == '' then
  token = redis.call('RPOP', key_queue(prefix, queue))
  if not token then
    return false
  end
elseif redis.call('LREM', inflight, 1, token) == 0 then
  return false
end
-- A message the previous version queued (its tiers' lists held messages, and an old API
-- replica still pushes them during a rolling update): it joins its tenant's list, where it
-- is taken next, and this claim goes on as for its token.
if string.sub(token, 1, 1) == '{' then
  local headers = cjson.decode(token)['headers']
  local tenant = type(headers) == 'table' and headers['conveyor_tenant'] or ''
  if type(tenant) ~= 'string' then
    tenant = ''
  end
  quota_add(prefix, tenant, name_quota_queued(queue), 1, #token)
  redis.call('RPUSH', key_fair_jobs(prefix, queue, tenant), token)
  local clock = redis.call('GET', key_fair_clock(prefix, queue)) or '0'
  redis.call('ZADD', key_fair_tenants(prefix, queue), 'NX', clock, tenant)
  token = now_token()
end
local paused = key_paused(prefix)
local function park()
  redis.call('LPUSH', key_fair_parked(prefix, queue), token)
  return false
end
if redis.call('SISMEMBER', paused, name_paused_member('tier', queue)) == 1 then
  return park()
end

local tenants = key_fair_tenants(prefix, queue)
local gate_active = key_gate_active(prefix)

-- The limited gates a message passes ({name, limit} pairs), from its headers.
local function gates_of(headers, tenant, task)
  local gates = {}
  local task_limit = tonumber(headers['conveyor_task_limit']) or 0
  if task_limit > 0 then
    gates[#gates + 1] = {name_task_gate(task), task_limit}
  end
  local key = headers['conveyor_concurrency_key']
  local ckey_limit = tonumber(headers['conveyor_key_limit']) or 0
  if type(key) == 'string' and key ~= '' and ckey_limit > 0 then
    gates[#gates + 1] = {name_key_gate(tenant, task, key), ckey_limit}
  end
  return gates
end

-- The gate a message must wait at: its task's when paused, else the first at its limit.
local function closed_gate(gates, task)
  if redis.call('SISMEMBER', paused, name_paused_member('task', task)) == 1 then
    return name_task_gate(task)
  end
  for _, gate in ipairs(gates) do
    if (tonumber(redis.call('HGET', gate_active, gate[1])) or 0) >= gate[2] then
      return gate[1]
    end
  end
  return nil
end

-- Bounded: each turn drops or holds a tenant, or ends the claim.
for _ = 1, 1000 do
  local head = redis.call('ZRANGE', tenants, 0, 0, 'WITHSCORES')
  if #head == 0 then
    return park()
  end
  local tenant, pass = head[1], tonumber(head[2])
  local jobs = key_fair_jobs(prefix, queue, tenant)
  if tenant_held(prefix, queue, tenant, default_limit) then
    redis.call('ZREM', tenants, tenant)
    redis.call('ZADD', key_fair_held(prefix, queue), pass, tenant)
  else
    local message = redis.call('RPOP', jobs)
    if not message then
      redis.call('ZREM', tenants, tenant)
    else
      if redis.call('LLEN', jobs) == 0 then
        redis.call('ZREM', tenants, tenant)
      end
      local decoded = cjson.decode(message)
      local headers = decoded['headers'] or {}
      local task = tostring(headers['task'])
      local gates = gates_of(headers, tenant, task)
      local closed = closed_gate(gates, task)
      if redis.call('ZSCORE', tenants, tenant) then
        local weight = tonumber(redis.call('HGET', key_fair_weights(prefix), tenant)) or 1
        redis.call('ZADD', tenants, pass + 1 / weight, tenant)
      end
      if closed then
        -- It waits for the gate with this token spent on it (one message, one token).
        redis.call('LPUSH', key_gate_waiting(prefix, closed),
                   queue .. '\n' .. tenant .. '\n' .. message)
        -- It may be the message a freed slot of another of its gates let go: that slot
        -- goes to the next message waiting there.
        for _, gate in ipairs(gates) do
          if gate[1] ~= closed
              and (tonumber(redis.call('HGET', gate_active, gate[1])) or 0) < gate[2] then
            reopen_gate(prefix, gate[1], 1, default_limit)
          end
        end
        return false
      end
      redis.call('SET', key_fair_clock(prefix, queue), pass)
      quota_add(prefix, tenant, name_quota_queued(queue), -1, -#message)

      local properties = decoded['properties']
      local tag, info = properties['delivery_tag'], properties['delivery_info']
      local t = redis.call('TIME')
      redis.call('ZADD', ARGV[6], tonumber(t[1]) + tonumber(t[2]) / 1000000, tag)
      -- kombu's unacked record: [message, exchange, routing key].
      redis.call('HSET', ARGV[5], tag, '[' .. message .. ',' .. cjson.encode(info['exchange'] or '')
                 .. ',' .. cjson.encode(info['routing_key'] or queue) .. ']')
      -- The slots this delivery holds until release.lua (ack, reject or restore).
      redis.call('HINCRBY', key_fair_active(prefix, queue), tenant, 1)
      local held = {queue, tenant}
      for _, gate in ipairs(gates) do
        redis.call('HINCRBY', gate_active, gate[1], 1)
        held[#held + 1] = gate[1]
      end
      redis.call('HSET', key_slots(prefix), tag, table.concat(held, '\n'))
      return message
    end
  end
end
return park()
