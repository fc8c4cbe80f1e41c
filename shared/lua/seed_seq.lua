-- Raise the sequence counter to at least ARGV[1] (never lower it). KEYS[1] seq counter.
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return tonumber(ARGV[1])
end
return current
