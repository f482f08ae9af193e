-- Renew a worker's leases at Redis' clock: the scores of its deliveries still unacked (XX: an
-- acked delivery is never resurrected), and of its jobs in their queue's running set (XX too:
-- the renewals are how the stuck-job sweep tells a live run from an abandoned one).
--
-- A delivery is renewed while it is in its start grace (the worker judges that: it has held
-- it for less than WORKER__START_GRACE_LEASES visibility timeouts), and after it only if its
-- run started: the job's record names this delivery (start.lua's `delivery`). A delivery
-- whose pool child hung before starting it would otherwise be renewed for ever, its job
-- `queued` and its message unacked; now its lease lapses and kombu's sweep redelivers it.
--
-- ARGV: 1 prefix, 2 the unacked index (kombu's key), then one group of four per delivery:
--       delivery tag ('' for none), queue ('' when the running set is not renewed), job id,
--       '1' when the delivery is in its start grace, else '0'.
-- Returns {number of deliveries renewed, then the job ids of deliveries left to lapse}.
local prefix, index = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local renewed, lapsed = 0, {}
for i = 3, #ARGV, 4 do
  local tag, queue, id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local held = ARGV[i + 3] == '1'
  if not held and tag ~= '' then
    held = redis.call('HGET', key_job(prefix, id), 'delivery') == tag
  end
  if held then
    if tag ~= '' then
      renewed = renewed + redis.call('ZADD', index, 'XX', 'CH', now, tag)
    end
    if queue ~= '' then
      redis.call('ZADD', key_running(prefix, queue), 'XX', 'CH', t[1], id)
    end
  else
    lapsed[#lapsed + 1] = id
  end
end
return {renewed, unpack(lapsed)}
