-- Append audit entries to the capped audit stream, in the order given (one call for a
-- writer's batch: a pipeline of one XADD each cost the API ~20 µs per entry, this ~3).
--
-- ARGV: 1 prefix, 2 the stream's approximate cap, 3 the entry's one field (its name is
-- spelled in jobstore/audit_log.py), 4.. the entries (each one JSON text).
local key = key_audit(ARGV[1])
for i = 4, #ARGV do
  redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[i])
end
return #ARGV - 3
