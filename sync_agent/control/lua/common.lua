-- Shared prelude of every change script (prepended at load time): docs/protocol.md, "The change chain" and
-- "Requests, the lock and the record of changes".
-- KEYS[1] epoch, KEYS[2] revision, KEYS[3] head ("<rev>:<id>"), KEYS[4] log (list of "<rev>:<id>"),
-- KEYS[5] deploy lock, KEYS[6] record of changes (list of JSON, newest first), KEYS[7] this request's outcome.
-- ARGV[1] this change's (and request's) id, ARGV[2] the events channel, ARGV[3] how many log entries to keep,
-- ARGV[4] the deploy-lock token of the caller ("" when it holds none), ARGV[5] who asks (user@host),
-- ARGV[6] how many changes the record keeps, ARGV[7] how long a request's outcome is kept (ms; "0": not kept).
-- A change is made only on a store with an epoch (`init` or `recover` makes one, never a change by accident),
-- and only when the head is at the revision: a revision past the head means a controller that keeps no chain
-- wrote here, and nothing is built on top of that.

-- Every script checks (replay, fence, chain) before it writes anything: the writes of a script stay even when it
-- then returns an error, so a refusal must come first.

-- The outcome of this request if it was made already (a retry after a lost reply gets the first outcome back,
-- never a second change), or nil. "abandoned": the caller gave up on it, and it is never made.
local function replay()
  local done = redis.call('GET', KEYS[7])
  if not done then return nil end
  if done == 'abandoned' then
    return redis.error_reply('ABANDONED request ' .. ARGV[1] .. ' was given up by its caller; nothing was changed')
  end
  return cjson.decode(done)
end

-- Keep this request's outcome for its retries, and return it.
local function remember(outcome)
  if tonumber(ARGV[7]) > 0 then redis.call('SET', KEYS[7], cjson.encode(outcome), 'PX', ARGV[7]) end
  return outcome
end

-- nil when the caller may change releases: it holds the deploy lock, or holds none and nobody does. Else the
-- error reply: a holder whose lock expired or was broken publishes nothing more over the new holder's work.
local function fence()
  local token = redis.call('HGET', KEYS[5], 'token')
  if token == ARGV[4] or (not token and ARGV[4] == '') then return nil end
  local holder = redis.call('HGET', KEYS[5], 'holder')
  if ARGV[4] == '' then
    return redis.error_reply('LOCKHELD ' .. redis.call('PTTL', KEYS[5]) .. ' ' .. (holder or 'another operation'))
  end
  return redis.error_reply('LOCKLOST ' .. (holder and ('the deploy lock is now held by ' .. holder)
    or 'the deploy lock expired or was broken and is free'))
end

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

-- Add what was done to the record of changes: entry (what, and what it names) with who, when (Redis' clock) and
-- the request id; a change made under the lock also names its holder (the operation it was part of).
local function note(entry, under_lock)
  local now = redis.call('TIME')
  entry.at = tonumber(now[1]) + tonumber(now[2]) / 1000000
  entry.who = ARGV[5]
  entry.id = ARGV[1]
  if under_lock then entry.during = redis.call('HGET', KEYS[5], 'holder') or nil end
  redis.call('LPUSH', KEYS[6], cjson.encode(entry))
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[6]) - 1)
end

local function header(kind, epoch, rev, parent)
  return '{"v":1,"type":"' .. kind .. '","epoch":' .. cjson.encode(epoch) .. ',"rev":' .. rev ..
    ',"id":' .. cjson.encode(ARGV[1]) .. ',"parent":' .. cjson.encode(parent)
end
