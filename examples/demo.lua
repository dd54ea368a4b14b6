-- demo.lua — a request's lifecycle with lcontext, told as it happens.
--
--   make demo        (or: lua5.4 tools/with_paths.lua examples/demo.lua)
--
-- A request arrives with a 250 ms budget. It carries a request id, fans out
-- to three backends with per-call timeouts, loses one to its own timeout,
-- and is finally abandoned by the client: the cancel cascades to every
-- call still running, with the reason attached.
local context = require "lcontext"

local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

local REQUEST_ID = context.key("request_id")
local bg = context.background()

-- 1. The request: a deadline, a way to abandon it with a reason, and a value.
local req, abandon = context.with_cancel_cause(bg)
local budget, release = context.with_timeout(req, 0.25)
local ctx = context.with_value(budget, REQUEST_ID, "req-42")
say("request %s arrives: %s", ctx:value(REQUEST_ID), tostring(budget))
say("  deadline in %.0f ms", ctx:remaining() * 1000)

-- 2. A backend call: its own timeout, inside the request's budget.
local function call(name, latency, timeout)
  return context.go(function()
    local cctx, cancel <close> = context.with_timeout(ctx, timeout)
    say("%-6s starts (needs %3.0f ms, allowed %3.0f ms) for %s", name,
      latency * 1000, timeout * 1000, cctx:value(REQUEST_ID))
    local ok, err = context.sleep(cctx, latency) -- the "work"
    if ok then
      say("%-6s answered", name)
      return name .. ": ok"
    end
    local whose = context.origin(cctx) == cctx and "its own timeout"
      or "the request"
    say("%-6s gave up: %s (ended by %s; cause: %s)", name, tostring(err),
      whose, tostring(cctx:cause()))
    return nil, err
  end)
end

local auth  = call("auth",  0.02, 0.10) -- quick
local db    = call("db",    0.40, 0.08) -- slower than its own timeout
local cache = call("cache", 0.50, 0.30) -- still running when the client leaves

-- 3. The client disconnects after 120 ms: abandon the request, with a cause.
context.after_func(req, function()
  say("after_func: request %s cleaned up", ctx:value(REQUEST_ID))
end)
context.go(function()
  context.sleep(bg, 0.12)
  say("client disconnected: cancelling the request")
  abandon("client went away")
end)

-- 4. Run the loop until everything has finished.
context.run()
release()

say("results: auth=%s  db=%s  cache=%s", tostring(auth:wait()),
  tostring(select(2, db:wait())), tostring(select(2, cache:wait())))
say("request: err=%s  cause=%s", tostring(ctx:err()), tostring(context.cause(ctx)))
say("a context made now from the request is done at once: %s",
  tostring(ctx:with_cancel():err()))
