-- bench/sched_bench.lua: the scheduler's figures for `make bench`.
--
--   LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/?.so;;" \
--     lua5.4 bench/sched_bench.lua
--
-- Prints a small table:
--   * 100,000 tasks parked on one context: from cancel() until all resumed
--     (target <= 50 ms);
--   * deadline lateness (p50, p99, max) of 100,000 tasks each waiting on its
--     own with_timeout context, deadlines spread over 0.5..1.5 s
--     (target p99 <= 2 ms);
--   * with_timeout + cancel while 1,000,000 deadlines are pending *and
--     waited on* (so they really are in the timer wheel), beside the empty
--     case.
local context = require "lcontext"
local now = context.now
local bg = context.background()

local function pct(sorted, p)
  return sorted[math.max(1, math.ceil(#sorted * p))]
end

-- the best of 5 runs of n calls of body(), in ns per call (after a full GC)
local function best_of(n, body)
  local best = math.huge
  for _ = 1, 5 do
    collectgarbage()
    local t0 = now()
    for _ = 1, n do body() end
    best = math.min(best, (now() - t0) / n * 1e9)
  end
  return best
end

local rows = {}
local function row(name, value, unit, target)
  rows[#rows + 1] = { name, value, unit, target or "" }
end

-- 0. what metrics and tracking cost when on (they are off by default)
do
  local with_cancel = context.with_cancel
  local function below(parent)
    return function()
      local _, cancel = with_cancel(parent)
      cancel()
    end
  end
  local function wc() return best_of(500000, below(bg)) end
  local off = wc()
  -- the same below a cancellable parent: linked, so with a finaliser (what
  -- every context would pay if the core pooled nodes: see README)
  local linked = best_of(500000, below(context.with_cancel(bg)))
  context.debug.histograms(true)
  local hist = wc()
  context.debug.histograms(false)
  context.debug.track(true)
  local track = wc()
  context.debug.track(false)
  row("with_cancel+cancel, metrics histograms and tracking off", ("%.0f"):format(off), "ns")
  row("  below a cancellable parent (a finaliser each)", ("%.0f"):format(linked), "ns",
    ("%.2fx"):format(linked / off))
  row("  with lifetime histograms on", ("%.0f"):format(hist), "ns",
    ("%.2fx"):format(hist / off))
  row("  with leak tracking on (traceback per context)", ("%.0f"):format(track), "ns",
    ("%.2fx"):format(track / off))
end

-- 1. 100,000 tasks parked on one context
do
  local N = 100000
  local ctx, cancel = context.with_cancel(bg)
  local resumed = 0
  for _ = 1, N do
    context.go(function() ctx:done(); resumed = resumed + 1 end)
  end
  context.step() -- every task runs until it parks on ctx
  collectgarbage(); collectgarbage()
  local t0 = now()
  cancel()
  context.run()
  local dt = (now() - t0) * 1000
  assert(resumed == N, "not all tasks resumed")
  row("100k parked tasks: cancel until all resumed", ("%.1f"):format(dt), "ms", "<= 50 ms")
end

-- 2. deadline lateness, 100,000 pending deadlines each waited on
do
  local N = 100000
  local late = {}
  for i = 1, N do
    local d = 0.5 + (i % 1000) / 1000 -- 0.5 .. 1.5 s
    context.go(function()
      local t = now()
      local ctx = context.with_timeout(bg, d)
      ctx:done()
      late[#late + 1] = now() - (t + d)
    end)
  end
  context.run()
  table.sort(late)
  assert(late[1] >= 0, "a deadline fired early")
  row("lateness p50, 100k pending deadlines", ("%.2f"):format(pct(late, 0.5) * 1000), "ms")
  row("lateness p99, 100k pending deadlines", ("%.2f"):format(pct(late, 0.99) * 1000), "ms", "<= 2 ms")
  row("lateness max, 100k pending deadlines", ("%.2f"):format(late[#late] * 1000), "ms")
end

-- 3. with_timeout + cancel, empty wheel vs 1M waited-on deadlines
local function timeout_cancel()
  local with_timeout = context.with_timeout
  return best_of(1000000, function()
    local _, cancel = with_timeout(bg, 3600)
    cancel()
  end)
end
do
  local empty = timeout_cancel()
  local hold, cancel_all = context.with_cancel(bg)
  for _ = 1, 1000000 do
    context.after_func(context.with_timeout(hold, 3600 + math.random() * 3600),
      function() end)
  end
  local timers = require("lcontext.core").sched_stats().timers
  local full = timeout_cancel()
  cancel_all()
  context.run()
  row("with_timeout+cancel, empty wheel", ("%.0f"):format(empty), "ns")
  row(("with_timeout+cancel, %d timers in the wheel"):format(timers), ("%.0f"):format(full),
    "ns", ("ratio %.2fx (<= 1.3x)"):format(full / empty))
end

print("")
print("scheduler (lcontext, Lua 5.4)")
print(("%-52s | %9s | %s"):format("figure", "value", "target"))
print(("%s-|-%s-|-%s"):format(("-"):rep(52), ("-"):rep(9), ("-"):rep(22)))
for _, r in ipairs(rows) do
  print(("%-52s | %6s %-2s | %s"):format(r[1], r[2], r[3], r[4]))
end
