--- lcontext.ngx: lcontext for OpenResty (ngx_lua on LuaJIT).
--
--   local context = require "lcontext.ngx"
--
-- The same API as `require "lcontext"` (contexts, values, causes, the
-- helpers), with waiting reimplemented for nginx, whose event loop lcontext
-- must never replace: libev is not touched.
--
--   * ctx:done(), context.sleep, context.select, task:wait() and every helper
--     that waits (group, retry, hedge, breaker, ...) suspend the current
--     light thread on an ngx.semaphore. The C core tells the semaphore when a
--     context is done (core._watch); every wait is also bounded by the
--     deadlines it depends on, so it ends on time even without the driver.
--   * Deadlines fire through ONE driver per worker: a timer (ngx.timer.at)
--     that advances the core's timer wheel at core._next_wakeup() and is
--     woken when an earlier deadline is watched. It runs only while some
--     deadline is watched, and stops when the worker exits.
--   * context.go(fn, ...) runs fn in a light thread (ngx.thread.spawn),
--     started once go has returned; task:wait() works from any light thread.
--   * context.after_func runs its function in a light thread of its own,
--     started from one runner timer (ngx.timer.at(0)) for all that are due.
--   * context.from_request([opts]) makes the request context: the incoming
--     deadline from the headers (lcontext.trace), cancelled with cause
--     "client aborted" when the client goes away (lua_check_client_abort on).
--   * context.shared_breaker(dict, opts): a circuit breaker whose state is in
--     an ngx.shared.DICT, shared by every worker.
--   * Not available (they raise, saying why): context.wait_fd and context.fd
--     (use cosockets, with timeouts from ctx:remaining()), context.signal,
--     context.run, context.step, context.pollfd and context.timeout (nginx
--     runs the loop).
--
-- Written for Lua 5.1 / LuaJIT (it also runs on 5.2+, for the specs).
local ngx = ngx
if type(ngx) ~= "table" or type(ngx.thread) ~= "table" or type(ngx.timer) ~= "table" then
  error("lcontext.ngx needs ngx_lua (OpenResty); outside nginx use require \"lcontext\"", 2)
end

local check = require "lcontext.check"
local core = check.load_core()
local semaphore = require "ngx.semaphore"

local type, error, tostring, pcall, xpcall, select = type, error, tostring, pcall, xpcall, select
local pairs, ipairs, getmetatable, setmetatable = pairs, ipairs, getmetatable, setmetatable
local rawget = rawget
local ceil, huge = math.ceil, math.huge
local unpack, pack = check.unpack, check.pack
local traceback = debug.traceback
local newproxy = newproxy -- LuaJIT / 5.1: userdata with a __gc

-- What runs inside a __gc metamethod must never run compiled code (LuaJIT):
-- inside a finaliser LuaJIT records no trace, and a pairs() loop compiled
-- before then ends through a trace exit that re-enters its own trace until
-- that exit gets a side trace of its own, which never comes there: the
-- loop spins forever (docs/openresty.md, "A worker that spun"). Every
-- function below that a finaliser runs is interpreted only: interp_only(f).
local interp_only = check.interp_only

local watch, unwatch = core._watch, core._unwatch
local advance, next_wakeup = core._advance, core._next_wakeup
-- (the runtime's monotonic seconds, continuous across a virtual clock's
-- install: context.now() reads clock:now() meanwhile)
local now = core._mono
-- the virtual clock (lua/lcontext/vclock.lua, csrc/l_clock.c): while it is
-- installed, no real time moves lcontext's clock; see "Virtual time" below
local vclock_installed = core._vclock_installed
local methods = core._methods

local spawn, timer_at = ngx.thread.spawn, ngx.timer.at
local get_phase, log = ngx.get_phase, ngx.log
local ERR, WARN = ngx.ERR, ngx.WARN
local function exiting() return ngx.worker.exiting() end

local M = {}
for k, v in pairs(core) do
  if k:sub(1, 1) ~= "_" and k ~= "sched_stats" then M[k] = v end
end
M._VERSION = "lcontext scm (ngx)"
M.backend = "ngx"

-- figures for context.metrics() (tasks, waits, ...) and metrics_text
local stats = {
  tasks = 0,            -- light threads started by go and not finished
  tasks_started = 0,
  waits = 0,            -- light threads suspended in a wait of lcontext
  wakeups = 0,          -- waits ended
  callbacks = 0,        -- after_func callbacks armed (not run, not stopped)
  cb_running = 0,       -- after_func callbacks started and not returned
  driver_starts = 0,    -- driver timers started
  driver_failures = 0,  -- ngx.timer.at refused to start the driver
  watches = 0,          -- core watches made here and not yet called, unwatched or collected
  wait_passes = 0,      -- passes of the wait loop (each one a semaphore wait)
  driver_passes = 0,    -- passes of the driver's loop
  yields_forced = 0,    -- passes after which a loop had to yield by ngx.sleep (see pause)
  watch_errors = 0,     -- errors raised by this file's watch functions (bugs)
}

-- the semaphores that waits sleep on (weak: for metrics().ngx_sema_waiters)
local live_semas = setmetatable({}, { __mode = "k" })

-------------------------------------------------------------------------------
-- Argument checks, in luaL_argerror's words
-------------------------------------------------------------------------------
local tname, check_ctx, check_seconds = check.tname, check.ctx, check.seconds
local callable = check.callable

-- Phases whose code runs in a light thread that may yield.
local YIELDABLE = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
  preread = true, -- stream
}

-- raise at the caller of the API function (level 3 from here, unless told)
-- when the current phase cannot suspend
local function need_yieldable(fname, what, level)
  local phase = get_phase()
  if not YIELDABLE[phase] then
    error(("lcontext.ngx: %s cannot %s in the '%s' phase (only in rewrite, access, "
      .. "content, timer and ssl handlers, whose light threads can yield)")
      :format(fname, what or "wait", tostring(phase)), level or 3)
  end
