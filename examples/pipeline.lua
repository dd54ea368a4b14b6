-- pipeline.lua — stages connected by channels, Go's pipeline pattern.
--
--   lua5.4 tools/with_paths.lua examples/pipeline.lua
--
-- A request runs three stages at once, each a task of context.spawn under
-- the request's context, connected by channels:
--
--   load --items--> price --priced--> total
--
-- Each stage receives until its input is closed and drained (recv returns
-- nil, false), and closes its output when it stops sending, whatever the
-- reason: closing is the sender's call, and it says "nothing more", not
-- "all went well". A cancelled request stops every stage at its next wait:
-- a blocked send or receive returns nil, err (a send that fails was not
-- sent). A stage that sees its input closed asks its context which it was:
-- an upstream stage that stopped closes too, and a receiver blocked when
-- the request ended may be handed that close before it runs again (a
-- completed operation stands: "done wins"), as in Go, where a select with
-- both ready picks either.
--
-- "price" asks a price service that knows nothing of contexts (it sleeps on
-- background()). It stops anyway: inside a spawned task every wait also
-- ends when the task's context ends (the bound rule).
local context = require "lcontext"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

local USER = context.key("user")

local ORDER = { { "book", 12.00 }, { "lamp", 19.50 }, { "chair", 27.00 } }

-- a library call that takes no context
local function price_service(item, delay)
  local ok, err = context.sleep(bg, delay) -- (bounded anyway: it runs in a spawned task)
  if not ok then return nil, err end
  return item[2]
end

local function items(n) return n .. (n == 1 and " item" or " items") end

---------------------------------------------------------------------------
-- The stages: fn(ctx, ...) -> a summary (and a result), in a spawned task

local function load(ctx, out)
  local sent = 0
  for _, item in ipairs(ORDER) do
    local ok, err = out:send(ctx, item)
    if not ok then -- the item was not sent
      out:close()
      return ("stopped after sending %d of %s: %s"):format(sent, items(#ORDER), tostring(err))
    end
    sent = sent + 1
  end
  out:close() -- the end of the input
  return ("sent %s for %s"):format(items(sent), ctx:value(USER))
end

local function price(ctx, input, out, delay)
  local n = 0
  while true do
    local item, ok = input:recv(ctx) -- item, true | nil, false (closed) | nil, err
    if ok ~= true then
      out:close()
      if ok == false and ctx:err() == nil then return "priced " .. items(n) end
      return ("stopped after %s: %s"):format(items(n), tostring(ctx:err() or ok))
    end
    local p, err = price_service(item, delay)
    if p == nil then
      out:close()
      return ("stopped pricing the %s, after %s: %s"):format(item[1], items(n), tostring(err))
    end
    local sent, serr = out:send(ctx, { item[1], p })
    if not sent then -- not sent: total never sees it
      out:close()
      return ("stopped after %s: %s"):format(items(n), tostring(serr))
    end
    n = n + 1
  end
end

local function total(ctx, input)
  local sum, n = 0, 0
  while true do
    local item, ok = input:recv(ctx)
    if ok == false and ctx:err() == nil then return "summed " .. items(n), sum end -- the end
    if ok ~= true then -- ended, or closed because price stopped
      return ("stopped after %s: %s"):format(items(n), tostring(ctx:err() or ok))
    end
    sum, n = sum + item[2], n + 1
  end
end

---------------------------------------------------------------------------
-- One request: the stages, then how each ended

local function request(id, opts)
  local req, cancel <close> = context.with_cancel_cause(bg)
  local ctx, release <close> = context.with_timeout(context.with_value(req, USER, "alice"),
    opts.budget)
  say("%s: budget %.0f ms, pricing takes %.0f ms an item", id, opts.budget * 1000,
    opts.price_time * 1000)
  if opts.client_leaves_after then
    context.spawn(ctx, function(c)
      if context.sleep(c, opts.client_leaves_after) then
        say("  (the client disconnects)")
        cancel("client went away")
      end
    end)
  end

  local items, priced = context.channel(), context.channel(1)
  local stages = {
    { "load", context.spawn(ctx, load, items) },
    { "price", context.spawn(ctx, price, items, priced, opts.price_time) },
    { "total", context.spawn(ctx, total, priced) },
  }
  local sum
  for _, st in ipairs(stages) do
    local summary, result = st[2]:wait()
    say("  %-5s %s", st[1], summary)
    if st[1] == "total" then sum = result end
  end
  if ctx:err() == nil then
    say("%s: done for %s, total %.2f", id, ctx:value(USER), sum)
  else
    say("%s: stopped: %s (%s; cause: %s)", id, tostring(ctx:err()),
      context.classify(ctx:err()), tostring(ctx:cause()))
  end
end

context.go(function()
  -- (each story keeps 50 ms or more between the events that must not swap,
  -- so that it holds on a loaded machine)
  request("req-1", { budget = 0.5, price_time = 0.01 })
  print()
  -- the client leaves while the second item is priced
  request("req-2", { budget = 0.5, price_time = 0.1, client_leaves_after = 0.15 })
  print()
  -- pricing is too slow for the budget
  request("req-3", { budget = 0.2, price_time = 0.5 })
end)
context.run()
