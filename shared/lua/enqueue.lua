-- Hand off N payloads atomically: rate limits, sequence numbers, raw payloads, ready entries.
-- KEYS[1] seq counter, KEYS[2] ready zset, KEYS[3] payloads hash, KEYS[4] stats key prefix,
-- KEYS[5] shipped zset, KEYS[6] arrivals zset
-- ARGV[1] rate-key prefix, ARGV[2] per-key limit/s, ARGV[3] per-address limit/s,
-- ARGV[4] priority limit, ARGV[5] seq span, ARGV[6] n,
-- then per payload: priority, key_id, client address, shipped-set member ('' = no check), envelope.
-- Returns one entry per payload: its seq, -1 when over a rate limit, -2 when the order is
-- shipped (nothing stored for either).
-- A missing counter means Redis lost its data (no AOF, failover to a lagging replica):
-- starting again at 1 would make every update look older than the stored order.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('SEQ_UNSEEDED the sequence counter is missing')
end
local prefix = ARGV[1]
local per_key = tonumber(ARGV[2])
local per_addr = tonumber(ARGV[3])
local plimit = tonumber(ARGV[4])
local span = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local t = redis.call('TIME')
local second = t[1]
local now_ms = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))

local function over(name, limit)
  if limit <= 0 then return false end
  local k = prefix .. name .. ':' .. second
  local c = redis.call('INCR', k)
  if c == 1 then redis.call('EXPIRE', k, 2) end
  return c > limit
end

local out = {}
local accepted = 0
for i = 0, n - 1 do
  local b = 7 + i * 5
  local prio = tonumber(ARGV[b])
  local refused = over('k:' .. ARGV[b + 1], per_key)
  if over('a:' .. ARGV[b + 2], per_addr) then refused = true end
  if refused then
    out[#out + 1] = -1
  elseif ARGV[b + 3] ~= '' and redis.call('ZSCORE', KEYS[5], ARGV[b + 3]) then
    out[#out + 1] = -2
  else
    local seq = redis.call('INCR', KEYS[1])
    if prio > plimit then prio = plimit end
    if prio < -plimit then prio = -plimit end
    redis.call('HSET', KEYS[3], seq, ARGV[b + 4])
    redis.call('ZADD', KEYS[2], string.format('%.0f', (plimit - prio) * span + seq), seq)
    redis.call('ZADD', KEYS[6], now_ms, seq)
    out[#out + 1] = seq
    accepted = accepted + 1
  end
end
if accepted > 0 then
  local stats = KEYS[4] .. second
  redis.call('HINCRBY', stats, 'received', accepted)
  redis.call('EXPIRE', stats, 1200)
end
return out