end

-------------------------------------------------------------------------------
-- Errors in tasks and callbacks
-------------------------------------------------------------------------------
local handler -- context.on_error's

local function is_outcome(err)
  return err == M.canceled or err == M.deadline_exceeded
end

-- tostring that cannot raise: an error value's __tostring may (the value
-- itself is still what the task gives and the handler gets)
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return ("(error object is a %s value)"):format(type(v))
end

local function report(err, tb, task, what)
  if is_outcome(err) then return end
  if handler then
    local ok, e = pcall(handler, err, tb, task)
    if ok then return end
    log(ERR, "lcontext: error while reporting an error in a ", what, ": ", safe_tostring(e))
  end
  log(ERR, "lcontext: error in a ", what, ": ", tb or safe_tostring(err))
end

--- context.on_error(fn) -> the previous handler. fn(err, traceback, task)
-- is told of errors raised in tasks and after_func callbacks (not of
-- context.canceled / deadline_exceeded); nil restores the default, which
-- writes them to nginx's error log.
function M.on_error(fn)
  if fn ~= nil and not callable(fn) then
    error(("bad argument #1 to 'on_error' (function expected, got %s)"):format(type(fn)), 2)
  end
  local prev = handler
  handler = fn
  return prev
end

-------------------------------------------------------------------------------
-- The driver: one light thread per worker, in a timer, that moves the
-- core's timer wheel (expired deadlines cancel their contexts, watches are
-- told). It runs while some deadline is watched; it sleeps on a semaphore
-- until the next wake-up, in slices of at most DRIVER_SLICE seconds so that
-- a graceful stop (nginx -s quit) never waits long for it.
-------------------------------------------------------------------------------
local DRIVER_SLICE = 1
local MAX_WAIT = 3600 -- longest single semaphore wait (its ms are a C int)

local drv = {
  running = false, -- a driver timer is scheduled or running
  sema = nil,      -- what it sleeps on (made in the worker, on first use)
  until_ = nil,    -- while it sleeps: when it wakes up by itself
  posted = false,  -- it was woken and has not slept again since
}

-- seconds, rounded up to ngx.semaphore's milliseconds (at least 1)
local function ms_seconds(s)
  if s > MAX_WAIT then s = MAX_WAIT end
  local ms = ceil(s * 1000 - 1e-6)
  if ms < 1 then ms = 1 end
  return (ms + 0.5) / 1000 -- wait() multiplies by 1000 and truncates
end

local start_runner -- after_func's runner (below)

-- A loop that waits must give nginx a turn on every pass: a pass that
-- neither ended the wait nor let time pass (sema:wait returned at once: a
-- stray post, a timeout of 0 ms, an error) is "quick", and after QUICK_MAX
-- quick passes in a row the loop sleeps through nginx's timers
-- (ngx.sleep, which always yields). So no loop can spin inside Lua.
local QUICK_MAX = 2
local QUICK = 0.0002 -- seconds: a wait that returned sooner did not wait

-- pause(quick, t0) -> the new count of quick passes in a row, after a
-- semaphore wait that began at t0 (now()) and did not end the wait
local function pause(quick, t0)
  if now() - t0 >= QUICK then return 0 end
  quick = quick + 1
  if quick >= QUICK_MAX then
    stats.yields_forced = stats.yields_forced + 1
    ngx.sleep(0.001)
    return 0
  end
  return quick
end

local function drive_loop()
  local sema = drv.sema
  if not sema then
    sema = semaphore.new()
    drv.sema = sema
    live_semas[sema] = true
  end
  local quick = 0
  while true do
    stats.driver_passes = stats.driver_passes + 1
    advance()
    start_runner() -- callbacks a refused timer left queued (a no-op if none)
    local w = next_wakeup()
    if not w or exiting() or vclock_installed() then return end
    if w > DRIVER_SLICE then w = DRIVER_SLICE end
    local t0 = now()
    drv.until_ = t0 + w
    drv.posted = false
    local ok, err = sema:wait(ms_seconds(w))
    drv.until_ = nil
    if not ok and err ~= "timeout" then
      -- it cannot sleep here: stop (waits bound themselves; the next
      -- deadline watched starts a new driver, in a new timer)
      error("semaphore wait failed: " .. tostring(err), 0)
    end
    if not ok or not drv.posted then quick = pause(quick, t0) end
  end
end

local function drive(premature)
  if not premature then
    local ok, err = pcall(drive_loop)
    if not ok then log(ERR, "lcontext: error in the deadline driver: ", tostring(err)) end
  else
    pcall(advance)
  end
  drv.running, drv.until_ = false, nil
end

-- Called after a deadline may have entered the wheel: start the driver, or
-- wake it if the wheel now needs it earlier than it planned.
local function kick()
  local w = next_wakeup()
  if not w or vclock_installed() then return end
  if drv.running then
    local u = drv.until_
    if u and not drv.posted and now() + w < u - 0.0005 then
      drv.posted = true
      drv.sema:post(1)
    end
    return
  end
  if exiting() then return end -- waits still end on time: they bound themselves
  local ok, started, err = pcall(timer_at, 0, drive)
  if ok and started then
    drv.running = true
    stats.driver_starts = stats.driver_starts + 1
  else
    stats.driver_failures = stats.driver_failures + 1
    log(WARN, "lcontext: cannot start the deadline driver: ", tostring(ok and err or started))
  end
end

-- Called after watches were removed: if the wheel is empty now, let the
-- driver end at once rather than at the end of its slice (a graceful stop
-- of an idle worker then waits for nothing).
local function settle()
  if drv.until_ and not drv.posted and not next_wakeup() then
    drv.posted = true
    drv.sema:post(1)
  end
end
interp_only(settle) -- (a finaliser calls it: wait_collected)

