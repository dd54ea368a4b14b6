-- hedge.lua — hedged requests ("The Tail at Scale") with context.hedge.
--
--   lua5.4 tools/with_paths.lua examples/hedge.lua
--
-- A local "search" backend answers in 2-4 ms, but one call in ten takes
-- 100 ms (a GC pause, a cold cache...). Twenty requests are sent three ways:
-- plainly; hedged after a fixed 10 ms (a second call goes out if the first
-- has not answered; the first answer wins, the other call is cancelled); and
-- hedged after the p90 of the latencies seen in the first run.
local context = require "lcontext"

local bg = context.background()

-- The backend: call n is slow when n % 10 == 4.
local backend = { calls = 0, cancelled = 0 }
function backend.search(ctx, query)
  backend.calls = backend.calls + 1
  local n = backend.calls
  local latency = (n % 10 == 4) and 0.100 or 0.002 + (n % 3) * 0.001
  local ok, err = context.sleep(ctx, latency)
  if not ok then
    backend.cancelled = backend.cancelled + 1
    return nil, err
  end
  return ("results for %q (call %d)"):format(query, n)
end

local function percentile(xs, q)
  local s = { table.unpack(xs) }
  table.sort(s)
  return s[math.max(1, math.ceil(q * #s))]
end

-- Send 20 requests one after the other with `send`, and report.
local function run(title, send)
  backend.calls, backend.cancelled = 0, 0
  local lat = {}
  for i = 1, 20 do
    local t = context.now()
    local ctx, cancel <close> = context.with_timeout(bg, 0.5)
    local res, err = send(ctx, i)
    assert(res, err)
    lat[i] = (context.now() - t) * 1000
  end
  context.run() -- let the cancelled losers finish
  print(("%-36s p50 %4.0f ms, p95 %4.0f ms, max %4.0f ms; backend calls %d (%d cancelled)")
    :format(title .. ":", percentile(lat, 0.5), percentile(lat, 0.95),
      percentile(lat, 1), backend.calls, backend.cancelled))
  return lat
end

-- 1. Plain calls; their latencies teach the estimator.
local est = context.latency_estimator { quantile = 0.9, min_samples = 10, min = 0.005 }
print("20 requests to a backend whose 1 call in 10 takes 100 ms")
run("without hedging", function(ctx, i)
  local t = context.now()
  local res, err = backend.search(ctx, "q" .. i)
  est:observe(context.now() - t)
  return res, err
end)

-- 2. Hedged after a fixed delay.
local hedges = 0
local function hedged(delay)
  return function(ctx, i)
    -- each attempt gets its own child context (actx) and its number
    return context.hedge(ctx, function(actx, attempt)
      return backend.search(actx, "q" .. i)
    end, {
      delay = delay,
      on_attempt = function(attempt)
        if attempt > 1 then
          hedges = hedges + 1
          print(("  request %2d: no answer yet, hedge sent"):format(i))
        end
      end,
    })
  end
end
run("hedged after 10 ms", hedged(0.010))
print(("  hedges sent: %d"):format(hedges))

-- 3. Hedged after the p90 of what the plain run saw (clamped to >= 5 ms).
hedges = 0
print(("adaptive delay: p90 of %d observed latencies = %.0f ms"):format(est:count(),
  est:delay() * 1000))
run("hedged after the observed p90", hedged(est))
print(("  hedges sent: %d"):format(hedges))
