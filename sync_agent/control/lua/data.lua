-- One data change: store, bump the revision, publish the change with its payload.
-- KEYS[3] data hash.
-- ARGV[3] op ("set"|"del"), ARGV[4] key, ARGV[5] value (compact JSON, validated by the caller),
-- ARGV[6] the most keys the hash may hold, ARGV[7] the most bytes it may hold (docs/protocol.md, "Limits").
-- The caps are checked here, inside the one atomic step, so two publishers racing cannot pass them together.
-- Returns {epoch, revision}; revision 0 when a "del" found nothing to delete (no change, nothing published).
local op, key = ARGV[3], ARGV[4]
if op == 'del' and redis.call('HEXISTS', KEYS[3], key) == 0 then
  return {redis.call('GET', KEYS[1]) or '', 0}
end

if op == 'set' then
  -- The size is summed here each time (HSTRLEN per key, at most MAX_DATA_KEYS of them) rather than kept in a key
  -- of its own: nothing to drift when an older controller or a hand-made HSET changes the hash, nothing to migrate.
  local max_keys, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
  local exists = redis.call('HEXISTS', KEYS[3], key) == 1
  if not exists and redis.call('HLEN', KEYS[3]) >= max_keys then
    return redis.error_reply('LIMIT the data set already holds ' .. max_keys ..
      ' keys (MAX_DATA_KEYS); delete one first (data del)')
  end
  local size = #key + #ARGV[5]
  for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    if field ~= key then size = size + #field + redis.call('HSTRLEN', KEYS[3], field) end
  end
  if size > max_bytes then
    return redis.error_reply('LIMIT the data set would hold ' .. size .. ' bytes, over ' .. max_bytes ..
      ' (MAX_DATA_BYTES); delete or shrink other keys first')
  end
end

local epoch, rev = bump()
local body
if op == 'set' then
  redis.call('HSET', KEYS[3], key, ARGV[5])
  body = ',"op":"set","key":' .. cjson.encode(key) .. ',"value":' .. ARGV[5] .. '}'
else
  redis.call('HDEL', KEYS[3], key)
  body = ',"op":"del","key":' .. cjson.encode(key) .. '}'
end
redis.call('PUBLISH', ARGV[2], header('data', epoch, rev) .. body)
return {epoch, rev}
