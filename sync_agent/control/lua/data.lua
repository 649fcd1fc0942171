-- One data change: store, bump the revision, publish the change with its payload.
-- KEYS[8] data hash.
-- ARGV[8] op ("set"|"del"), ARGV[9] key, ARGV[10] value (compact JSON, validated by the caller),
-- ARGV[11] the most keys the hash may hold, ARGV[12] the most bytes it may hold (docs/protocol.md, "Limits").
-- Data changes take no lock (a flag flip never waits behind a rollout) and keep no request outcome: setting a
-- value again, or deleting a key again, leaves the same data.
-- The caps are checked here, inside the one atomic step, so two publishers racing cannot pass them together.
-- Returns {epoch, revision}; revision 0 when a "del" found nothing to delete (no change, nothing published).
local op, key, value = ARGV[8], ARGV[9], ARGV[10]
local data = KEYS[8]
local epoch, base, parent = chain()
if not epoch then return base end
if op == 'del' and redis.call('HEXISTS', data, key) == 0 then
  return {epoch, 0, ''}
end

if op == 'set' then
  -- The size is summed here each time (HSTRLEN per key, at most MAX_DATA_KEYS of them) rather than kept in a key
  -- of its own: nothing to drift when an older controller or a hand-made HSET changes the hash, nothing to migrate.
  local max_keys, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12])
  local exists = redis.call('HEXISTS', data, key) == 1
  if not exists and redis.call('HLEN', data) >= max_keys then
    return redis.error_reply('LIMIT the data set already holds ' .. max_keys ..
      ' keys (MAX_DATA_KEYS); delete one first (data del)')
  end
  local size = #key + #value
  for _, field in ipairs(redis.call('HKEYS', data)) do
    if field ~= key then size = size + #field + redis.call('HSTRLEN', data, field) end
  end
  if size > max_bytes then
    return redis.error_reply('LIMIT the data set would hold ' .. size .. ' bytes, over ' .. max_bytes ..
      ' (MAX_DATA_BYTES); delete or shrink other keys first')
  end
end

local rev = advance(base)
local body
if op == 'set' then
  redis.call('HSET', data, key, value)
  body = ',"op":"set","key":' .. cjson.encode(key) .. ',"value":' .. value .. '}'
else
  redis.call('HDEL', data, key)
  body = ',"op":"del","key":' .. cjson.encode(key) .. '}'
end
note({what = 'data ' .. op, key = key, rev = rev})
redis.call('PUBLISH', ARGV[2], header('data', epoch, rev, parent) .. body)
return {epoch, rev}
