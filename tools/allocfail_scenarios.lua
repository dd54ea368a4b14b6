-- allocfail_scenarios.lua — the scenarios of the allocation-failure sweep
-- (tools/allocfail.c) and the epilogue that checks, after each
-- run, that the runtime was left consistent.
--
-- A scenario is run(context, env) with the allocator armed: the N-th
-- allocation fails (and, in "sticky" mode, every later one). It must end
-- normally or with a memory error; any other error is a failure. So a
-- scenario asserts only what holds whatever failed before (a memory error
-- in a task is swallowed by the loop: what the task returns is not
-- asserted), and every wait has a way out by itself (a short root
-- deadline), so that a hang or a deadlock is a bug, not a scenario that
-- stopped half-way.
--
-- env: pipe_r (an fd never readable), pipe_w (always writable),
-- raise(name) (sends a signal to the process, only if a handler is
-- installed), armed(), injected(), name.
--
-- Keep each small: the sweep runs it once per allocation it makes.

local S = {}
local function scenario(name, run) S[#S + 1] = { name = name, run = run } end

-- Derivations of every kind, a short chain, values, causes, cancels.
scenario("derive", function(context)
  local bg = context.background()
  local k = context.key("k")
  local a, ca = context.with_cancel(bg)
  local b, cb = context.with_timeout(a, 0.05)
  local c = context.with_value(b, k, "v")
  local d, cd = context.with_cancel_cause(c)
  local w = context.without_cancel(d)
  local e, ce = context.with_cancel(w)
  local m, cm = context.merge(d, e)
  local dl, cdl = context.with_deadline(m, context.time() + 0.05)
  local x = dl
  for _ = 1, 4 do x = context.with_cancel(x) end
  assert(x:value(k) == "v")
  assert(tostring(x) ~= nil)
  cd("cause")
  assert(d:cause() == "cause" and m:cause() == "cause" and x:err() == context.canceled)
  assert(e:err() == nil)
  ca()
  assert(c:err() == context.canceled and e:err() == nil)
  ce(); cm(); cdl(); cb()
  local gone = context.with_timeout(bg, 0) -- done at once
  assert(gone:err() == context.deadline_exceeded)
end)

-- after_func: a callback run by a cancel, one by a deadline, one stopped
-- before anything happened; then the loop runs them.
scenario("after_func", function(context)
  local bg = context.background()
  local root, cancel_root = context.with_timeout(bg, 0.2)
  local a, ca = context.with_cancel(root)
  local ran = 0
  local stop1 = context.after_func(a, function() ran = ran + 1 end)
  local t = context.with_timeout(root, 0.002)
  context.after_func(t, function() ran = ran + 1 end)
  local b, cb = context.with_cancel(root)
  local stop3 = context.after_func(b, function() ran = ran + 1 end)
  assert(stop3() == true)
  ca()
  context.run()
  stop1() -- ran already (or its task failed): false, or true if never started
  cb()
  cancel_root()
  context.run()
end)

-- Go's `defer stop()`: stop() of a callback that cancel() has queued
-- (spec/regress/stop_after_cancel_spec.lua), then collections, then the loop.
scenario("after_func_stop_queued", function(context)
  local a, ca = context.with_cancel(context.background())
  do
    local stop = context.after_func(a, function() end)
    ca()
    stop()
  end
  collectgarbage()
  collectgarbage()
  context.run()
end)

-- A foreign loop's calls: pollfd, timeout and step(0) driving a sleep and
-- fd waits (no poll here: a short step(t) stands for the host's sleep).
scenario("foreign", function(context, env)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.05)
  assert(context.pollfd() >= 0)
  context.go(function() context.sleep(root, 0.002) end)
  context.go(function()
    context.wait_fd(root, env.pipe_w, "w")
    context.wait_fd(root, env.pipe_r, "r") -- never readable: its deadline ends it
  end)
  local t_end = context.now() + 1
  while context.step(0) and context.now() < t_end do
    local t = context.timeout()
    if t ~= nil and t > 0 then context.step(math.min(t, 0.005)) end
  end
  cr()
  context.run()
end)

-- Tasks that sleep (on the wheel), yield, return values; the main thread
-- sleeps and waits for a task.
scenario("go_sleep", function(context)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.2)
  local t1 = context.go(function(x)
    context.sleep(root, 0.002)
    return x
  end, 1)
  context.go(function() return context.sleep(root, 0) end)
  context.go(function()
    coroutine.yield()
    return 3
  end)
  context.run()
  t1:wait()
  context.sleep(root, 0.001)
  local t4 = context.go(function() return context.sleep(root, 0.001) end)
  t4:wait()
  cr()
end)

