-- Release the slots deliveries' claims took (kombu's ack, reject or restore of them), and let
-- what waited for them go: the tenant back into the tier's rotation with a parked token, one
-- message per gate back to its tenant's list with a new token. A tag released twice (an ack
-- after a restore) releases nothing the second time.
--
-- ARGV: 1 prefix, 2 a tenant's concurrency limit per tier unless its own is set ('0' = none),
--       3.. delivery tags.
-- Returns the number of deliveries whose slots were released.
local prefix, default_limit = ARGV[1], tonumber(ARGV[2])
local slots, gate_active = key_slots(prefix), key_gate_active(prefix)
local released = 0
for i = 3, #ARGV do
  local held = redis.call('HGET', slots, ARGV[i])
  if held then
    redis.call('HDEL', slots, ARGV[i])
    released = released + 1
    local parts, from = {}, 1
    while true do
      local nl = string.find(held, '\n', from, true)
      parts[#parts + 1] = string.sub(held, from, nl and nl - 1 or -1)
      if not nl then
        break
      end
      from = nl + 1
    end
    local queue, tenant = parts[1], parts[2]
    local active = key_fair_active(prefix, queue)
    if redis.call('HINCRBY', active, tenant, -1) <= 0 then
      redis.call('HDEL', active, tenant)
    end
    unhold(prefix, queue, tenant, default_limit, 1)
    for j = 3, #parts do
      if redis.call('HINCRBY', gate_active, parts[j], -1) <= 0 then
        redis.call('HDEL', gate_active, parts[j])
      end
      reopen_gate(prefix, parts[j], 1, default_limit)
    end
  end
end
return released
