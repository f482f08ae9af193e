-- Read one job record as its tenant may: the whole hash, or nothing when the job is unknown,
-- expired or another tenant's. Checked here rather than in the API so that another tenant's
-- job costs what an unknown id costs (no record crosses the network), and a 404 cannot be
-- told apart by its timing.
--
-- ARGV: 1 prefix, 2 job id, 3 tenant ('' for any tenant: admins).
-- Returns HGETALL's flat list, or an empty list.
local key = key_job(ARGV[1], ARGV[2])
if ARGV[3] ~= '' and redis.call('HGET', key, 'tenant') ~= ARGV[3] then
  return {}
end
return redis.call('HGETALL', key)
