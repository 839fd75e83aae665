-- wrk script: spread clicks over the benchmark's slugs, sub ids, user agents and countries.
-- Requests are built once in init() and cycled, so wrk spends no time formatting them per request.
-- Environment: BENCH_SLUGS (number of slugs bench-0 .. bench-N-1, default 64).

-- wrk runs a script by its path as given (the chunk's source, "@path"), so visitors.lua is found beside it.
local visitors = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "visitors.lua")
local agents, countries = visitors.agents, visitors.countries
local requests = {}
local n = 0
local i = 0

function init(args)
  local slugs = tonumber(os.getenv("BENCH_SLUGS") or "64")
  -- Different threads start at different offsets so they do not walk the table in step.
  i = math.random(0, 1023)
  for k = 0, 1023 do
    local path = string.format("/c/bench-%d?sub1=pub%d&sub2=ad%%20%d&gclid=g%d", k % slugs, k % 97, k % 13, k)
    local headers = {
      ["User-Agent"] = agents[(k % #agents) + 1],
      ["CF-IPCountry"] = countries[(k % #countries) + 1],
      ["X-Forwarded-For"] = string.format("203.0.113.%d", k % 250 + 1),
    }
    requests[k + 1] = wrk.format("GET", path, headers)
  end
  n = #requests
end

function request()
  i = i % n + 1
  return requests[i]
end
