-- wrk script for the long-tail runs: every request picks one of BENCH_SLUGS links, bench-0 .. bench-N-1.
-- BENCH_DIST=uniform: each link equally likely, so a cache smaller than N misses often.
-- BENCH_DIST=zipf: link k (k = 0 first) with probability proportional to 1/(k+1), drawn by inverting the
-- continuous 1/x law on [1, N+1), which is Zipf with s = 1 up to rounding; with N = 1,000,000 the 100,000
-- most clicked links take about 83% of the clicks, as a network's best offers do.
-- Unlike clicks.lua a path is formatted per request (there are too many to prebuild); wrk runs on its own core.

-- wrk runs a script by its path as given (the chunk's source, "@path"), so visitors.lua is found beside it.
local visitors = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "visitors.lua")
local agents, countries = visitors.agents, visitors.countries
local tails = {}
local slugs = 64
local zipf = false
local logn1 = 0
local i = 0

function init(args)
  slugs = tonumber(os.getenv("BENCH_SLUGS") or "64")
  zipf = (os.getenv("BENCH_DIST") or "uniform") == "zipf"
  logn1 = math.log(slugs + 1)
  -- Seeded per thread, so the threads do not draw the same sequence.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  for k = 0, 255 do
    tails[k + 1] = string.format(
      "&sub1=pub%d&sub2=ad%%20%d HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: %s\r\nCF-IPCountry: %s\r\nX-Forwarded-For: 203.0.113.%d\r\n\r\n",
      k % 97, k % 13, agents[(k % #agents) + 1], countries[(k % #countries) + 1], k % 250 + 1)
  end
end

local function pick()
  if zipf then
    local k = math.floor(math.exp(math.random() * logn1)) - 1
    if k >= slugs then k = slugs - 1 end
    return k
  end
  return math.random(0, slugs - 1)
end

function request()
  i = i % 256 + 1
  return "GET /c/bench-" .. pick() .. "?gclid=g" .. i .. tails[i]
end
