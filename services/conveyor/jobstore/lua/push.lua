-- Put ready messages of one tenant onto a tier (fair_push): kombu's restore of an expired or
-- rejected delivery, a publish through Celery, and benchmarks' bulk loads.
--
-- ARGV: 1 prefix, 2 queue, 3 tenant, 4 ready time (seconds, the tokens' value; '' = now),
--       5 '1' to put them where they are taken next (a restore), '0' at the back, 6.. messages.
-- Returns the number pushed.
local prefix, queue, tenant = ARGV[1], ARGV[2], ARGV[3]
local ready = ARGV[4] ~= '' and ARGV[4] or now_token()
for i = 6, #ARGV do
  fair_push(prefix, queue, tenant, ARGV[i], ready, ARGV[5] == '1', true)
end
return #ARGV - 5
