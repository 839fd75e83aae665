-- wrk script: spread clicks over the benchmark's slugs, sub ids, user agents and countries.
-- Requests are built once in init() and cycled, so wrk spends no time formatting them per request.
-- Environment: BENCH_SLUGS (number of slugs bench-0 .. bench-N-1, default 64).

local agents = {
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
}
local countries = { "US", "CA", "DE", "FR", "BR", "IN", "JP", "GB" }
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
