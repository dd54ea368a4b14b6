-- pool.lua — a connection pool on a semaphore and a channel, whose loans end
-- with the borrowing context.
--
--   lua5.4 tools/with_paths.lua examples/pool.lua
--
-- The pool is two primitives of lcontext's structured concurrency
-- (docs/concurrency.md):
--
--   * a semaphore of `size` units: a unit is the right to hold a connection.
--     Borrowers that find none wait in sem:acquire(ctx), first come, first
--     served (the semaphore is FIFO), and give up as soon as their context
--     ends, holding nothing.
--   * a buffered channel of idle connections, with room for all of them, so
--     giving one back never waits. A connection is opened the first time a
--     unit finds the channel empty.
--
-- pool:acquire(ctx) lends a connection for as long as ctx lives: the loan
-- is returned by release(), or -- if the borrower forgets, crashes or runs
-- out of time -- by context.after_func once ctx is done. Each borrower is
-- a task of context.spawn, whose context ends when the borrower returns or
-- raises: a crash gives its connection back by itself.
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

-- Pool.new(size, open): open() makes a new connection
function Pool.new(size, open)
  return setmetatable({
    size = size,
    open = open,
    opened = 0,
    units = context.semaphore(size), -- held: connections lent out
    idle = context.channel(size),    -- connections nobody holds
  }, Pool)
end

-- acquire(ctx) -> conn, release | nil, ctx:err()
function Pool:acquire(ctx)
  local ok, err = self.units:acquire(ctx) -- waits in line, bounded by ctx
  if not ok then return nil, err end
  -- A unit granted in the instant ctx ended stands (done wins): the loan
  -- would end at once, so give it back.
  if ctx:err() then
    self.units:release()
    return nil, ctx:err()
  end
  local conn = self.idle:try_recv() -- a unit always finds room or a connection
  if conn == nil then
    self.opened = self.opened + 1
    conn = self.open(self.opened)
  end

  -- the loan ends with ctx, whatever happens to the borrower
  local returned = false
  local stop
  local function release(why)
    if returned then return end
    returned = true
    stop()
    say("  %s back in the pool (%s)", conn, why or "released")
    assert(self.idle:try_send(conn)) -- never waits: room for every connection
    self.units:release()             -- wakes the first in line
  end
  stop = context.after_func(ctx, function()
    release(("%s's context ended: %s"):format(ctx:value("who"), tostring(ctx:cause())))
  end)
  return conn, function() release() end
end

function Pool:status()
  return ("%d open, %d idle, %d lent, %d waiting"):format(self.opened, self.idle:len(),
    self.units:held(), self.units:waiting())
end

---------------------------------------------------------------------------
-- Borrowers

local pool = Pool.new(2, function(n) return "conn-" .. n end)

-- borrower(name, arrive, budget, work, how): how = "release", "forget" or "crash"
local function borrower(name, arrive, budget, work, how)
  return context.spawn(context.with_value(bg, "who", name), function(task_ctx)
    context.sleep(task_ctx, arrive)
    local ctx, cancel <close> = context.with_timeout(task_ctx, budget)
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
      error(name .. " crashed", 0) -- its task's context ends: so does the loan
    end
  end)
end

context.on_error(function(err) say("(task failed: %s)", tostring(err)) end)

-- (the timings leave 60 ms or more between the events that must not swap,
-- so the story holds on a loaded machine)
borrower("A", 0.000, 0.600, 0.060, "release") -- opens conn-1, uses it for 60 ms
borrower("B", 0.010, 0.240, 0.030, "forget")  -- opens conn-2, holds it until its budget ends
borrower("C", 0.020, 0.600, 0.090, "crash")   -- waits, gets conn-1, crashes
borrower("D", 0.030, 0.060, 0.030, "release") -- cannot wait long enough
borrower("E", 0.045, 0.600, 0.150, "release") -- gets what C dropped
borrower("F", 0.180, 0.600, 0.030, "release") -- gets what B forgot
context.run()
say("pool: %s", pool:status())
local s = context.sync_stats()
say("semaphores: %d units held, %d waiting", s.semaphore_held, s.semaphore_waiting)
