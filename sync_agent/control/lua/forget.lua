-- A prune's part in the store: drop the metadata of releases that no host keeps any more.
-- KEYS[8] release metadata hash. ARGV[8..] release ids. Fenced by the deploy lock, made once per request id.
-- Returns {number of metadata entries removed}.
local done = replay()
if done then return done end
local refused = fence()
if refused then return refused end
local removed = 0
local releases = {}
for i = 8, #ARGV do
  removed = removed + redis.call('HDEL', KEYS[8], ARGV[i])
  releases[#releases + 1] = ARGV[i]
end
note({what = 'prune', releases = releases}, true)
return remember({removed})
