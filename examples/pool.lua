-- pool.lua — a resource pool whose loans end with the borrowing context.
--
--   lua5.4 tools/with_paths.lua examples/pool.lua
--
-- pool:acquire(ctx) lends a connection for as long as ctx lives: the loan
-- is returned by release(), or -- if the borrower forgets, crashes or runs
-- out of time -- by context.after_func once ctx is done. A borrower that
-- finds the pool empty waits with context.select on its own context and a
-- wake-up signal, so it gives up as soon as its context ends, and waiters
-- are served first come, first served.
local context = require "lcontext"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

---------------------------------------------------------------------------
-- The pool

local Pool = {}
Pool.__index = Pool

function Pool.new(resources)
  local free = {}
  for i, r in ipairs(resources) do free[i] = r end
  return setmetatable({ free = free, waiters = {} }, Pool)
end

-- Give `res` back: to the first waiter, else to the free list.
function Pool:put(res)
  local w = table.remove(self.waiters, 1)
  if w then
    w.res = res
    w.wake() -- a context used as a one-shot signal: cancelling it wakes the waiter
  else
    self.free[#self.free + 1] = res
  end
end

-- acquire(ctx) -> res, release | nil, ctx:err()
function Pool:acquire(ctx)
  if ctx:is_done() then return nil, ctx:err() end
  local res = table.remove(self.free)
  if not res then
    local signal, wake = context.with_cancel(bg)
    local w = { wake = wake }
    self.waiters[#self.waiters + 1] = w
    context.select(ctx, signal) -- whichever comes first
    wake()
    for i, x in ipairs(self.waiters) do -- gave up: leave the queue
      if x == w then table.remove(self.waiters, i) break end
    end
    if w.res and ctx:is_done() then
      self:put(w.res) -- handed over just as ctx ended: pass it on
      w.res = nil
    end
    if not w.res then return nil, ctx:err() end
    res = w.res
  end

  -- the loan ends with ctx, whatever happens to the borrower
  local returned = false
  local stop
  local function release(why)
    if returned then return end
    returned = true
    stop()
    say("  %s back in the pool (%s)", res, why or "released")
    self:put(res)
  end
  stop = context.after_func(ctx, function()
    release(("%s's context ended: %s"):format(ctx:value("who"), tostring(ctx:cause())))
  end)
  return res, function() release() end
end

function Pool:status()
  return ("%d free, %d waiting"):format(#self.free, #self.waiters)
end

---------------------------------------------------------------------------
-- Borrowers

local pool = Pool.new({ "conn-2", "conn-1" })

-- borrower(name, arrive, budget, work, how): how = "release", "forget" or "crash"
local function borrower(name, arrive, budget, work, how)
  return context.go(function()
    context.sleep(bg, arrive)
    local ctx, cancel <close> = context.with_timeout(context.with_value(bg, "who", name), budget)
    say("%s wants a connection (budget %.0f ms; pool: %s)", name, budget * 1000, pool:status())
    local conn, release = pool:acquire(ctx)
    if not conn then
      say("%s gave up waiting: %s", name, tostring(release))
      return
    end
    say("%s got %s", name, conn)
    context.sleep(ctx, work)
    if how == "release" then
      say("%s is done and releases %s", name, conn)
      release()
    elseif how == "forget" then
      say("%s is done but forgets to release %s", name, conn)
      context.sleep(bg, budget) -- still running, the loan is not: ctx ends first
    elseif how == "crash" then
      say("%s crashes while holding %s", name, conn)
      error(name .. " crashed", 0) -- <close> cancels ctx on the way out
    end
  end)
end

context.on_error(function(err) say("(task failed: %s)", tostring(err)) end)

-- (the timings leave 60 ms or more between the events that must not swap,
-- so the story holds on a loaded machine)
borrower("A", 0.000, 0.600, 0.060, "release") -- uses conn-1 for 60 ms
borrower("B", 0.010, 0.240, 0.030, "forget")  -- holds conn-2 until its budget ends
borrower("C", 0.020, 0.600, 0.090, "crash")   -- waits, gets conn-1, crashes
borrower("D", 0.030, 0.060, 0.030, "release") -- cannot wait long enough
borrower("E", 0.045, 0.600, 0.150, "release") -- gets what C dropped
borrower("F", 0.180, 0.600, 0.030, "release") -- gets what B forgot
context.run()
say("pool: %s", pool:status())
