-- budget.lua — one request deadline, shared out between stages and calls.
--
--   lua5.4 tools/with_paths.lua examples/budget.lua
--
-- A request has 300 ms. context.split gives its stages (auth, process,
-- respond) shares of what is left when each starts, so time that auth does
-- not use is passed on. Inside "process", context.service_timeouts gives
-- each backend call its own timeout, clamped to what the stage has left
-- minus a reserve kept for the reply. A second request with only 100 ms
-- shows the fail-fast rules: a stage that cannot get its minimum, and a call
-- for which nothing is left, are done at once with deadline_exceeded.
local context = require "lcontext"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end
local function ms(s) return s and string.format("%.0f ms", s * 1000) or "no deadline" end

-- per-call timeouts; keep 50 ms of every stage for the reply
local services = context.service_timeouts { user = 0.1, search = 1, default = 0.2, overhead = 0.05 }

-- a backend that answers after `latency` seconds, unless its context ends
local function call(ctx, name, latency)
  local cctx, cancel <close> = services:with(ctx, name)
  if cctx:err() then
    say("    %-7s not called: %s (%s)", name, tostring(cctx:err()), tostring(cctx:cause()))
    return nil, cctx:err()
  end
  say("    %-7s called, allowed %s (needs %s)", name, ms(cctx:remaining()), ms(latency))
  local ok, err = context.sleep(cctx, latency)
  if ok then
    say("    %-7s answered", name)
    return name .. " data"
  end
  say("    %-7s gave up: %s (%s deadline)", name, tostring(err), context.classify_timeout(cctx))
  return nil, err
end

local function stage(s, name, work)
  local ctx, done <close> = s:stage(name)
  if ctx:err() then
    say("  %-7s failed fast: %s (%s)", name, tostring(ctx:err()), tostring(ctx:cause()))
    return false
  end
  say("  %-7s gets %s", name, ms(math.max(ctx:remaining(), 0)))
  local started = context.now()
  work(ctx)
  say("  %-7s done after %s; %s left for what follows", name,
    ms(context.now() - started), ms(s:remaining()))
  return true
end

local function handle(label, budget, auth_latency)
  local req, cancel <close> = context.with_timeout(bg, budget)
  say("%s: budget %s", label, ms(budget))
  local s = context.split(req, { { "auth", 0.1 }, { "process", 0.7 }, { "respond", 0.2 } },
    { min = 0.02 })
  local ok = stage(s, "auth", function(ctx) context.sleep(ctx, auth_latency) end)
    and stage(s, "process", function(ctx)
      call(ctx, "user", 0.04)
      if not call(ctx, "search", 0.5) then say("    search: serving without results") end
    end)
    and stage(s, "respond", function(ctx)
      call(ctx, "render", 0.01)
    end)
  say("%s: %s, %s of the budget left", label, ok and "answered" or "rejected",
    ms(math.max(req:remaining(), 0)))
end

context.go(function()
  handle("request 1", 0.3, 0.01)
  print()
  handle("request 2", 0.1, 0.001)
  print()
  -- a call made when the request has less left than the reserve
  local req, cancel <close> = context.with_timeout(bg, 0.04)
  say("request 3: budget 40 ms, less than the 50 ms reserve")
  call(req, "user", 0.001)
end)
context.run()
