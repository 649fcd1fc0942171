-- Shared prelude of every publisher script (prepended at load time).
-- KEYS[1] epoch, KEYS[2] revision; ARGV[1] a fresh epoch to use if the store has none
-- (Redis lost its data, or this is the first change), ARGV[2] the events channel.
local function bump()
  local epoch = redis.call('GET', KEYS[1])
  if not epoch then
    epoch = ARGV[1]
    redis.call('SET', KEYS[1], epoch)
  end
  return epoch, redis.call('INCR', KEYS[2])
end

local function header(kind, epoch, rev)
  return '{"v":1,"type":"' .. kind .. '","epoch":' .. cjson.encode(epoch) .. ',"rev":' .. rev
end
