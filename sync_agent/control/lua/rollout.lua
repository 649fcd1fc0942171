-- The record of an unfinished rollout (docs/reliability.md, "An interrupted rollout"): one JSON string that a
-- rollout writes before its first switch, updates at each step and removes once the fleet is on the new release
-- or back where it was. `fab status` names it and the next rollout refuses while it is there.
-- KEYS[8] the record. ARGV[8] op: "begin" (ARGV[9] the record JSON; refused while another is there), "phase"
-- (ARGV[9] the phase), "finish" (ARGV[9] the rollout's id: removes the record if it is that rollout's, or any
-- with "" — an abort). Fenced by the deploy lock. Returns 1, or 0 when "finish" found no record.
local refused = fence()
if refused then return refused end
local op, record = ARGV[8], KEYS[8]
if op == 'begin' then
  local existing = redis.call('GET', record)
  if existing then return redis.error_reply('UNFINISHED ' .. existing) end
  local entry = cjson.decode(ARGV[9])
  local now = redis.call('TIME')
  entry.started = tonumber(now[1]) + tonumber(now[2]) / 1000000
  entry.during = redis.call('HGET', KEYS[5], 'holder') or nil
  redis.call('SET', record, cjson.encode(entry))
  return 1
end
local existing = redis.call('GET', record)
if not existing then return 0 end
local entry = cjson.decode(existing)
if op == 'phase' then
  entry.phase = ARGV[9]
  redis.call('SET', record, cjson.encode(entry))
  return 1
end
if op == 'finish' then
  if ARGV[9] ~= '' and entry.id ~= ARGV[9] then return 0 end
  redis.call('DEL', record)
  return 1
end
return redis.error_reply('ERR unknown rollout record op ' .. op)