-- Tasks parked on ctx:done() (a cancel, a deadline), then the cancel and
-- the loop.
scenario("park_done", function(context)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.2)
  local a, ca = context.with_cancel(root)
  local v = context.with_value(a, "k", 1)
  local tasks = {}
  for i = 1, 3 do tasks[i] = context.go(function() return v:done() end) end
  local td = context.with_timeout(root, 0.002)
  tasks[4] = context.go(function() return td:done() end)
  context.run("nowait") -- they park
  ca()
  context.run()
  for i = 1, 4 do tasks[i]:wait() end
  assert(v:done() == context.canceled) -- done: returns at once
  cr()
end)

-- select over contexts, a task, a sleep and fds, in a task and on the main
-- thread; wait_fd.
scenario("select", function(context, env)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.2)
  local a, ca = context.with_cancel(root)
  local t = context.go(function() return context.sleep(root, 0.003) end)
  local r = context.go(function()
    local i = context.select(a, t, 0.05, context.fd(env.pipe_r, "r"))
    local j = context.select(a, context.fd(env.pipe_w, "w"))
    context.wait_fd(root, env.pipe_w, "w")
    return i, j
  end)
  local i = context.select(a, 0.001, context.fd(env.pipe_r, "r"))
  assert(i == 2)
  r:wait()
  ca()
  context.run()
  cr()
end)

-- Channels, a select with cases and a semaphore (csrc/l_sync.c on Lua
-- 5.3+): tasks blocked in each kind of call, and the main thread.
scenario("sync", function(context)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.2)
  local ch, buf = context.channel(), context.channel(2)
  local sem = context.semaphore(1)
  assert(sem:acquire(root))
  local r = context.go(function() return ch:recv(root) end)
  local s = context.go(function() return ch:send(root, "v") end)
  local q = context.go(function() return sem:acquire(root) end)
  local x = context.go(function()
    return context.select(buf:recv_case(), ch:send_case(1), root)
  end)
  buf:send(root, 1)
  sem:release()
  context.select(ch:recv_case(), root, 0.01)
  r:wait(); s:wait(); q:wait(); x:wait()
  cr()
end)

-- Signal contexts: one cancelled by the signal (a task waits on it), one
-- cancelled by its cancel, one under a parent that ends.
scenario("signal", function(context, env)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.2)
  local s, cs = context.signal(root, "USR1")
  local t = context.go(function() return s:done() end)
  context.run("nowait")
  env.raise("USR1")
  t:wait()
  local s2, cs2 = context.signal(root, "USR1", "USR2")
  cs2()
  local p, cp = context.with_cancel(root)
  context.signal(p, "USR2")
  cp()
  context.run()
  cs()
  cr()
  assert(s2:err() == context.canceled)
end)

-- The Lua helpers, briefly: a group with a failing member, retry, a breaker.
scenario("helpers", function(context)
  local bg = context.background()
  local root, cr = context.with_timeout(bg, 0.2)
  local g = context.group(root, 2)
  g:go(function(c) return context.sleep(c, 0.001) end)
  g:go(function() error("boom") end)
  g:wait()
  context.retry(root, function(_, attempt)
    if attempt < 2 then return nil, "again" end
    return true
  end, { attempts = 3, base = 0.001, jitter = "none" })
  local br = context.breaker({ threshold = 1, cooldown = 0.01 })
  br:call(root, function() return true end)
  br:call(root, function() return nil, "down" end)
  br:call(root, function() return true end) -- open: refused
  cr()
end)

