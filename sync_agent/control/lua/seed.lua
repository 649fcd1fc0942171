-- Make a new epoch holding exactly the given state: `init` (a new fleet), an import onto an empty store, and
-- `recover` (the state the hosts hold). The one script that creates an epoch: no change makes one by accident.
-- KEYS[8] origin, KEYS[9] data hash, KEYS[10] desired hash, KEYS[11] history list, KEYS[12] history position,
-- KEYS[13] release metadata hash, KEYS[14] the unfinished-rollout record (a new epoch ends it), KEYS[15] the
-- private data hash.
-- ARGV[8] the new epoch, ARGV[9] "replace" to replace a store that has an epoch (else it is refused),
-- ARGV[10] origin JSON, ARGV[11] fleet release or "", ARGV[12] history JSON list, ARGV[13] metadata JSON object,
-- ARGV[14] the private data as a JSON object of key -> compact JSON text, ARGV[15..] data key, value pairs
-- (compact JSON, validated by the caller).
-- Fenced by the deploy lock, made once per request id.
-- Returns {epoch, revision, id}: an epoch starts at revision 0, this change; its first ordinary change is 1.
local done = replay()
if done then return done end
local refused = fence()
if refused then return refused end
local existing = redis.call('GET', KEYS[1])
if existing and ARGV[9] ~= 'replace' then
  return redis.error_reply('EXISTS the store already has epoch ' .. existing)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[14], KEYS[15])
local epoch = ARGV[8]
redis.call('SET', KEYS[1], epoch)
redis.call('SET', KEYS[8], ARGV[10])
for i = 15, #ARGV, 2 do redis.call('HSET', KEYS[9], ARGV[i], ARGV[i + 1]) end
for key, value in pairs(cjson.decode(ARGV[14])) do redis.call('HSET', KEYS[15], key, value) end
local fleet = ARGV[11]
if fleet ~= '' then redis.call('HSET', KEYS[10], 'fleet', fleet) end
local history = cjson.decode(ARGV[12])
for _, release in ipairs(history) do redis.call('RPUSH', KEYS[11], release) end
if #history > 0 then redis.call('SET', KEYS[12], #history - 1) end
for release, meta in pairs(cjson.decode(ARGV[13])) do redis.call('HSET', KEYS[13], release, meta) end
local rev = advance(-1)
local fleet_json = fleet ~= '' and cjson.encode(fleet) or 'null'
redis.call('PUBLISH', ARGV[2], header('release', epoch, rev, '') ..
  ',"desired":{"fleet":' .. fleet_json .. ',"overrides":{}}}')
note({what = cjson.decode(ARGV[10]).how, release = fleet ~= '' and fleet or nil, epoch = epoch, rev = rev}, true)
return remember({epoch, rev, ARGV[1]})
