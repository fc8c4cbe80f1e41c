-- Put claimed payloads back into the ready set at their old place (graceful shutdown).
-- KEYS[1] ready zset, KEYS[2] leased zset, KEYS[3] lease scores hash, KEYS[4] payloads hash.
-- ARGV: seqs. Returns how many went back.
local back = 0
for _, m in ipairs(ARGV) do
  local s = redis.call('HGET', KEYS[3], m)
  if s and redis.call('ZREM', KEYS[2], m) == 1 and redis.call('HEXISTS', KEYS[4], m) == 1 then
    redis.call('ZADD', KEYS[1], s, m)
    back = back + 1
  end
  redis.call('HDEL', KEYS[3], m)
end
return back
