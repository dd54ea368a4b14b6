-- sched_helpers.lua — checks shared by the specs that run tasks (sched, fd,
-- signal, and the helpers' specs); not a spec itself. Timing: lower bounds are strict (a deadline
-- never fires early), upper bounds generous (a noisy 2-core box, valgrind,
-- the GC-stress run).
local context = require "lcontext"
local core = require "lcontext.core"
local h = require "spec.helpers"

local H = {}

H.SLOW = os.getenv("LCONTEXT_VALGRIND") or os.getenv("LCONTEXT_GC_STRESS")
H.SLACK = H.SLOW and 5 or 0.5 -- upper-bound slack, seconds
H.EPS = 1e-6                  -- float rounding only: lower bounds are strict

function H.stats() return core.sched_stats() end

function H.is(actual, expected, what)
  if not rawequal(actual, expected) then
    error(("%s: expected %s, got %s"):format(what or "value", tostring(expected),
      tostring(actual)), 2)
  end
end

function H.at_least(elapsed, lower, what)
  if not (elapsed >= lower - H.EPS) then
    error(("%s: fired early, after %.6f s (< %.6f s)"):format(what or "timer",
      elapsed, lower), 2)
  end
end

function H.at_most(elapsed, upper, what)
  if not (elapsed <= upper) then
    error(("%s: took %.6f s (> %.6f s)"):format(what or "wait", elapsed, upper), 2)
  end
end

function H.matches(s, pat, what)
  if type(s) ~= "string" or not s:find(pat) then
    error(("%s: %q does not match %q"):format(what or "message", tostring(s), pat), 2)
  end
end

-- the scheduler is idle: no task, no timer, no fd wait
function H.idle(what)
  local s = core.sched_stats()
  if s.tasks ~= 0 or s.timers ~= 0 or s.fd_waits ~= 0 then
    error(("%s: scheduler not idle: tasks=%d timers=%d fd_waits=%d"):format(
      what or "idle", s.tasks, s.timers, s.fd_waits), 2)
  end
end

-- The per-test guard of the specs that run tasks: every error a task
-- raises to the handler is collected, and after the test there must be
-- none, and the scheduler must be idle. Returns the two functions for
-- before_each and after_each; `settle` (optional) runs first in the
-- second (to let cancelled losers finish, say). A test that expects errors
-- installs its own handler.
function H.task_guard(settle)
  local unexpected
  local function start()
    unexpected = {}
    context.on_error(function(err, tb) unexpected[#unexpected + 1] = tb or tostring(err) end)
  end
  local function check()
    if settle then settle() end
    context.on_error(nil)
    if #unexpected > 0 then
      error("a task raised an unexpected error: " .. tostring(unexpected[1]), 0)
    end
    H.idle("after the test")
  end
  return start, check
end

-- Run a Lua chunk in a fresh interpreter of the runtime running the suite
-- (lua5.4, lua5.3, lua5.1 or luajit), with this suite's module paths.
-- Returns its combined stdout+stderr and its exit status.
function H.subprocess(code)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath))
  f:write(code)
  f:close()
  local p = assert(io.popen(h.LUA .. " " .. name .. " 2>&1; echo \"__rc=$?\""))
  local out = p:read("*a")
  p:close()
  os.remove(name)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return out:gsub("__rc=%d+%s*$", ""), rc
end

return H
