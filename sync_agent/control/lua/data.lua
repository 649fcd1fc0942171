-- One data change: store, bump the revision, publish the change with its payload.
-- KEYS[8] the hash changed (NS:data, or NS:private), KEYS[9] the other one (a key lives in one of them only).
-- ARGV[8] op ("set"|"del"), ARGV[9] key, ARGV[10] value (compact JSON, validated by the caller),
-- ARGV[11] the most keys the hash may hold, ARGV[12] the most bytes it may hold (docs/protocol.md, "Limits"),
-- ARGV[13] "data" or "private": the event's type, and what the record of changes calls it. A private change is
-- published as its own type (an agent from before it skips the type, writing nothing) and recorded by key alone.
-- Data changes take no lock (a flag flip never waits behind a rollout) and keep no request outcome: setting a
-- value again, or deleting a key again, leaves the same data.
-- The caps are checked here, inside the one atomic step, so two publishers racing cannot pass them together.
-- Returns {epoch, revision}; revision 0 when a "del" found nothing to delete (no change, nothing published).
local op, key, value, kind = ARGV[8], ARGV[9], ARGV[10], ARGV[13]
local data, other = KEYS[8], KEYS[9]
local epoch, base, parent = chain()
if not epoch then return base end
if op == 'del' and redis.call('HEXISTS', data, key) == 0 then
  return {epoch, 0, ''}
end

if op == 'set' and redis.call('HEXISTS', other, key) == 1 then
  -- A key is public or private, never both: setting a private value without --private must not serve it, and a
  -- key made private must not leave its public copy behind.
  if kind == 'private' then
    return redis.error_reply('CLASH ' .. key .. ' is a public key (served under /_sync/); delete it first ' ..
      '(data del ' .. key .. '), then set it --private')
  end
  return redis.error_reply('CLASH ' .. key .. ' is a private key: setting it without --private would serve its ' ..
    'new value to every browser; pass --private, or delete it first (data del --private ' .. key .. ')')
end

if op == 'set' then
  -- The size is summed here each time (HSTRLEN per key, at most MAX_DATA_KEYS of them) rather than kept in a key
  -- of its own: nothing to drift when an older controller or a hand-made HSET changes the hash, nothing to migrate.
  local max_keys, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12])
  local exists = redis.call('HEXISTS', data, key) == 1
  if not exists and redis.call('HLEN', data) >= max_keys then
    return redis.error_reply('LIMIT the ' .. kind .. ' set already holds ' .. max_keys .. ' keys (' ..
      (kind == 'private' and 'MAX_PRIVATE_KEYS' or 'MAX_DATA_KEYS') .. '); delete one first (data del)')
  end
  local size = #key + #value
  for _, field in ipairs(redis.call('HKEYS', data)) do
    if field ~= key then size = size + #field + redis.call('HSTRLEN', data, field) end
  end
  if size > max_bytes then
    return redis.error_reply('LIMIT the ' .. kind .. ' set would hold ' .. size .. ' bytes, over ' .. max_bytes ..
      ' (' .. (kind == 'private' and 'MAX_PRIVATE_BYTES' or 'MAX_DATA_BYTES') .. '); delete or shrink other keys first')
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
-- The record names the key, never the value; a private change is "private set"/"private del" (not "data …": what
-- replays data changes from the record, the live stream's resume, must not take it for a public key's).
note({what = kind .. ' ' .. op, key = key, private = (kind == 'private') or nil, rev = rev})
redis.call('PUBLISH', ARGV[2], header(kind, epoch, rev, parent) .. body)
return {epoch, rev}
