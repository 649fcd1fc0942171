-- One data change: store, bump the revision, publish the change with its payload.
-- KEYS[3] data hash, KEYS[4] its size in bytes (keys + values; kept here, computed once if missing).
-- ARGV[3] op ("set"|"del"), ARGV[4] key, ARGV[5] value (compact JSON, validated by the caller),
-- ARGV[6] the most keys the hash may hold, ARGV[7] the most bytes it may hold (docs/protocol.md, "Limits").
-- The caps are checked here, inside the one atomic step, so two publishers racing cannot pass them together.
-- Returns {epoch, revision}; revision 0 when a "del" found nothing to delete (no change, nothing published).
local op, key = ARGV[3], ARGV[4]
if op == 'del' and redis.call('HEXISTS', KEYS[3], key) == 0 then
  return {redis.call('GET', KEYS[1]) or '', 0}
end

local size = tonumber(redis.call('GET', KEYS[4]) or '')
if not size then  -- a store from before the size was kept (or written by hand): count it once
  size = 0
  local fields = redis.call('HKEYS', KEYS[3])
  for _, field in ipairs(fields) do
    size = size + #field + redis.call('HSTRLEN', KEYS[3], field)
  end
end
local old = redis.call('HSTRLEN', KEYS[3], key)
local exists = redis.call('HEXISTS', KEYS[3], key) == 1
if exists then size = size - #key - old end

if op == 'set' then
  local max_keys, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
  if not exists and redis.call('HLEN', KEYS[3]) >= max_keys then
    return redis.error_reply('LIMIT the data set already holds ' .. max_keys ..
      ' keys (MAX_DATA_KEYS); delete one first (data del)')
  end
  if size + #key + #ARGV[5] > max_bytes then
    return redis.error_reply('LIMIT the data set would hold ' .. (size + #key + #ARGV[5]) ..
      ' bytes, over ' .. max_bytes .. ' (MAX_DATA_BYTES); delete or shrink other keys first')
  end
  size = size + #key + #ARGV[5]
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
redis.call('SET', KEYS[4], size)
redis.call('PUBLISH', ARGV[2], header('data', epoch, rev) .. body)
return {epoch, rev}
