--- lcontext: Go's context package for Lua.
-- The C core (lcontext.core) holds the context tree, the timer wheel and the
-- scheduler; this module is the public face. It re-exports the core and adds
-- the waiting functions, whose suspension is written here, in Lua: the core
-- registers what a task waits for and hands back a token, and the task
-- yields that token to the loop. No C yield is involved, so the same code
-- runs where lua_yieldk does not exist (LuaJIT).
-- Inside OpenResty the backend that suspends light threads on ngx.semaphore
-- is the one to use (lua/lcontext/ngx.lua; it never requires this file).
if type(ngx) == "table" and type(ngx.config) == "table" and ngx.config.ngx_lua_version then
  return require "lcontext.ngx"
end

local core = require("lcontext.check").load_core()

local M = {}
for k, v in pairs(core) do
  if k:sub(1, 1) ~= "_" and k ~= "sched_stats" and k ~= "bench_alloc" then M[k] = v end
end
M._VERSION = "lcontext scm"

local check = require "lcontext.check"


local methods = core._methods
local task_methods = core._task_methods
-- for lua/lcontext/tasks.lua: the tasks' methods, and fn() once t has ended
check.task_methods = task_methods
check.on_task_end = core._on_end
-- for context.dump: every live task, with what it waits on
do
  local tasks, task_waits, task_thread = core._tasks, core._task_waits, core._task_thread
  function check.task_list()
    local out = {}
    for i, t in ipairs(tasks()) do
      local state, since, waits = task_waits(t)
      local co, fn = task_thread(t)
      out[i] = { task = t, co = co, fn = fn, state = state, since = since, waits = waits }
    end
    return out
  end
end
local park, TOKEN, results = core._park, core._token(), core._results
-- channels and semaphores in C where the runtime can yield from C (Lua
-- 5.3+: csrc/l_sync.c); lua/lcontext/sync.lua falls back on its own
if core._channel then
  check.core_sync = { channel = core._channel, semaphore = core._semaphore,
    select = core._select, stats = core._sync_stats, init = core._sync_init }
  check.set_bound_core = core._set_bound
end
local yield, type, select, error = coroutine.yield, type, select, error
local floor = math.floor

