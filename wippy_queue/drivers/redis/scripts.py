"""Server-side Lua for the Redis driver: every multi-step move is one atomic script.

A crash (of our process, or of the connection) between two steps of a settle
could otherwise lose or duplicate a message; in a script it happens entirely or
not at all. Times are the server's (``TIME``), so clocks of client machines never
decide when a delayed message is due.
"""

from __future__ import annotations

#: milliseconds on the server's clock
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


#: KEYS: stream, delayed zset. ARGV: group, max_length, then the entry's field/value
#: pairs. Returns the new entry's id, or false when the queue is full: its messages
#: waiting (ready or delayed; not those being handled) number max_length.
PUBLISH_BOUNDED = """
local max = tonumber(ARGV[2])
local handled = redis.call('XPENDING', KEYS[1], ARGV[1])[1]
if redis.call('XLEN', KEYS[1]) - handled + redis.call('ZCARD', KEYS[2]) >= max then
  return false
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
"""

#: KEYS: stream, delayed zset, expired counter.
#: ARGV: group, consumer, key prefix of delayed entries, then per settle four values:
#: kind, entry id, its delivery count, delay_ms. Kinds: ``ack``; ``expired`` (dropped
#: and counted); ``requeue`` (a copy at the tail, or delayed, that has had this
#: attempt); ``release`` (the same, without counting this attempt). A copy carries
#: the attempts it has had in field ``a``: the entry's own ``a`` plus its delivery
#: count (minus one for a release).
#: A settle is done only while the entry is still this consumer's, with the same
#: delivery count; one another consumer holds now comes back in the returned list
#: (lost). One no longer pending was settled already (a retry after a lost reply).
SETTLE = (
    _NOW
    + """
local group, consumer, prefix = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
local function copy_of(id, count, release)
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if #entry == 0 then return nil end
  local fields, copy, had = entry[1][2], {}, 0
  for j = 1, #fields, 2 do
    if fields[j] == 'a' then
      had = tonumber(fields[j + 1]) or 0
    else
      table.insert(copy, fields[j])
      table.insert(copy, fields[j + 1])
    end
  end
  table.insert(copy, 'a')
  table.insert(copy, tostring(had + count - (release and 1 or 0)))
  return copy
end
for i = 4, #ARGV, 4 do
  local kind, id, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #pending == 1 then
    if pending[1][2] ~= consumer or tonumber(pending[1][4]) ~= count then
      table.insert(lost, id)
    else
      if kind == 'requeue' or kind == 'release' then
        local copy = copy_of(id, count, kind == 'release')
        local delay = tonumber(ARGV[i + 3])
        if copy and delay > 0 then
          redis.call('HSET', prefix .. id, unpack(copy))
          redis.call('ZADD', KEYS[2], now + delay, id)
        elseif copy then
          redis.call('XADD', KEYS[1], '*', unpack(copy))
        end
      elseif kind == 'expired' then
        redis.call('INCR', KEYS[3])
      end
      redis.call('XACK', KEYS[1], group, id)
      redis.call('XDEL', KEYS[1], id)
    end
  end
end
return lost
"""
)

#: KEYS: stream. ARGV: group, consumer, then entry id and delivery count pairs.
#: Renews the lease (resets the idle time) of each entry still this consumer's,
#: without counting a delivery; returns the ids that are not (lost).
EXTEND = """
local group, consumer = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #pending == 1 and pending[1][2] == consumer and tonumber(pending[1][4]) == count then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, id, 'JUSTID')
  else
    table.insert(lost, id)
  end
end
return lost
"""

#: KEYS: stream, delayed zset. ARGV: the most to move, key prefix of entries.
#: Moves the delayed entries that are due to the stream's tail; returns how many
#: milliseconds until the next one is due (-1: none waits).
PROMOTE = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[1])
for _, token in ipairs(due) do
  local fields = redis.call('HGETALL', ARGV[2] .. token)
  if #fields > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(fields))
  end
  redis.call('DEL', ARGV[2] .. token)
  redis.call('ZREM', KEYS[2], token)
end
local next = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #next == 0 then return -1 end
return math.max(0, tonumber(next[2]) - now)
"""
)

#: KEYS: stream, members zset. ARGV: group, consumer. The consumer leaves the group only
#: when it holds nothing (a consumer's pending entries would go with it, never to be
#: delivered again); it always leaves the members (it no longer counts as one).
LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[2])
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #held == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""
