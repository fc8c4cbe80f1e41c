-- Claim up to N payloads in priority order under a lease; first put expired leases back.
-- KEYS[1] ready zset, KEYS[2] leased zset (seq -> expiry ms), KEYS[3] lease scores hash,
-- KEYS[4] payloads hash, KEYS[5] paused flag, KEYS[6] arrivals zset.
-- ARGV[1] lease ms, ARGV[2] N, ARGV[3] aging ms (0: strict priority; else payloads that
-- waited longer are claimed first, oldest first, so low priorities cannot starve),
-- ARGV[4] linger ms, ARGV[5] fill: with fewer than `fill` payloads ready, nothing is claimed
-- until the next one in line has waited `linger` ms (bigger batches cost less per order).
-- While paused, expired leases still go back but nothing is claimed.
-- Returns {seq1, envelope1, seq2, envelope2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(expired) do
  local s = redis.call('HGET', KEYS[3], m)
  if s and redis.call('HEXISTS', KEYS[4], m) == 1 then
    redis.call('ZADD', KEYS[1], s, m)
  end
  redis.call('ZREM', KEYS[2], m)
  redis.call('HDEL', KEYS[3], m)
end
local n = tonumber(ARGV[2])
if n <= 0 or redis.call('EXISTS', KEYS[5]) == 1 then return {} end
local linger = tonumber(ARGV[4] or '0')
if linger > 0 and redis.call('ZCARD', KEYS[1]) < math.min(n, tonumber(ARGV[5] or '0')) then
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  local arrived = head[1] and redis.call('ZSCORE', KEYS[6], head[1])
  -- no arrival: a stale entry (acked after its lease ran out) or lost data; claim, never stall
  if arrived and now - tonumber(arrived) < linger then return {} end
end
local picked = {}
local aging = tonumber(ARGV[3] or '0')
if aging > 0 then
  -- arrivals also holds claimed payloads; look past a bounded number of them
  local old = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now - aging, 'LIMIT', 0, n + 1000)
  for _, m in ipairs(old) do
    if #picked >= 2 * n then break end
    local s = redis.call('ZSCORE', KEYS[1], m)
    if s then
      redis.call('ZREM', KEYS[1], m)
      picked[#picked + 1] = m
      picked[#picked + 1] = s
    end
  end
end
if #picked < 2 * n then
  local popped = redis.call('ZPOPMIN', KEYS[1], n - #picked / 2)
  for i = 1, #popped do picked[#picked + 1] = popped[i] end
end
local deadline = string.format('%.0f', now + tonumber(ARGV[1]))
local out = {}
for i = 1, #picked, 2 do
  local m, s = picked[i], picked[i + 1]
  local body = redis.call('HGET', KEYS[4], m)
  if body then
    redis.call('ZADD', KEYS[2], deadline, m)
    redis.call('HSET', KEYS[3], m, s)
    out[#out + 1] = m
    out[#out + 1] = body
  end
end
return out
