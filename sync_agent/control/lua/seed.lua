-- Make a new epoch holding exactly the given state: `init` (a new fleet), an import onto an empty store, and
-- `recover` (the state the hosts hold). The one script that creates an epoch: no change makes one by accident.
-- KEYS[5] origin, KEYS[6] data hash, KEYS[7] desired hash, KEYS[8] history list, KEYS[9] history position,
-- KEYS[10] release metadata hash.
-- ARGV[4] the new epoch, ARGV[5] "replace" to replace a store that has an epoch (else it is refused),
-- ARGV[6] origin JSON, ARGV[7] fleet release or "", ARGV[8] history JSON list, ARGV[9] metadata JSON object,
-- ARGV[10..] data key, value pairs (compact JSON, validated by the caller).
-- Returns {epoch, revision, id}: an epoch starts at revision 0, this change; its first ordinary change is 1.
local existing = redis.call('GET', KEYS[1])
if existing and ARGV[5] ~= 'replace' then
  return redis.error_reply('EXISTS the store already has epoch ' .. existing)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
local epoch = ARGV[4]
redis.call('SET', KEYS[1], epoch)
redis.call('SET', KEYS[5], ARGV[6])
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1]) end
local fleet = ARGV[7]
if fleet ~= '' then redis.call('HSET', KEYS[7], 'fleet', fleet) end
local history = cjson.decode(ARGV[8])
for _, release in ipairs(history) do redis.call('RPUSH', KEYS[8], release) end
if #history > 0 then redis.call('SET', KEYS[9], #history - 1) end
for release, meta in pairs(cjson.decode(ARGV[9])) do redis.call('HSET', KEYS[10], release, meta) end
local rev = advance(-1)
local fleet_json = fleet ~= '' and cjson.encode(fleet) or 'null'
redis.call('PUBLISH', ARGV[2], header('release', epoch, rev, '') ..
  ',"desired":{"fleet":' .. fleet_json .. ',"overrides":{}}}')
return {epoch, rev, ARGV[1]}