-- Errors raised in tasks and in callbacks, with on_error set.
scenario("task_errors", function(context)
  local bg = context.background()
  local seen = 0
  local prev = context.on_error(function(err, tb, task)
    seen = seen + 1
    return err, tb, task
  end)
  local t = context.go(function() error("boom") end)
  context.go(function() error({ code = 1 }) end)
  context.go(function() error(setmetatable({}, { __tostring = function() return "obj" end })) end)
  local a, ca = context.with_cancel(bg)
  context.after_func(a, function() error("callback boom") end)
  ca()
  context.run()
  t:wait()
  context.on_error(prev)
end)

-- Deadlines fired by the loop's timer, with waiters below them: the wheel
-- cancels a subtree with tasks and callbacks on it.
scenario("deadline_tree", function(context)
  local bg = context.background()
  local root = context.with_timeout(bg, 0.003)
  local kids = {}
  for i = 1, 3 do kids[i] = context.with_cancel(root) end
  local m = context.merge(kids[1], kids[2])
  for i = 1, 3 do context.go(function() return kids[i]:done() end) end
  context.after_func(m, function() end)
  context.go(function() return context.sleep(kids[3], 1) end)
  context.run()
  assert(m:err() == context.deadline_exceeded)
end)

-------------------------------------------------------------------------------
-- The epilogue: run with the allocator disarmed, in the same state, after
-- the scenario. Returns nil when all is well, else what is wrong.

-- lcontext's own tables in the registry (white-box: what is anchored)
local function find_tables(context)
  local reg = debug.getregistry()
  local anchors
  for _, v in pairs(reg) do
    if type(v) == "table" and rawget(v, "canceled") == context.canceled and
        rawget(v, "deadline_exceeded") == context.deadline_exceeded then
      anchors = v
    end
  end
  return anchors
end

local function epilogue(context)
  collectgarbage()
  collectgarbage()
  -- run() must return: every scenario's waits end within 0.2 s; a wait
  -- that nothing can end is a `deadlock` error; a hang is caught by the
  -- host's alarm
  local t0 = context.now()
  local ok, err = pcall(context.run)
  if not ok then return "context.run() raised: " .. tostring(err) end
  if context.now() - t0 > 1 then
    return ("context.run() took %.2f s"):format(context.now() - t0)
  end
  collectgarbage()
  collectgarbage()
  local m = context.metrics()
  for k, v in pairs(m) do
    if math.type(v) == "integer" and (v < 0 or v > 2 ^ 40) then
      return ("metrics: %s = %d (negative or wrapped)"):format(k, v)
    end
  end
  for _, k in ipairs({ "tasks", "tasks_waiting", "callbacks_pending", "fd_waits",
                       "timers_pending", "signal_contexts" }) do
    if m[k] ~= 0 then
      return ("metrics: %s = %d once run() has returned"):format(k, m[k])
    end
  end
  local st = context.sync_stats()
  for _, k in ipairs({ "channel_blocked_send", "channel_blocked_recv", "semaphore_waiting" }) do
    if st[k] ~= 0 then
      return ("sync_stats: %s = %d once run() has returned"):format(k, st[k])
    end
  end
  local anchors = find_tables(context)
  if anchors == nil then return "lcontext's anchors table not found" end
  local n, what = 0, nil
  for k, v in pairs(anchors) do
    if type(k) ~= "string" then
      n = n + 1
      what = what or tostring(v)
    end
  end
  if n > 0 then
    return ("%d waiter(s) still anchored once run() has returned (one: %s)"):format(n, what)
  end
  -- the runtime still works
  local ctx = context.with_timeout(context.background(), 0.002)
  local a, ca = context.with_cancel(context.background())
  local ran = false
  context.after_func(a, function() ran = true end)
  local t = context.go(function() return ctx:done() end)
  ca()
  ok, err = pcall(context.run)
  if not ok then return "a fresh context.run() raised: " .. tostring(err) end
  if t:wait() ~= context.deadline_exceeded or not ran then
    return "the runtime no longer works: a fresh task or callback did not run"
  end
  return nil
end

return { scenarios = S, epilogue = epilogue }
