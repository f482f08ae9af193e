-- The schedules whose next run is due by Redis' clock (beat's leader, each tick). A write
-- script by its flags though it only reads: a replica or an isolated old primary refuses it,
-- so beat never decides from a stale node's schedule.
-- ARGV: prefix, most. Returns {now (ms), id, due (ms), id, due, ...}.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', key_schedules_due(ARGV[1]), '-inf', now_ms,
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local reply = {tostring(now_ms)}
for i = 1, #due do reply[#reply + 1] = due[i] end
return reply
