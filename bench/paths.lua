-- wrk script: GET the request paths listed in $BENCH_PATHS, one a line, in turn (bench/hpa_tune.py's postbacks).
-- Requests are built once in init() and cycled, so wrk spends no time formatting them per request.

local requests = {}
local n = 0
local i = 0

function init(args)
  local file = assert(io.open(assert(os.getenv("BENCH_PATHS"), "set BENCH_PATHS to a file of paths"), "r"))
  for line in file:lines() do
    if line:match("%S") then
      requests[#requests + 1] = wrk.format("GET", line, { ["User-Agent"] = "adclick-bench" })
    end
  end
  file:close()
  n = #requests
  assert(n > 0, "BENCH_PATHS lists no path")
  -- Different threads start at different offsets so they do not walk the list in step.
  i = math.random(0, n - 1)
end

function request()
  i = i % n + 1
  return requests[i]
end
