-- sched_helpers.lua — checks shared by the specs that run tasks (sched, fd,
-- signal, and the helpers' specs); not a spec itself. Timing: lower bounds are strict (a deadline
-- never fires early), upper bounds generous (a noisy 2-core box, valgrind,
-- the GC-stress run).
local context = require "lcontext"
local core = require "lcontext.core"
local h = require "spec.helpers"
local B = require "spec.backend"

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

-- the scheduler is idle: no task, no timer, no fd wait (in nginx, where
-- the libev figures say nothing: B.idle, no light thread of lcontext.ngx
-- left, no wait, no callback)
function H.idle(what)
  if B.ngx then return B.idle(what) end
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

-- Run a Lua chunk in a child interpreter of the runtime running the suite,
-- with this suite's module paths and environment (under the asan suite the
-- child inherits LD_PRELOAD and loads build-asan), bounded by coreutils'
-- `timeout`: a crash or a hang fails one test instead of killing busted.
-- opts.limit: seconds before the child is killed (20); opts.sh: shell text
-- run before `timeout` in the same shell (e.g. "trap '' PIPE;"); opts.wrap:
-- a command that runs the interpreter (e.g. "nohup": timeout itself
-- catches HUP, INT and TERM, which its child then finds at SIG_DFL).
-- Returns its stdout+stderr, its exit status (124: timed out; 128+N:
-- killed by signal N) and the seconds it ran.
function H.child(code, opts)
  opts = opts or {}
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath))
  f:write(code)
  f:close()
  local cmd = ("%s timeout -k 2 %d %s %s %s 2>&1; echo \"__rc=$?\""):format(opts.sh or "",
    opts.limit or 20, opts.wrap or "", h.LUA, name)
  local t0 = h.now()
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  local took = h.now() - t0
  os.remove(name)
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  return (out:gsub("__rc=%d+%s*$", "")), rc, took
end

-- The child's report: `out` must hold a line "OK" and no sign of a crash;
-- otherwise an error that quotes the child's output and exit status.
function H.child_ok(out, rc, what)
  if rc ~= 0 or not out:find("\nOK\n", 1, true) and not out:find("^OK\n") then
    local why = rc == 124 and " (timed out: a hang)" or
      (rc and rc > 128 and (" (killed by signal %d)"):format(rc - 128) or "")
    error(("%s: child exited with status %s%s:\n%s"):format(what or "child",
      tostring(rc), why, out), 2)
  end
end

return H
