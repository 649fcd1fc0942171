-- Change the desired release and the activation history in one step, bump the revision, publish.
-- KEYS[8] desired hash, KEYS[9] history list, KEYS[10] history position, KEYS[11] release metadata hash.
-- ARGV[8] op, ARGV[9] release id (or JSON for "restore"), ARGV[10] metadata JSON (or ""),
-- ARGV[11] switch margin in ms, ARGV[12..] host names.
-- The event carries switch_at = Redis TIME + the margin, in microseconds: the moment every agent renames current
-- (docs/protocol.md), so hosts switch together however late each one wakes up.
-- Ops: activate (fleet-wide, appends to history and drops anything ahead of the position),
-- override (per-host, history untouched), clear (drop overrides of the hosts), rollback (one step back),
-- goto (to a release in history, else like activate), restore (put back a saved desired state + history).
-- Fenced by the deploy lock, made once per request id.
-- Returns {epoch, revision, fleet release or ""}, or an error reply a user can act on.
local done = replay()
if done then return done end
local refused = fence()
if refused then return refused end
local op, id, meta = ARGV[8], ARGV[9], ARGV[10]
local desired, history, pos_key, releases = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local epoch, base, parent = chain()
if not epoch then return base end

local function clear_overrides()
  local fields = redis.call('HKEYS', desired)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 5) == 'host:' then redis.call('HDEL', desired, f) end
  end
end

local function append(release)
  local pos = tonumber(redis.call('GET', pos_key) or '-1')
  redis.call('LTRIM', history, 0, pos)
  if pos < 0 then redis.call('DEL', history) end
  redis.call('RPUSH', history, release)
  redis.call('SET', pos_key, redis.call('LLEN', history) - 1)
end

if meta ~= '' and op ~= 'restore' then redis.call('HSET', releases, id, meta) end

if op == 'activate' then
  append(id)
  redis.call('HSET', desired, 'fleet', id)
  clear_overrides()
elseif op == 'override' then
  for i = 12, #ARGV do redis.call('HSET', desired, 'host:' .. ARGV[i], id) end
elseif op == 'clear' then
  for i = 12, #ARGV do redis.call('HDEL', desired, 'host:' .. ARGV[i]) end
elseif op == 'rollback' then
  local pos = tonumber(redis.call('GET', pos_key) or '-1')
  if pos < 1 then
    return redis.error_reply('NOHISTORY there is no earlier release to roll back to')
  end
  redis.call('SET', pos_key, pos - 1)
  redis.call('HSET', desired, 'fleet', redis.call('LINDEX', history, pos - 1))
  clear_overrides()
elseif op == 'goto' then
  local found = redis.call('LPOS', history, id, 'RANK', -1)  -- its latest activation: a later rollback goes back from there
  if found then
    redis.call('SET', pos_key, found)
  else
    append(id)
  end
  redis.call('HSET', desired, 'fleet', id)
  clear_overrides()
elseif op == 'restore' then
  local saved = cjson.decode(id)
  redis.call('DEL', desired, history, pos_key)
  if saved.fleet then redis.call('HSET', desired, 'fleet', saved.fleet) end
  for host, release in pairs(saved.overrides) do redis.call('HSET', desired, 'host:' .. host, release) end
  for _, release in ipairs(saved.history) do redis.call('RPUSH', history, release) end
  if saved.position >= 0 then redis.call('SET', pos_key, saved.position) end
else
  return redis.error_reply('ERR unknown release op ' .. op)
end

local rev = advance(base)
local state = {fleet = redis.call('HGET', desired, 'fleet') or nil, overrides = {}}
local raw = redis.call('HGETALL', desired)
local has_override = false
for i = 1, #raw, 2 do
  if string.sub(raw[i], 1, 5) == 'host:' then
    state.overrides[string.sub(raw[i], 6)] = raw[i + 1]
    has_override = true
  end
end
local overrides_json = has_override and cjson.encode(state.overrides) or '{}'
local fleet_json = state.fleet and cjson.encode(state.fleet) or 'null'
local now = redis.call('TIME')
local switch_at = string.format('%d', tonumber(now[1]) * 1000000 + tonumber(now[2]) + tonumber(ARGV[11]) * 1000)
redis.call('PUBLISH', ARGV[2], header('release', epoch, rev, parent) ..
  ',"desired":{"fleet":' .. fleet_json .. ',"overrides":' .. overrides_json .. '},"switch_at":' .. switch_at .. '}')
local hosts = {}
for i = 12, #ARGV do hosts[#hosts + 1] = ARGV[i] end
note({what = op, release = (op == 'override' and id) or state.fleet or nil, hosts = #hosts > 0 and hosts or nil,
      rev = rev}, true)
return remember({epoch, rev, state.fleet or ''})
