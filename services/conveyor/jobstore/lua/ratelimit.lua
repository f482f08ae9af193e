-- Take one token from a tenant's bucket (requests other than submissions, which take theirs
-- inside accept.lua). The bucket is shared by every API replica.
--
-- ARGV: 1 prefix, 2 tenant, 3 rate (tokens/s), 4 burst.
-- Returns {taken (1/0), whole tokens left, ms until the next token}.
local taken, left, wait = take_token(key_rate_limit(ARGV[1], ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]))
return {taken, left, wait}
