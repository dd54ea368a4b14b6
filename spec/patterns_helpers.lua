-- Shared by the patterns_*_spec.lua files (lcontext.patterns, docs/patterns.md).
-- Not a spec itself. Load with `local P = require "spec.patterns_helpers"`.
--
-- Timing: lower bounds are strict (a deadline never fires early), upper
-- bounds are generous (a noisy 2-core box, valgrind, the GC-stress run).
local context = require "lcontext"
local B = require "spec.backend"

local P = {}

P.SLACK = require("spec.sched_helpers").SLACK -- upper-bound slack, seconds
P.EPS = 1e-6                -- float rounding only

-- Errors raised in tasks and callbacks are collected: none may go unnoticed.
local unexpected = {}

function P.setup()
  unexpected = {}
  context.on_error(function(err, tb)
    unexpected[#unexpected + 1] = tb or tostring(err)
  end)
end

-- Drain what is ready; the scheduler must then be idle (every test cancels
-- what it made, so nothing waits on a timer). In nginx, light threads end on
-- their next resume (there is no loop to run once): B.idle waits for that.
function P.teardown()
  if B.libev then
    for _ = 1, 3 do context.run("nowait") end
  end
  local idle, why = pcall(B.idle, "after the test")
  context.on_error(nil)
  if #unexpected > 0 then
    error("a task raised an unexpected error: " .. tostring(unexpected[1]))
  end
  if not idle then error(why, 0) end
end

-- Run fn(...) in a task and wait for it from the main thread (the loop runs
-- meanwhile); an error raised in it is raised again here, where busted sees it.
function P.in_task(fn, ...)
  local t = context.go(function(...) return table.pack(fn(...)) end, ...)
  local r, err = t:wait()
  if r == nil then error(err, 0) end
  return table.unpack(r, 1, r.n)
end

function P.between(v, lo, hi, what)
  if type(v) ~= "number" or v < lo - P.EPS or v > hi + P.EPS then
    error(("%s: expected a number in [%.6f, %.6f], got %s"):format(what or "value",
      lo, hi, tostring(v)), 2)
  end
end

-- Call make() -> ctx, cancel and check ctx:deadline(). The context was made
-- at some instant ts between two clock readings taken around make(); its
-- deadline must be expect(ts) (epoch seconds), for a non-decreasing expect:
-- so it lies in [expect(before), expect(after)], give or take 2 ms of clock
-- conversion. A stall of the machine widens the bracket; it cannot fail it.
function P.deadline_of(make, expect, what)
  local before = context.time()
  local ctx, cancel = make()
  local after = context.time()
  local d = ctx:deadline()
  local lo, hi = expect(before) - 0.002, expect(after) + 0.002
  if type(d) ~= "number" or d < lo or d > hi then
    error(("%s: deadline %s not in [%.4f, %.4f] (made within %.4f s)"):format(
      what or "deadline", tostring(d), lo, hi, after - before), 2)
  end
  return ctx, cancel
end

-- A settable clock for adaptive_timeout: `clock, set = P.fake_clock()`;
-- clock() reads it, set(t) moves it.
function P.fake_clock(t0)
  local t = t0 or 0
  return function() return t end, function(v) t = v end
end

return P
