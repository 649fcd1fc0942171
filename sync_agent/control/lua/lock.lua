-- The deploy lock: one hash {holder, token} with a TTL.
-- KEYS[1] lock key, KEYS[2] the record of changes. ARGV[1] op (acquire|renew|release|force), ARGV[2] token,
-- ARGV[3] holder, ARGV[4] ttl in ms, ARGV[5] who asks (user@host), ARGV[6] how many changes the record keeps.
-- acquire is re-entrant for the holder's token. Returns {1, holder} on success, {0, holder, pttl} when held
-- by another token; force breaks any lock and returns {1, previous holder or ""}.
local op, token, holder, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HGET', KEYS[1], 'token')
if op == 'force' then
  local previous = redis.call('HGET', KEYS[1], 'holder') or ''
  if previous ~= '' then  -- breaking a lock is a change of who may move the fleet: it goes in the record
    local now = redis.call('TIME')
    redis.call('LPUSH', KEYS[2], cjson.encode({what = 'lock broken', holder = previous, who = ARGV[5],
      at = tonumber(now[1]) + tonumber(now[2]) / 1000000, during = holder}))
    redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'token', token, 'holder', holder)
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, previous}
end
if op == 'acquire' then
  if not current then
    redis.call('HSET', KEYS[1], 'token', token, 'holder', holder)
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {1, holder}
  end
  if current == token then
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {1, redis.call('HGET', KEYS[1], 'holder')}
  end
  return {0, redis.call('HGET', KEYS[1], 'holder') or '', redis.call('PTTL', KEYS[1])}
end
if current ~= token then
  return {0, redis.call('HGET', KEYS[1], 'holder') or '', redis.call('PTTL', KEYS[1])}
end
if op == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ttl)
elseif op == 'release' then
  redis.call('DEL', KEYS[1])
end
return {1, holder}
