-- retry_breaker.lua — a flaky dependency behind context.retry + context.breaker.
--
--   lua5.4 tools/with_paths.lua examples/retry_breaker.lua
--
-- A local "inventory" service (in this process) answers in 5 ms. It drops one
-- call (a transient failure: retry hides it), then goes down for 250 ms (an
-- outage: the breaker opens so that callers fail fast instead of hammering
-- it), then comes back (a probe finds out; the breaker closes).
-- A client sends a request every 25 ms, each with a 500 ms budget.
local context = require "lcontext"

local bg = context.background()
local t0 = context.now()
local function ms() return (context.now() - t0) * 1000 end
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, ms(), ...))
end

-- The dependency: its 2nd call is dropped; from its 4th call on it is down
-- for 250 ms.
local service = { calls = 0 }
function service.get(ctx, item)
  service.calls = service.calls + 1
  local n = service.calls
  if n == 4 then service.down_until = context.now() + 0.25 end
  local ok, err = context.sleep(ctx, 0.005)
  if not ok then return nil, err end
  if service.down_until and context.now() < service.down_until then
    return nil, "503 inventory unavailable"
  end
  if n == 2 then return nil, "connection reset" end
  return ("%s: 7 in stock"):format(item)
end

local br = context.breaker {
  threshold = 3,      -- three failures in a row open it
  cooldown = 0.1,     -- 100 ms open, then one probe
  on_state_change = function(from, to) say("breaker: %s -> %s", from, to) end,
}

local stats = { requests = 0, served = 0, rejected = 0 }

local function request(i)
  stats.requests = stats.requests + 1
  local ctx, cancel <close> = context.with_timeout(bg, 0.5)
  local tries = 0
  local res, err, attempts, why = context.retry(ctx, function(actx)
    tries = tries + 1
    return br:call(actx, service.get, "widget")
  end, {
    attempts = 3, base = 0.005, jitter = "none",
    -- (an open breaker is an answer, not a hiccup: retry does not retry it)
    on_retry = function(n, e, delay)
      say("req %2d: attempt %d failed (%s), retrying in %.0f ms", i, n, tostring(e), delay * 1000)
    end,
  })
  if res then
    stats.served = stats.served + 1
    say("req %2d: ok after %d attempt(s): %s", i, tries, res)
  elseif err == context.breaker_open then
    stats.rejected = stats.rejected + 1
    if attempts == 1 then
      say("req %2d: rejected at once: %s (%s)", i, tostring(err), why)
    else
      say("req %2d: stopped at attempt %d: %s (%s)", i, attempts, tostring(err), why)
    end
  else
    say("req %2d: failed after %d attempt(s): %s (%s)", i, attempts, tostring(err), why)
  end
end

-- The client: a request every 25 ms until the breaker has closed again and
-- two more requests have been served.
local client = context.go(function()
  local after_close = 0
  for i = 1, 60 do
    local was_open = br:state() ~= "closed"
    request(i)
    if br:state() == "closed" and (was_open or after_close > 0) then
      after_close = after_close + 1
      if after_close == 3 then break end
    end
    context.sleep(bg, 0.025)
  end
end)
client:wait()

say("summary: %d requests, %d served, %d rejected by the open breaker; the service saw %d calls",
  stats.requests, stats.served, stats.rejected, service.calls)