-- Wait for the first of the waitables (contexts, tasks, seconds, {fd=,mode=})
-- and return its index. In a task this suspends; on the main thread the core
-- runs the loop until one fires.
-- Errors raised by the core (a bad waitable, a deadlock, a coroutine that is
-- not a task) are re-raised at the caller of the public function: level 3.
-- (Called through pcall, the core's errors carry no position of their own.)
local pcall = pcall

-- park the running coroutine: true and the index of the wait that fired, or
-- false and the error the core raised
local function park_here(fname, ...)
  local ok, i = pcall(park, fname, ...)
  if ok and i == TOKEN then
    i = yield(TOKEN)
  end
  return ok, i
end

-- Lua 5.1 only: a wait made inside a check.pcall body (a coroutine of its
-- own) is parked by the task that runs it (see lcontext/check.lua)
local outer = check.outer

-- wait(fname, waitable...) -> the index of the one that fired; negated for
-- an fd that cannot be waited on (not open), which also "fires". (Kept
-- lean: a task's coroutine stack starts small, and every wait runs here.)
local bound = check.bound
local bound_ctx, MAIN, running = bound.ctx, bound.MAIN, coroutine.running
local unpack = check.unpack

local function wait(fname, ...)
  local ok, i
  if bound.active then -- in a spawned task: its context ends the wait too
    local b = bound_ctx[running() or MAIN]
    if b ~= nil and b:is_done() then return 0 end -- the bound first, as ctx
    if b ~= nil and b ~= (...) then
      local n = select("#", ...)
      local args = { ... }
      args[n + 1] = b
      if outer then
        ok, i = outer(park_here, fname, unpack(args, 1, n + 1))
      else
        ok, i = park_here(fname, unpack(args, 1, n + 1))
      end
      if not ok then error(i, 3) end
      if i == n + 1 then return 0 end -- 0: the bound ended it
      return i
    end
  end
  if outer then
    ok, i = outer(park_here, fname, ...)
  else -- park_here(fname, ...), inline
    ok, i = pcall(park, fname, ...)
    if ok and i == TOKEN then
      i = yield(TOKEN)
    end
  end
  if not ok then error(i, 3) end
  return i
end

local check_ctx, check_seconds = check.ctx, check.seconds

-- the error of the running task's bound, once wait() returned 0
local function bound_err()
  return bound_ctx[running() or MAIN]:err()
end

--- ctx:done() -> ctx:err(), once ctx is done.
function methods.done(ctx)
  check_ctx(ctx, "done", 1)
  if wait("done", ctx) == 0 then return bound_err() end
  return ctx:err()
end

--- context.sleep(ctx, seconds) -> true | nil, ctx:err()
function M.sleep(ctx, seconds)
  check_ctx(ctx, "sleep", 1)
  check_seconds(seconds, "sleep", 2)
  local i = wait("sleep", ctx, seconds)
  if i == 2 then return true end
  if i == 0 then return nil, bound_err() end
  return nil, ctx:err()
end

local modes = { r = true, w = true, rw = true }

local MAXFD = 2147483647 -- an fd is a C int

-- fd_of(fd, fname, argn) -> the descriptor number of fd (an integer, or an
-- object with :getfd()), or a bad-argument error
local function fd_of(fd, fname, argn)
  if type(fd) == "number" then
    if fd ~= floor(fd) or fd < 0 or fd > MAXFD then
      error(("bad argument #%d to '%s' (bad file descriptor)"):format(argn, fname), 3)
    end
    return fd
  end
  local ok, getfd = pcall(function() return fd.getfd end)
  if ok and getfd then
    local n = fd:getfd()
    if type(n) == "number" and n >= 0 and n <= MAXFD and n == floor(n) then return n end
    error(("bad argument #%d to '%s' (object has no open file descriptor)"):format(argn, fname), 3)
  end
  error(("bad argument #%d to '%s' (file descriptor or object with :getfd() expected, got %s)")
    :format(argn, fname, type(fd)), 3)
end

--- context.wait_fd(ctx, fd, mode) -> true | nil, ctx:err()
function M.wait_fd(ctx, fd, mode)
  check_ctx(ctx, "wait_fd", 1)
  local n = fd_of(fd, "wait_fd", 2)
  mode = mode or "r"
  if not modes[mode] then
    error(("bad argument #3 to 'wait_fd' (\"r\", \"w\" or \"rw\" expected, got %s)")
      :format(tostring(mode)), 2)
  end
  local i = wait("wait_fd", ctx, { fd = n, mode = mode })
  if i == 2 then return true end
  if i == -2 then return nil, ("wait_fd: fd %d is not open (bad file descriptor)"):format(n) end
  if i == 0 then return nil, bound_err() end
  return nil, ctx:err()
end

-- For lcontext.socket: wait until spec ({fd =, mode =}) is ready, ctx ends
-- or closer (the socket's own cancel context) is cancelled by its close.
-- true | nil, err: ctx:err() (or the spawned task's bound's), or "closed".
-- Cancelling closer detaches every wait on it at once (and so their fd
-- watchers) before the socket's fd is closed.
function check.wait_io(fname, ctx, spec, closer)
  local i = wait(fname, ctx, spec, closer)
  if i == 2 then return true end
  if i == 3 or i == -2 then return nil, "closed" end
  if i == 0 then return nil, bound_err() end
  return nil, ctx:err()
end

--- context.fd(fd [, mode]) -> a waitable for context.select
function M.fd(fd, mode)
  mode = mode or "r"
  if not modes[mode] then
    error(("bad argument #2 to 'fd' (\"r\", \"w\" or \"rw\" expected, got %s)")
      :format(tostring(mode)), 2)
  end
  return { fd = fd_of(fd, "fd", 1), mode = mode }
end

--- context.select(w1, w2, ...) -> index, waitable
-- Waitables: a context (fires when done), a task (when it ends), a number
-- (a sleep of that many seconds), context.fd(fd, mode) (when ready), and
-- (lua/lcontext/sync.lua) channel cases and events. In a spawned task whose
-- context ends first: nil, that context's err().
local has_case = check.has_case
local function select_(...)
  local n = select("#", ...)
  if n == 0 then
    error("bad argument #1 to 'select' (waitable expected, got no value)", 2)
  end
  if has_case(...) then return check.select_cases(select_, ...) end
  local i = wait("select", ...)
  if i == 0 then return nil, bound_err() end
  if i < 0 then -- an fd that cannot be waited on: not open, or closed since
    error(("bad argument #%d to 'select' (fd %d is not open)"):format(-i, (select(-i, ...)).fd), 2)
  end
  return i, (select(i, ...))
end
M.select = select_

--- task:wait([ctx]) -> what the task's function returned, or nil, err;
-- nil, ctx:err() when ctx ends first (the task goes on)
function task_methods.wait(task, ctx)
  if ctx ~= nil then check_ctx(ctx, "wait", 1) end
  if select("#", results(task)) == 0 then
    if ctx ~= nil then
      local i = wait("wait", task, ctx)
      if i == 2 then return nil, ctx:err() end
      if i == 0 then return nil, bound_err() end
    elseif wait("wait", task) == 0 then
      return nil, bound_err()
    end
  end
  return results(task)
end

--- context.in_task() -> is the caller a task run by lcontext?
M.in_task = core._in_task
if outer then -- Lua 5.1: a check.pcall body is part of its task
  local in_task = core._in_task
  M.in_task = function() return outer(in_task) end
end

-- The helpers written in Lua, one module per concern. Each module returns
-- a function that takes this module and returns what it adds to it.
for _, name in ipairs({ "group", "retry", "breaker", "hedge", "patterns", "observe", "metrics",
                        "sync", "tasks", "vclock" }) do
  local path = "lcontext." .. name
  if check.searchpath(path, package.path) then
    local exports = require(path)(M)
    for k, v in pairs(exports) do
      assert(M[k] == nil, "lcontext: " .. path .. " redefines " .. k)
      M[k] = v
    end
  end
end

-- every function above whose first argument is a context is also a method
check.install_methods(M, methods)

return M
