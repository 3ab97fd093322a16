-- wrk script: GET /{code} for codes drawn at random from the seeded set the
-- bench imports (k0000000 .. k<N-1>, see run.sh).
--
-- Environment:
--   BENCH_N       codes in the set (default 100000)
--   BENCH_DIST    uniform | zipf | seq (default uniform); seq walks every code
--                 once in order (cache warm-up; use one wrk thread)
--   BENCH_SEED    RNG seed (default 42), so every run draws the same codes
--   BENCH_ZIPF_S  Zipf exponent (default 1.0): rank k is drawn ~ 1/k^s
--
-- Draws are made once, in init(), into a pool of pre-formatted requests that
-- request() cycles through: the load generator spends no time on sampling or
-- formatting while measuring, for the edge and the nginx baseline alike.

local n = tonumber(os.getenv("BENCH_N") or "100000")
local dist = os.getenv("BENCH_DIST") or "uniform"
local seed = tonumber(os.getenv("BENCH_SEED") or "42")
local s = tonumber(os.getenv("BENCH_ZIPF_S") or "1.0")
local POOL = 65536

local pool = {}
local idx = 0
local counter = 0

local function path(i)
  return string.format("/k%07d", i)
end

local function zipf_sampler()
  local cdf, total = {}, 0
  for k = 1, n do
    total = total + 1 / (k ^ s)
    cdf[k] = total
  end
  return function()
    local u = math.random() * total
    local lo, hi = 1, n
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
    end
    return lo - 1
  end
end

function init(args)
  math.randomseed(seed)
  if dist == "seq" then
    return
  end
  local draw
  if dist == "zipf" then
    draw = zipf_sampler()
  elseif dist == "uniform" then
    draw = function() return math.random(0, n - 1) end
  else
    error("BENCH_DIST must be uniform, zipf or seq, not " .. dist)
  end
  for i = 1, POOL do
    pool[i] = wrk.format("GET", path(draw()))
  end
end

function request()
  if dist == "seq" then
    local r = wrk.format("GET", path(counter % n))
    counter = counter + 1
    return r
  end
  idx = idx % POOL + 1
  return pool[idx]
end
