-- pipeline.lua — stages that pass an evolving context along.
--
--   lua5.4 tools/with_paths.lua examples/pipeline.lua
--
-- Each stage receives the context the previous stage returned and adds
-- what it learned with context.with_value, so later stages (and anything
-- they call) see it, and nothing global is needed. Between stages the
-- runner calls ctx:check(), which raises the context's error once it is
-- done: a cancelled or late request stops at the next stage boundary even
-- when the stage that was running did not watch the context itself.
local context = require "lcontext"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

local REQUEST, USER, ORDER, TOTAL = context.key("request"), context.key("user"),
  context.key("order"), context.key("total")

-- Each stage: fn(ctx) -> the context for the next stage. A stage fails by
-- raising (ctx:check() raises the sentinels themselves).
local stages = {
  { name = "authenticate", fn = function(ctx)
      assert(context.sleep(ctx, 0.01))
      return context.with_value(ctx, USER, "alice")
    end },
  { name = "load order", fn = function(ctx, opts)
      -- this stage does not watch the context: it always runs to its end
      context.sleep(bg, opts.load_time)
      return context.with_value(ctx, ORDER, { id = 1042, items = 3, price = 19.5 })
    end },
  { name = "price", fn = function(ctx, opts)
      local ok, err = context.sleep(ctx, opts.price_time) -- watches the context
      if not ok then error(err, 0) end
      local order = ctx:value(ORDER)
      return context.with_value(ctx, TOTAL, order.items * order.price)
    end },
  { name = "charge", fn = function(ctx)
      assert(context.sleep(ctx, 0.005))
      say("  charging %s %.2f for order %d", ctx:value(USER), ctx:value(TOTAL),
        ctx:value(ORDER).id)
      return ctx
    end },
}

local function run_pipeline(ctx, opts, where)
  for _, st in ipairs(stages) do
    where.at = "before '" .. st.name .. "'"
    ctx:check() -- a checkpoint: raises canceled / deadline_exceeded once done
    say("  %-12s starts", st.name)
    where.at = "in '" .. st.name .. "'"
    ctx = st.fn(ctx, opts)
  end
  return ctx
end

-- Runs one request through the pipeline and tells how it ended.
local function request(id, opts)
  local req, cancel <close> = context.with_cancel_cause(bg)
  local ctx, release <close> = context.with_timeout(context.with_value(req, REQUEST, id),
    opts.budget)
  say("%s: budget %.0f ms", id, opts.budget * 1000)
  if opts.client_leaves_after then
    context.go(function()
      if context.sleep(ctx, opts.client_leaves_after) then
        say("  (the client disconnects)")
        cancel("client went away")
      end
    end)
  end
  local where = {}
  local ok, final = pcall(run_pipeline, ctx, opts, where)
  if ok then
    say("%s: done for %s, total %.2f", final:value(REQUEST), final:value(USER),
      final:value(TOTAL))
  else
    local kind = context.classify(final)
    say("%s: stopped %s: %s (%s; cause: %s)", id, where.at, tostring(final), kind,
      tostring(ctx:cause()))
  end
end

context.go(function()
  -- (each story keeps 50 ms or more between the events that must not swap,
  -- so that it holds on a loaded machine)
  request("req-1", { budget = 0.5, load_time = 0.02, price_time = 0.01 })
  print()
  -- the client leaves while "load order" runs: the checkpoint stops it after
  request("req-2", { budget = 0.5, load_time = 0.15, price_time = 0.01,
    client_leaves_after = 0.06 })
  print()
  -- "price" is too slow for the budget: it watches the context and stops
  request("req-3", { budget = 0.2, load_time = 0.01, price_time = 0.5 })
end)
context.run()