-------------------------------------------------------------------------------
-- Tasks: light threads
-------------------------------------------------------------------------------
local Task = {}
local task_mt = {
  __index = Task,
  __metatable = "context.task",
  __tostring = function(t) return ("context.task (%s): %s"):format(t._status, t._id) end,
}
local is_task = setmetatable({}, { __mode = "k" })
-- what each waiting coroutine waits on, for context.dump (weak keys; its
-- values hold what is waited on weakly: a task may keep a killed light
-- thread's coroutine, and must not keep what that thread waited on)
local waiting_of = setmetatable({}, { __mode = "k" })
local WEAK_VALUES = { __mode = "v" }
-- each task's coroutine, for context.dump; weakly: a killed light thread's
-- coroutine must go when nothing else keeps it (its task's guard runs then)
local co_of = setmetatable({}, { __mode = "kv" })

-- tell the waits on task t that it ended (a finaliser calls it too:
-- task_collected; so interpreted only, see interp_only)
local function task_ended(t)
  local waiters = t._waiters
  t._waiters = nil
  t._fn = nil -- (context.dump's; not kept once it has ended)
  for rec, i in pairs(waiters) do
    if not rec.fired then rec.fired = i end
    rec.sema:post(1)
  end
  local on_end = t._on_end
  if on_end then -- context.spawn: cancels the task's context (cause: its error)
    t._on_end = nil
    local r = t._res
    on_end(r and not r[1] and r[2] or nil)
  end
end

-- for lua/lcontext/tasks.lua: the tasks' methods, and fn() once t has ended
check.task_methods = Task
function check.on_task_end(t, fn)
  if t._status ~= "running" then
    local r = t._res
    return fn(r and not r[1] and r[2] or nil)
  end
  t._on_end = fn
end
interp_only(task_ended)

-- The __gc of every guard: one function for all, interpreted only; what
-- the guard must do is in its metatable (fn, arg), and runs once.
local function guard_gc(p)
  local mt = getmetatable(p)
  local fn, arg = mt.fn, mt.arg
  mt.fn, mt.arg = nil, nil
  if fn then fn(arg) end
end
interp_only(guard_gc)

-- new_gc_guard(fn, arg): an object whose collection calls fn(arg) (a
-- userdata with __gc on LuaJIT / 5.1, a table with __gc on 5.2+). fn must
-- be interpreted only (interp_only), and so must what it calls that loops.
-- No closure: the guard keeps fn and arg, nothing of the frame making it.
local function new_gc_guard(fn, arg)
  if newproxy then
    local p = newproxy(true)
    local mt = getmetatable(p)
    mt.__gc, mt.fn, mt.arg = guard_gc, fn, arg
    return p
  end
  return setmetatable({}, { __gc = guard_gc, fn = fn, arg = arg })
end

local KILLED = "task's light thread was killed"

-- What the guard of task t does once collected while t runs: its light
-- thread was killed (ngx.exit, ngx.thread.kill, a client abort), so the
-- task ends as failed, and its waiters hear of it.
local function task_collected(t)
  if t._status ~= "running" then return end
  stats.tasks = stats.tasks - 1
  t._res = { false, KILLED, n = 2 }
  t._status = "failed"
  pcall(task_ended, t)
end
interp_only(task_collected)

-- The guard of task t. Made here, not in task_body: nothing may keep a
-- frame that a kill can leave open (ngx_lua resets a killed thread's
-- stack, and open upvalues of its frames then read nil).
local function task_guard(t)
  return new_gc_guard(task_collected, t)
end

local function task_body(t, fn, args)
  local guard = task_guard(t)
  co_of[t] = coroutine.running()
  -- start once go has returned, as context.go does: a light thread that
  -- yields goes to the back of ngx_lua's posted threads (spawn posted its
  -- parent first), so spawn returns, and this one runs when the threads
  -- before it yield or wait. A task that yields (a bare coroutine.yield())
  -- then lets the tasks started before it run, as on the libev backend; a
  -- wait on a semaphore here would not be a posted thread, and ngx_lua
  -- resumes a yielding thread at once when none is posted. (ngx.sleep(0)
  -- logs a warning on nginx builds without OpenResty's delayed-events
  -- patch, Debian's among them.)
  coroutine.yield()
  local tb
  local r = pack(xpcall(function() return fn(unpack(args, 1, args.n)) end, function(e)
    tb = traceback(safe_tostring(e), 2)
    return e
  end))
  stats.tasks = stats.tasks - 1
  t._res = r
  t._status = r[1] and "ok" or "failed"
  t._guard = guard -- (keeps it alive until here)
  task_ended(t)
  if not r[1] then report(r[2], tb, t, "task") end
end

local task_count = 0

--- context.go(fn, ...) -> task: fn(...) in a light thread of the current
-- request (or timer), started once go has returned.
function M.go(fn, ...)
  if not callable(fn) then
    error(("bad argument #1 to 'go' (function expected, got %s)"):format(type(fn)), 2)
  end
  need_yieldable("go", "start a light thread")
  task_count = task_count + 1
  local t = setmetatable({ _status = "running", _waiters = {}, _id = task_count, _fn = fn }, task_mt)
  is_task[t] = true
  local co, err = spawn(task_body, t, fn, pack(...))
  if not co then error("lcontext.ngx: go: " .. tostring(err), 2) end
  t._thread = co
  stats.tasks = stats.tasks + 1
  stats.tasks_started = stats.tasks_started + 1
  return t
end

--- task:status() -> "running", "ok" or "failed"
function Task:status()
  if not is_task[self] then
    error(("calling 'status' on bad self (context.task expected, got %s)"):format(tname(self)), 2)
  end
  return self._status
end

--- task:thread() -> the ngx light thread (for ngx.thread.kill by its parent)
function Task:thread() return self._thread end

-------------------------------------------------------------------------------
-- Waiting: one engine for done, sleep, select and task:wait
-------------------------------------------------------------------------------

-- watch_ctx(ctx, fn [, weak]) -> a handle, or nil if ctx is done already:
-- core._watch, counted in stats.watches until fn is called, or the watch is
-- stopped (unwatch_h) or collected unrun (after_func's guard tells)
local function watch_ctx(ctx, fn, weak)
  local h = watch(ctx, function()
    stats.watches = stats.watches - 1
    local ok, err = pcall(fn)
    if not ok then -- a bug of this file: said in nginx's log, counted
      stats.watch_errors = stats.watch_errors + 1
      log(ERR, "lcontext: error in a context watch: ", tostring(err))
    end
  end, weak)
  if not h then return nil end
  stats.watches = stats.watches + 1
  return h
end

-- unwatch_h(h) -> true if it stopped a call still to come
local function unwatch_h(h)
  if unwatch(h) then
    stats.watches = stats.watches - 1
    return true
  end
  return false
end
interp_only(unwatch_h) -- (wait_collected calls it)

-- What the guard of wait record rec does once collected while the wait
-- is open: the waiting light thread was killed (ngx.exit, ngx.thread.kill)
-- and collected mid-wait; its handles are unwatched.
local function wait_collected(rec)
  if rec.closed then return end
  rec.closed = true
  stats.waits = stats.waits - 1
  local any = false
  for _, h in ipairs(rec.handles) do
    local ok, stopped = pcall(unwatch_h, h)
    any = any or (ok and stopped)
  end
  if any then pcall(settle) end
end
interp_only(wait_collected)

local function new_guard(rec)
  return new_gc_guard(wait_collected, rec)
end

-- the function a watch of wait record rec calls when the i-th waitable is
-- done. Made here, not in wait_on: its upvalues must be closed ones (see
-- task_guard), since the watch may outlive a killed light thread.
local function waker(rec, i)
  return function()
    if not rec.fired then rec.fired = i end
    rec.sema:post(1)
  end
end

local function finish(rec, ws, kinds, n)
  rec.closed = true
  stats.waits = stats.waits - 1
  stats.wakeups = stats.wakeups + 1
  for _, h in ipairs(rec.handles) do unwatch_h(h) end
  if rec.handles[1] then settle() end
  for i = 1, n do
    if kinds[i] == "task" then
      local w = ws[i]._waiters
      if w then w[rec] = nil end
    end
  end
end

-- ws[1..n], kinds[1..n] ("ctx", "task", "sleep" with ws[i] the absolute time)
-- -> the index of the first to fire. Nothing is ready yet (checked before).
local bound = check.bound
local bound_ctx, MAIN, running = bound.ctx, bound.MAIN, coroutine.running


--- check.task_list() (context.dump): every live task, with what it waits on
function check.task_list()
  local out, me = {}, running()
  for t in pairs(is_task) do
    if t._status == "running" then
      local co = co_of[t]
      local wr = co and waiting_of[co]
      local e = { task = t, co = co, fn = t._fn }
      if wr and wr.ws and wr.kinds then
        e.state, e.since, e.waits = "parked", now() - wr.since, {}
        for i = 1, wr.n do
          local k = wr.kinds[i]
          if k == "sleep" then
            e.waits[i] = { kind = "sleep", due = wr.ws[i] - now() }
          else
            e.waits[i] = { kind = k, value = wr.ws[i] }
          end
        end
      else
        e.state = co ~= nil and co == me and "running" or "ready"
      end
      out[#out + 1] = e
    end
  end
  table.sort(out, function(a, b) return a.task._id < b.task._id end)
  return out
end

local function wait_on(fname, ws, kinds, n)
  need_yieldable(fname, "wait", 4)
  local appended = false
  if bound.active then -- in a spawned task: its context ends the wait too
    local b = bound_ctx[running() or MAIN]
    if b ~= nil then
      if b:is_done() then return 0 end
      n = n + 1
      ws[n], kinds[n], appended = b, "ctx", true
    end
  end
  local sema = semaphore.new()
  live_semas[sema] = true
  local rec = { sema = sema, fired = nil, handles = {}, closed = false }
  local sleep_at, sleep_i
  for i = 1, n do
    local k = kinds[i]
    if k == "ctx" then
      local h = watch_ctx(ws[i], waker(rec, i))
      if h then
        rec.handles[#rec.handles + 1] = h
      elseif not rec.fired then
        rec.fired = i -- done meanwhile (cannot happen: no yield since the check)
      end
    elseif k == "task" then
      -- (a killed task's guard may have ended it since the caller checked:
      -- any allocation here can run it)
      local waiters = ws[i]._waiters
      if waiters then
        waiters[rec] = i
      elseif not rec.fired then
        rec.fired = i
      end
    elseif not sleep_at or ws[i] < sleep_at then
      sleep_at, sleep_i = ws[i], i
    end
  end
  local guard = new_guard(rec)
  if #rec.handles > 0 then kick() end
  local me = running()
  -- (context.dump; weak values: the record of a killed light thread's wait
  -- must not keep what it waited on, nor its frame: ws and kinds live in it)
  waiting_of[me] = setmetatable({ ws = ws, kinds = kinds, n = n, since = now() }, WEAK_VALUES)
  stats.waits = stats.waits + 1
  local ok, err = pcall(function()
    local quick = 0
    while not rec.fired do
      local t = sleep_at and sleep_at - now()
      if t and t <= 0 then
        rec.fired = sleep_i
        break
      end
      for i = 1, n do -- bounded by the deadlines waited on
        if kinds[i] == "ctx" then
          local r = ws[i]:remaining()
          if r and (not t or r < t) then t = r end
        end
      end
      stats.wait_passes = stats.wait_passes + 1
      local t0 = now()
      if t and vclock_installed() then
        -- virtual time: what ends this wait is posted by advance or a jump
        -- (a sleep begun before the clock was installed: looked at each second)
        t = sleep_at and 1 or nil
      end
      local posted, werr = sema:wait(ms_seconds(t or MAX_WAIT))
      if not posted then
        if werr ~= "timeout" then error(werr, 0) end
        advance() -- a deadline due: fires it, the watches are told
      end
      if not rec.fired then -- contexts ended unannounced (noticed lazily)
        for i = 1, n do
          if kinds[i] == "ctx" and ws[i]:is_done() then
            rec.fired = i
            break
          end
        end
      end
      -- every post names what fired: a pass that ends nothing and returned
      -- at once must not repeat without nginx getting a turn
      if not rec.fired then quick = pause(quick, t0) end
    end
  end)
  finish(rec, ws, kinds, n)
  waiting_of[me] = nil
  rec.guard = guard -- keeps the guard alive until here
  if not ok then error(("lcontext.ngx: %s: %s"):format(fname, tostring(err)), 3) end
  if appended and rec.fired == n then return 0 end -- 0: the bound ended it
  return rec.fired
end

-- the error of the running task's bound, once wait_on returned 0
local function bound_err()
  return bound_ctx[running() or MAIN]:err()
end

-- the bound's err() if the running task's bound is done (looked at first,
-- before what the wait would find ready, as on the libev backend)
local function bound_first()
  if not bound.active then return nil end
  local b = bound_ctx[running() or MAIN]
  return b and b:err()
end


--- ctx:done() -> ctx:err(), once ctx is done.
function methods.done(ctx)
  check_ctx(ctx, "done", 1)
  local be = bound_first()
  if be ~= nil then return be end
  if not ctx:is_done() and wait_on("done", { ctx }, { "ctx" }, 1) == 0 then
    return bound_err()
  end
  return ctx:err()
end

--- context.sleep(ctx, seconds) -> true | nil, ctx:err()
function M.sleep(ctx, seconds)
  check_ctx(ctx, "sleep", 1)
  check_seconds(seconds, "sleep", 2)
  local be = bound_first()
  if be ~= nil then return nil, be end
  if ctx:is_done() then return nil, ctx:err() end
  if seconds <= 0 then return true end
  local i
  if vclock_installed() then -- a deadline of the core's wheel: exact virtual time
    local sc, cancel = M.with_timeout(M.background(), seconds)
    i = wait_on("sleep", { ctx, sc }, { "ctx", "ctx" }, 2)
    cancel()
  else
    i = wait_on("sleep", { ctx, now() + seconds }, { "ctx", "sleep" }, 2)
  end
  if i == 2 then return true end
  if i == 0 then return nil, bound_err() end
  return nil, ctx:err()
end

--- context.select(w1, w2, ...) -> index, waitable
-- Waitables: a context (fires when done), a task (when it ends), a number
-- (a sleep of that many seconds). The first one ready, in argument order,
-- wins; the others leave nothing behind.
local select_, has_case = nil, check.has_case
function M.select(...)
  local n = select("#", ...)
  if n == 0 then
    error("bad argument #1 to 'select' (waitable expected, got no value)", 2)
  end
  if has_case(...) then return check.select_cases(select_, ...) end
  local ws, kinds, ready = { ... }, {}, nil
  local t0 = now()
  local vcancels
  for i = 1, n do
    local w = ws[i]
    if type(w) == "number" then
      if w ~= w then
        error(("bad argument #%d to 'select' (number is NaN)"):format(i), 2)
      elseif w == huge or w == -huge then
        error(("bad argument #%d to 'select' (number is not finite)"):format(i), 2)
      end
      kinds[i] = "sleep"
      if w <= 0 then
        ready = ready or i
      elseif vclock_installed() then -- (as sleep does)
        local sc, cancel = M.with_timeout(M.background(), w)
        ws[i], kinds[i] = sc, "ctx"
        vcancels = vcancels or {}
        vcancels[#vcancels + 1] = cancel
      else
        ws[i] = t0 + w
      end
    elseif getmetatable(w) == "context" then
      kinds[i] = "ctx"
      if not ready and w:is_done() then ready = i end
    elseif is_task[w] then
      kinds[i] = "task"
      if not ready and w._status ~= "running" then ready = i end
    elseif type(w) == "table" and rawget(w, "fd") ~= nil then
      error(("bad argument #%d to 'select' (fd waits are not available in OpenResty: "
        .. "use cosockets, with timeouts from ctx:remaining())"):format(i), 2)
    else
      error(("bad argument #%d to 'select' (context, task or number of seconds expected, got %s)")
        :format(i, tname(w)), 2)
    end
  end
  local be = bound_first()
  if be ~= nil then return nil, be end
  local i = ready or wait_on("select", ws, kinds, n)
  if vcancels then for k = 1, #vcancels do vcancels[k]() end end
  if i == 0 then return nil, bound_err() end
  return i, (select(i, ...))
end
select_ = M.select

--- task:wait([ctx]) -> what the task's function returned, or nil, err;
-- nil, ctx:err() when ctx ends first (the task goes on)
function Task:wait(ctx)
  if not is_task[self] then
    error(("calling 'wait' on bad self (context.task expected, got %s)"):format(tname(self)), 2)
  end
  if ctx ~= nil then check_ctx(ctx, "wait", 1) end
  if self._status == "running" then
    local be = bound_first()
    if be ~= nil then return nil, be end
    if ctx ~= nil then
      if ctx:is_done() then return nil, ctx:err() end
      local i = wait_on("wait", { self, ctx }, { "task", "ctx" }, 2)
      if i == 2 then return nil, ctx:err() end
      if i == 0 then return nil, bound_err() end
    elseif wait_on("wait", { self }, { "task" }, 1) == 0 then
      return nil, bound_err()
    end
  end
  local r = self._res
  if r[1] then return unpack(r, 2, r.n) end
  return nil, r[2]
end

--- context.in_task() -> can the caller wait (a light thread that may yield)?
function M.in_task()
  return YIELDABLE[get_phase()] == true
end

-------------------------------------------------------------------------------
-- after_func
-------------------------------------------------------------------------------

-- Callbacks whose context is done wait in a queue; ONE runner timer at a
-- time (ngx.timer.at(0)) starts each in a light thread of its own, so that
-- many contexts ending at once do not take many pending timers. A queued
-- callback is a record: stop() marks it stopped until it has started, and
-- the runner skips it (as on the libev backend: stop() after the cancel that
-- queued it returns true and prevents the run).
local cb_queue, cb_n, cb_scheduled = {}, 0, false

local function run_callback(rec)
  if rec.stopped then return end
  rec.started = true
  stats.callbacks = stats.callbacks - 1
  stats.cb_running = stats.cb_running + 1
  local tb
  local ok, err = xpcall(rec.fn, function(e)
    tb = traceback(safe_tostring(e), 2)
    return e
  end)
  stats.cb_running = stats.cb_running - 1
  if not ok then report(err, tb, nil, "callback") end
end

-- One round: the callbacks queued when the timer began. Those queued
-- meanwhile (a callback that cancels) have asked for a runner of their own
-- (start_runner, once cb_scheduled is false), so each round is a timer:
-- nginx gets a turn between rounds, even if callbacks queue callbacks forever.
local function run_callbacks()
  cb_scheduled = false
  local q, n = cb_queue, cb_n
  cb_queue, cb_n = {}, 0
  for i = 1, n do
    local rec = q[i]
    if not rec.stopped then
      local ok = pcall(spawn, run_callback, rec)
      if not ok and not rec.started then run_callback(rec) end
    end
  end
end

-- Start the runner for the queued callbacks. Never runs them in place
-- (that would be inside the cancel() that queued them) unless the worker is
-- exiting, when no timer will ever run them; when nginx refuses a timer for
-- another reason (lua_max_pending_timers), they stay queued, and the next
-- callback queued or the deadline driver tries again.
function start_runner()
  if cb_scheduled or cb_n == 0 then return end
  local ok, started, err = pcall(timer_at, 0, run_callbacks)
  if ok and started then
    cb_scheduled = true
  elseif exiting() then
    local q, n = cb_queue, cb_n
    cb_queue, cb_n = {}, 0
    for i = 1, n do run_callback(q[i]) end
  else
    log(WARN, "lcontext: after_func: no timer for the callbacks (",
      tostring(ok and err or started), "); they wait for the next chance")
  end
end

local function queue_callback(rec)
  cb_n = cb_n + 1
  cb_queue[cb_n] = rec
  start_runner()
end

-- What the guard of after_func record rec does once collected unrun (its
-- watch went with a context nothing could cancel any more): uncount it.
local function callback_collected(rec)
  if rec.fired or rec.stopped then return end
  rec.stopped = true
  stats.callbacks = stats.callbacks - 1
  stats.watches = stats.watches - 1
end
interp_only(callback_collected)

--- context.after_func(ctx, fn) -> stop
-- Once ctx is done, fn() runs once, in a light thread of its own, in a
-- timer (never inside cancel()). stop() returns true if it prevented the run.
function M.after_func(ctx, fn)
  check_ctx(ctx, "after_func", 1)
  if not callable(fn) then
    error(("bad argument #2 to 'after_func' (function expected, got %s)"):format(type(fn)), 2)
  end
  local rec = { fn = fn } -- armed until it starts or is stopped
  -- the watch is weak: on a context nothing can cancel any more, the core
  -- collects it unrun, and with it `fire` and this guard, which uncounts it
  local guard = new_gc_guard(callback_collected, rec)
  local function fire()
    rec.fired = guard -- (and keeps the guard as long as fire lives)
    if not rec.stopped then queue_callback(rec) end
  end
  stats.callbacks = stats.callbacks + 1
  local h = watch_ctx(ctx, fire, "weak") -- lives while something can cancel ctx
  if not h then fire() else kick() end
  return function()
    if rec.stopped or rec.started then return false end
    rec.stopped = true
    stats.callbacks = stats.callbacks - 1
    if h and unwatch_h(h) then settle() end
    return true
  end
end

-------------------------------------------------------------------------------
-- What nginx does not allow
-------------------------------------------------------------------------------
local function unavailable(name, why)
  return function()
    error(("lcontext.ngx: context.%s is not available in OpenResty: %s"):format(name, why), 2)
  end
end

local NO_FD = "nginx owns the file descriptors; use cosockets (ngx.socket.tcp/udp), "
  .. "with timeouts from ctx:remaining() (context.timeout_ms(ctx))"
M.wait_fd = unavailable("wait_fd", NO_FD)
M.fd = unavailable("fd", NO_FD)
M.signal = unavailable("signal", "nginx owns the signals; check ngx.worker.exiting(), "
  .. "or the premature flag of a timer")
M.run = unavailable("run", "nginx runs the event loop; waits suspend the current light thread")
M.step = unavailable("step", "nginx runs the event loop; waits suspend the current light thread")
local NO_FOREIGN = "nginx runs the event loop, and lcontext's waits are nginx's own "
  .. "(there is no other loop to drive from outside)"
M.pollfd = unavailable("pollfd", NO_FOREIGN)
M.timeout = unavailable("timeout", NO_FOREIGN)

--- context.timeout_ms(ctx [, max_seconds]) -> milliseconds for a cosocket's
-- settimeout: what is left of ctx (at least 1), capped by max_seconds; or
-- nil, ctx:err() when ctx is done. Without a deadline: max_seconds, or nil.
function M.timeout_ms(ctx, max_seconds)
  check_ctx(ctx, "timeout_ms", 1)
  if max_seconds ~= nil then check_seconds(max_seconds, "timeout_ms", 2) end
  if ctx:is_done() then return nil, ctx:err() end
  local r = ctx:remaining()
  if max_seconds and (not r or max_seconds < r) then r = max_seconds end
  if not r then return nil end
  local ms = ceil(r * 1000)
  if ms < 1 then ms = 1 end
  return ms
end

-------------------------------------------------------------------------------
-- Metrics: the core's figures, with the tasks and waits of this backend
-------------------------------------------------------------------------------
local core_metrics = core.metrics
function M.metrics()
  local m = core_metrics()
  m.tasks = stats.tasks
  m.tasks_waiting = stats.waits
  m.tasks_resumed = stats.wakeups
  m.callbacks_pending = stats.callbacks
  m.ngx_callbacks_queued = cb_n + stats.cb_running
  m.ngx_tasks_started = stats.tasks_started
  m.ngx_driver_running = drv.running
  m.ngx_driver_starts = stats.driver_starts
  m.ngx_driver_failures = stats.driver_failures
  m.ngx_watches = stats.watches
  m.ngx_wait_passes = stats.wait_passes
  m.ngx_driver_passes = stats.driver_passes
  m.ngx_yields_forced = stats.yields_forced
  m.ngx_watch_errors = stats.watch_errors
  local waiters = 0
  for s in pairs(live_semas) do
    local c = s:count()
    if c < 0 then waiters = waiters - c end
  end
  m.ngx_sema_waiters = waiters
  return m
end

-------------------------------------------------------------------------------
-- Virtual time (context.virtual_clock: lua/lcontext/vclock.lua). The clock
-- is the core's, as on libev; what differs is who runs what it wakes:
-- nginx. So clock:advance moves the clock one due time at a time
-- (core._vclock_step), fires what is due there (advance: deadlines, and
-- sleeps, which are deadlines of the wheel while the clock is installed)
-- and lets the light threads it woke run (settle) before the next. The
-- deadline driver does not run meanwhile. Autojump is a timer of its own
-- (jumper) that moves the clock to the next due time whenever a turn of
-- nginx's loop passed without any activity of lcontext's (a wait begun or
-- ended, a task started or ended): it cannot see cosocket waits, so give
-- autojump seconds of real idleness when tasks do real I/O.
-------------------------------------------------------------------------------
local vclock_step, vclock_target = core._vclock_step, core._vclock_target

local function activity()
  return stats.waits + stats.wakeups + stats.wait_passes + stats.tasks_started
    + stats.tasks + stats.callbacks + stats.cb_running
end

-- let the light threads that were woken run, until two turns of the loop
-- pass with no activity of lcontext's (the second one 1 ms long, so that
-- what a zero-delay timer runs, after_func's runner, has had its turn);
-- 500 turns at most
local function vsettle()
  local quiet = 0
  for _ = 1, 500 do
    local a = activity()
    ngx.sleep(quiet == 0 and 0 or 0.001)
    if activity() ~= a then
      quiet = 0
    else
      quiet = quiet + 1
      if quiet >= 2 then return end
    end
  end
end

local function fire()
  advance()
  start_runner()
end

local vstate = { jumper = false, autojump = false, real = nil }

local function jumper(premature)
  if premature then vstate.jumper = false return end
  local ok, err = pcall(function()
    local quiet_since
    while vstate.autojump and vclock_installed() and not exiting() do
      local a = activity()
      if next_wakeup() == nil then
        ngx.sleep(0.005) -- nothing is due: nothing to jump to
        quiet_since = nil
      else
        vsettle()
        if activity() ~= a then
          quiet_since = nil
        else
          ngx.update_time()
          local t = ngx.now() -- (real time: nginx's own clock)
          quiet_since = quiet_since or t
          if not vstate.real or t - quiet_since >= vstate.real then
            vclock_step(9007199254740991) -- to the next due time (there is one)
            fire()
            quiet_since = nil
          else
            ngx.sleep(0.001)
          end
        end
      end
    end
  end)
  if not ok then log(ERR, "lcontext: error in the virtual clock's autojump: ", tostring(err)) end
  vstate.jumper = false
end

local function set_autojump(v)
  vstate.autojump = v and true or false
  vstate.real = type(v) == "number" and v or nil
  if vstate.autojump and not vstate.jumper then
    local ok, started = pcall(timer_at, 0, jumper)
    if ok and started then vstate.jumper = true end
  end
end

local Clock = {}
local clock_mt = { __index = Clock, __name = "context.virtual_clock",
  __tostring = function(c) return tostring(c._c) end,
  __close = function(c) c:uninstall() end }
function Clock:now() return self._c:now() end
function Clock:installed() return self._c:installed() end
function Clock:autojump(v)
  self._c:autojump(v)
  set_autojump(v)
end
function Clock:uninstall()
  if not self._c:installed() then return end
  vstate.autojump = false
  self._c:uninstall()
  kick() -- real time drives the deadlines again
end
--- clock:advance(seconds) -> clock:now(), once what fell due has fired and
-- what it woke has run, one due time after the other
function Clock:advance(seconds)
  if not self._c:installed() then
    error("clock:advance: this virtual clock is not installed (uninstalled)", 2)
  end
  need_yieldable("advance", "advance the virtual clock", 3)
  local target = vclock_target(seconds)
  vsettle()
  while vclock_step(target) do
    fire()
    vsettle()
  end
  fire()
  vsettle()
  return self._c:now()
end
check.vclock_wrap = function(c, autojump)
  set_autojump(autojump)
  return setmetatable({ _c = c }, clock_mt)
end

-------------------------------------------------------------------------------
-- The helpers (the same files init.lua loads), built on this module
-------------------------------------------------------------------------------
local HELPERS = { "group", "retry", "breaker", "hedge", "patterns", "observe", "metrics",
                  "sync", "tasks", "vclock" }
local searchpath = package.searchpath
for _, name in ipairs(HELPERS) do
  local path = "lcontext." .. name
  local found = true
  if searchpath then found = searchpath(path, package.path) ~= nil end
  if found then
    local exports = require(path)(M)
    for k, v in pairs(exports) do
      assert(M[k] == nil, "lcontext.ngx: " .. path .. " redefines " .. k)
      M[k] = v
    end
  end
end

if M.metrics_source then
  M.metrics_source("ngx", function()
    return {
      { name = "lcontext_ngx_tasks_started_total", help = "Light threads started by context.go.",
        type = "counter", samples = { { value = stats.tasks_started } } },
      { name = "lcontext_ngx_driver_starts_total",
        help = "Deadline driver timers started (one runs per worker while deadlines are watched).",
        type = "counter", samples = { { value = stats.driver_starts } } },
      { name = "lcontext_ngx_driver_failures_total",
        help = "Deadline driver timers ngx.timer.at refused.",
        type = "counter", samples = { { value = stats.driver_failures } } },
    }
  end)
end

-------------------------------------------------------------------------------
-- Requests
-------------------------------------------------------------------------------
local REQ_KEY = "lcontext.request"
local REQUEST_PHASES = { rewrite = true, access = true, content = true }

local FROM_REQUEST_OPTS = check.names { "parent", "timeout", "reserve", "max_timeout",
  "new_trace", "sampled", "request_id", "abort", "max_headers" }

--- context.from_request([opts]) -> ctx, cancel, info
-- The context of the current request, made on the first call (the same one
-- is returned by later calls in the request, in any phase): the deadline
-- the headers carry (grpc-timeout, x-request-timeout-ms; see
-- lcontext.trace's extract, which also reads traceparent, tracestate and
-- x-request-id), at most opts.timeout seconds (the server's own budget),
-- cancelled with cause "client aborted" when the client goes away (needs
-- `lua_check_client_abort on`; info.abort tells whether it is watched).
-- opts: parent, timeout, reserve, max_timeout, new_trace, sampled,
-- request_id (see trace.extract), abort (false: do not register
-- ngx.on_abort), max_headers (100).
-- cancel(cause) ends it; context.finish_request() does it from any phase
-- (log_by_lua), so that nothing outlives the request.
function M.from_request(opts)
  opts = check.options(opts, "from_request", 1, FROM_REQUEST_OPTS)
  local phase = get_phase()
  if not REQUEST_PHASES[phase] then
    error(("lcontext.ngx: from_request needs a request (rewrite, access or content phase), "
      .. "not the '%s' phase"):format(tostring(phase)), 2)
  end
  local nctx = ngx.ctx
  local req = nctx[REQ_KEY]
  if not req then
    local parent = opts.parent
    if parent == nil then parent = M.background() else check_ctx(parent, "from_request", 1) end
    local tcancel
    if opts.timeout ~= nil then
      check_seconds(opts.timeout, "from_request", 1)
      parent, tcancel = M.with_timeout(parent, opts.timeout)
    end
    local trace = require "lcontext.trace"
    local headers = ngx.req.get_headers(opts.max_headers or 100)
    local ctx, xcancel, info = trace.extract(headers, parent, {
      reserve = opts.reserve, max_timeout = opts.max_timeout, new_trace = opts.new_trace,
      sampled = opts.sampled, request_id = opts.request_id,
    })
    local function cancel(cause)
      xcancel(cause)
      if tcancel then tcancel(cause) end
    end
    info = info or {}
    info.abort = false
    req = { ctx = ctx, cancel = cancel, info = info, abort_phase = nil }
    nctx[REQ_KEY] = req
  end
  -- ngx.on_abort lasts for the phase it is registered in: once per phase
  if opts.abort ~= false and req.abort_phase ~= phase and not req.ctx:is_done() then
    req.abort_phase = phase
    local cancel = req.cancel
    local ok, err = ngx.on_abort(function() cancel("client aborted") end)
    req.info.abort = ok and true or false
    req.info.abort_error = (not ok) and err or nil
  end
  return req.ctx, req.cancel, req.info
end

--- context.request_context() -> the request's context (from_request), or nil
function M.request_context()
  local known = ngx.ctx[REQ_KEY]
  return known and known.ctx
end

--- context.finish_request([cause]): cancel the request's context, if made
-- (log_by_lua: once the response is sent, whatever still waits ends).
function M.finish_request(cause)
  local known = ngx.ctx[REQ_KEY]
  if known then known.cancel(cause) end
end

-------------------------------------------------------------------------------
-- A breaker shared by the workers
-------------------------------------------------------------------------------

--- context.shared_breaker(dict, opts) -> br
-- context.breaker(opts) with its state in the ngx.shared.DICT `dict` (a
-- name, or the dict itself), under keys prefixed with opts.name
-- ("breaker"): every worker that makes a breaker of that name on that dict
-- shares its state. Its clock is ngx.now unless opts.clock says otherwise.
-- on_state_change is called in the worker that makes the change.
function M.shared_breaker(dict, opts)
  local store = dict
  if type(dict) == "string" then
    store = ngx.shared[dict]
    if not store then
      error(("bad argument #1 to 'shared_breaker' (no lua_shared_dict named '%s')"):format(dict), 2)
    end
  elseif type(dict) ~= "table" and type(dict) ~= "userdata" then
    error(("bad argument #1 to 'shared_breaker' (dict name or ngx.shared.DICT expected, got %s)")
      :format(type(dict)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to 'shared_breaker' (table expected, got %s)"):format(type(opts)), 2)
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.store = store
  -- the clock the dict's ttls run on (docs/resilience.md, the state store)
  if o.clock == nil then o.clock = ngx.now end
  -- (its options checked as context.breaker's, named as this function's)
  local br = M._new_breaker(o, "shared_breaker", 2)
  return br
end

-- every function whose first argument is a context is also a method (the
-- methods are shared with init.lua's: these, the nginx ones, win)
check.install_methods(M, methods)

-- In nginx, `require "lcontext"` gives this module too, once it is loaded.
if package.loaded["lcontext"] == nil then package.loaded["lcontext"] = M end

return M
