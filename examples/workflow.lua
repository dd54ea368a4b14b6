-- workflow.lua — fan-out with context.group: the first failure cancels the rest.
--
--   lua5.4 tools/with_paths.lua examples/workflow.lua
--
-- An order is checked by five services at once (at most three at a time).
-- The first time, every service answers: the group succeeds. The second
-- time, the shipping quote fails: the group's context is cancelled with that
-- failure as its cause, the steps still running stop at once and say why, and
-- the step still waiting for a slot is never started.
local context = require "lcontext"

local bg = context.background()
local t0

local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

-- A "service": answers after `latency` seconds, or fails with `failure`.
local function service(name, latency, failure)
  return function(ctx, order)
    say("  %-15s starts for %s", name, order)
    local ok, err = context.sleep(ctx, latency)
    if not ok then
      say("  %-15s stopped: %s (cause: %s)", name, tostring(err), tostring(ctx:cause()))
      return nil, err
    end
    if failure then
      say("  %-15s FAILED: %s", name, failure)
      return nil, failure
    end
    say("  %-15s ok", name)
    return name .. " ok"
  end
end

local function check_order(order, shipping_fails)
  t0 = context.now()
  local req = context.with_timeout(bg, 1) -- the order's whole budget
  local g, gctx = context.group(req, 3)
  say("order %s: 5 checks, at most 3 at once", order)
  local steps = {
    { "shipping", service("shipping", 0.040, shipping_fails and "shipping: quote service unavailable") },
    { "fraud", service("fraud", 0.200) },
    { "recommendations", service("recommendations", 0.300) },
    { "inventory", service("inventory", 0.020) },
    { "pricing", service("pricing", 0.030) },
  }
  for _, step in ipairs(steps) do
    -- g:go waits here while three checks run; after a failure it refuses
    if not g:go(step[2], order) then
      say("  %-15s not started: the group already failed", step[1])
    end
  end
  local err = g:wait()
  if err then
    say("order %s: group failed: %s", order, tostring(err))
  else
    say("order %s: all checks passed", order)
  end
  local errs = g:errors()
  say("  failures, in completion order: %d", #errs)
  for i, e in ipairs(errs) do say("    %d. %s", i, tostring(e)) end
  say("  group context after wait: %s, cause: %s", tostring(gctx:err()), tostring(gctx:cause()))
  return err
end

check_order("A-100", false)
print()
local err = check_order("A-101", true)
assert(err == "shipping: quote service unavailable")
