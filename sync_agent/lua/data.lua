-- One data change: store, bump the revision, publish the change with its payload.
-- KEYS[3] data hash. ARGV[3] op ("set"|"del"), ARGV[4] key, ARGV[5] value (compact JSON, validated by the caller).
-- Returns {epoch, revision}; revision 0 when a "del" found nothing to delete (no change, nothing published).
local op, key = ARGV[3], ARGV[4]
if op == 'del' and redis.call('HEXISTS', KEYS[3], key) == 0 then
  return {redis.call('GET', KEYS[1]) or '', 0}
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
