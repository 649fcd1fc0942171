-- Shared prelude of every change script (prepended at load time): the change chain (docs/protocol.md).
-- KEYS[1] epoch, KEYS[2] revision, KEYS[3] head ("<rev>:<id>"), KEYS[4] log (list of "<rev>:<id>").
-- ARGV[1] this change's id, ARGV[2] the events channel, ARGV[3] how many log entries to keep.
-- A change is made only on a store with an epoch (`init` or `recover` makes one, never a change by accident),
-- and only when the head is at the revision: a revision past the head means a controller that keeps no chain
-- wrote here, and nothing is built on top of that.

-- Every script calls chain() before it writes anything: the writes of a script stay even when it then returns an
-- error, so a refusal must come first.
local function require_epoch()
  local epoch = redis.call('GET', KEYS[1])
  if not epoch then return nil, redis.error_reply('EMPTY the store has no epoch') end
  return epoch
end

-- The store's epoch, revision and head id, or nil and the error reply that refuses the change.
local function chain()
  local epoch, err = require_epoch()
  if not epoch then return nil, err end
  local rev = tonumber(redis.call('GET', KEYS[2]) or '0')
  local head = redis.call('GET', KEYS[3])
  if not head then return epoch, rev, '' end  -- a store from before the chain: adopted by this change
  local head_rev, head_id = string.match(head, '^(%d+):(.*)$')
  if tonumber(head_rev) ~= rev then
    return nil, redis.error_reply('FOREIGN the store is at revision ' .. tostring(rev) .. ' but its change chain ' ..
      'ends at ' .. tostring(head_rev) .. ': a controller that keeps no chain (an older frontfleet) wrote to it')
  end
  return epoch, rev, head_id
end

-- Record the change made on top of revision rev: bump the revision, move the head, log it.
local function advance(rev)
  local next_rev = rev + 1
  local entry = next_rev .. ':' .. ARGV[1]
  redis.call('SET', KEYS[2], next_rev)
  redis.call('SET', KEYS[3], entry)
  redis.call('RPUSH', KEYS[4], entry)
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
  return next_rev
end

local function header(kind, epoch, rev, parent)
  return '{"v":1,"type":"' .. kind .. '","epoch":' .. cjson.encode(epoch) .. ',"rev":' .. rev ..
    ',"id":' .. cjson.encode(ARGV[1]) .. ',"parent":' .. cjson.encode(parent)
end
