-- backend_spec.lua — lcontext.ngx, the OpenResty backend, on a stand-in for
-- ngx_lua (spec/ngx/mock_ngx.lua): the logic of its waits, its deadline
-- driver, tasks, after_func, requests and the shared breaker, on every
-- runtime that can yield across pcall (ngx_lua's LuaJIT can; PUC Lua 5.1
-- cannot, so there this file has nothing to test). The real nginx test is
-- spec/ngx/run.sh.
local core = require "lcontext.core"

if _VERSION == "Lua 5.1" and not jit then
  describe("lcontext.ngx (mock ngx_lua)", function()
    pending("needs yields across pcall (LuaJIT, Lua 5.2+); PUC Lua 5.1 has none")
  end)
  return
end

-- lcontext.ngx installs its ctx:done() (and ctx:sleep(), ... : every
-- context-first function) in the contexts' methods (shared by every module)
-- and becomes `require "lcontext"`: undo both at the end, for the other
-- spec files
local saved_methods, saved_lcontext = {}, package.loaded["lcontext"]
for k, v in pairs(core._methods) do saved_methods[k] = v end
local saved_ngx = rawget(_G, "ngx")

local mock = require("spec.ngx.mock_ngx").install(core.now)
local context = require "lcontext.ngx"
local bg = context.background()
local S = mock.state

-- Inside mock.run: sleep in steps of 5 ms until cond() holds, for at most
-- a second. For what happens in a light thread or timer of its own, at a
-- time the mock's scheduler picks (and a loaded machine may delay).
local function eventually(cond)
  for _ = 1, 200 do
    if cond() then return end
    context.sleep(bg, 0.005)
  end
end

-- never early; late by no more than a loaded machine can explain
local function close_to(v, want, slack)
  return v >= want - 0.001 and v <= want + (slack or 0.5)
end

describe("lcontext.ngx (mock ngx_lua)", function()
  teardown(function()
    for k in pairs(core._methods) do core._methods[k] = nil end
    for k, v in pairs(saved_methods) do core._methods[k] = v end
    package.loaded["lcontext"] = saved_lcontext
    package.loaded["lcontext.ngx"] = nil
    _G.ngx = saved_ngx
  end)

  after_each(function()
    -- nothing of a test outlives it: the driver stops with the wheel empty
    mock.spin(0.002)
    if os.getenv("DBG") then io.stderr:write(("[tasks=%d waits=%d t=%.2f]\n"):format(context.metrics().tasks, context.metrics().tasks_waiting, os.clock())) end
  end)

  it("has the API of lcontext, with the helpers", function()
    for _, k in ipairs({ "with_cancel", "with_timeout", "with_value", "merge", "key", "go",
      "sleep", "select", "after_func", "group", "retry", "hedge", "breaker", "split",
      "metrics_text", "from_request", "shared_breaker", "on_error" }) do
      assert.is_not_nil(context[k], k)
    end
    assert.are.equal("ngx", context.backend)
  end)

  it("ctx:done() suspends the light thread until a cancel elsewhere", function()
    local ctx, cancel = bg:with_cancel()
    local order = {}
    mock.run(function()
      context.go(function()
        order[#order + 1] = "canceller"
        cancel("why")
      end)
      order[#order + 1] = "waiting"
      assert.are.equal(context.canceled, ctx:done())
      order[#order + 1] = "woke"
    end)
    assert.are.same({ "waiting", "canceller", "woke" }, order)
    assert.are.equal("why", ctx:cause())
  end)

  it("ctx:done() ends at the deadline, never early", function()
    mock.run(function()
      local t0 = context.now() -- (before the context: a pause cannot shorten it)
      local ctx = context.with_timeout(bg, 0.05)
      assert.are.equal(context.deadline_exceeded, ctx:done())
      assert.is_true(close_to(context.now() - t0, 0.05))
    end)
  end)

  it("sleep: true after the time, or nil, err as soon as ctx is done", function()
    mock.run(function()
      local t0 = context.now()
      assert.is_true(context.sleep(bg, 0.03))
      assert.is_true(close_to(context.now() - t0, 0.03))
      t0 = context.now()
      local ctx = context.with_timeout(bg, 0.02)
      local ok, err = context.sleep(ctx, 5)
      assert.is_nil(ok)
      assert.are.equal(context.deadline_exceeded, err)
      assert.is_true(close_to(context.now() - t0, 0.02))
      assert.is_true(context.sleep(bg, 0))
    end)
  end)

  it("select: the first of contexts, tasks and sleeps; argument order breaks ties", function()
    mock.run(function()
      local ctx, cancel = bg:with_cancel()
      local t = context.go(function() context.sleep(bg, 0.02); return "t" end)
      assert.are.equal(2, (context.select(ctx, t, 1)))
      assert.are.equal(3, (context.select(ctx, 1, 0.01)))
      context.go(function() cancel() end)
      local i, w = context.select(5, ctx)
      assert.are.equal(2, i)
      assert.are.equal(ctx, w)
      assert.are.equal(1, (context.select(ctx, 0)))
      assert.are.equal(1, (context.select(0, ctx)))
    end)
  end)

  it("select checks its arguments and refuses fd waits, saying why", function()
    mock.run(function()
      assert.has_error(function() context.select() end,
        "bad argument #1 to 'select' (waitable expected, got no value)")
      assert.has_error(function() context.select(bg, "x") end,
        "bad argument #2 to 'select' (context, task or number of seconds expected, got string)")
      local ok, err = pcall(context.select, { fd = 3 })
      assert.is_false(ok)
      assert.matches("not available in OpenResty", err)
    end)
  end)

  it("go runs a light thread after go returns; wait gives its results or nil, err", function()
    local errors_seen = {}
    local prev = context.on_error(function(err) errors_seen[#errors_seen + 1] = err end)
    mock.run(function()
      local started = false
      local t = context.go(function(a, b) started = true; context.sleep(bg, 0.01); return a + b, "x" end, 1, 2)
      assert.is_false(started)
      assert.are.equal("running", t:status())
      local s, x = t:wait()
      assert.are.equal(3, s)
      assert.are.equal("x", x)
      assert.are.equal("ok", t:status())
      local bad = context.go(function() error({ code = 7 }) end)
      local r, e = bad:wait()
      assert.is_nil(r)
      assert.are.same({ code = 7 }, e)
      assert.are.equal("failed", bad:status())
      -- cancellations are outcomes, not errors to report
      local c = context.go(function() error(context.canceled) end)
      assert.are.same({ nil, context.canceled }, { c:wait() })
    end)
    context.on_error(prev)
    assert.are.equal(1, #errors_seen)
  end)

  it("a bare coroutine.yield() in a task lets the other tasks run, then goes on", function()
    -- (ngx_lua resumes a light thread that yields at once unless threads
    -- are posted: tasks that waited on a semaphore to start were not, so a
    -- yield did not let them run; they start by yielding, posted threads)
    mock.run(function()
      local log = {}
      local a = context.go(function()
        log[#log + 1] = "a1"
        coroutine.yield()
        log[#log + 1] = "a2"
        coroutine.yield("ignored")
        log[#log + 1] = "a3"
        return "a done"
      end)
      local b = context.go(function()
        log[#log + 1] = "b1"
        coroutine.yield()
        log[#log + 1] = "b2"
        context.sleep(bg, 0.005)
        log[#log + 1] = "b3"
      end)
      assert.are.equal("a done", a:wait())
      b:wait()
      assert.are.same({ "a1", "b1", "a2", "b2", "a3", "b3" }, log)
    end)
  end)

  it("a task's error value whose __tostring raises is still its error", function()
    local got, tb
    local prev = context.on_error(function(e, t) got, tb = e, t end)
    local bad = setmetatable({}, { __tostring = function() error("no tostring") end })
    mock.run(function()
      local t = context.go(function() error(bad) end)
      local v, err = t:wait()
      assert.is_nil(v)
      assert.is_true(rawequal(err, bad), "error: " .. type(err))
      assert.are.equal("failed", t:status())
    end)
    context.on_error(prev)
    assert.is_true(rawequal(got, bad), "reported: " .. type(got))
    assert.matches("^%(error object is a table value%)", tb)
  end)

  it("task:wait works from a light thread that is not the parent", function()
    mock.run(function()
      local t = context.go(function() context.sleep(bg, 0.01); return "done" end)
      local other = context.go(function() return t:wait() end)
      assert.are.equal("done", other:wait())
    end)
  end)

  it("fires deadlines with ONE driver timer, not one per context", function()
    local made = S.timers_made
    S.max_pending = 0
    local n = 100
    mock.run(function()
      local tasks = {}
      for i = 1, n do
        local ctx = context.with_timeout(bg, 0.02 + (i % 10) * 0.003)
        -- after_func: only the driver can fire these deadlines
        context.after_func(ctx, function() end)
        tasks[i] = context.go(function() return ctx:done() end)
      end
      for i = 1, n do assert.are.equal(context.deadline_exceeded, tasks[i]:wait()) end
    end)
    mock.spin(0.01)
    -- the driver, and the callbacks' runner (once per batch of deadlines):
    -- never more than these two pending at once
    local timers = S.timers_made - made
    -- (one per context would make at least n; batches depend on timing, so
    -- slow runs, under ASan or valgrind, make more)
    assert.is_true(timers >= 2 and timers < n, "timers made: " .. timers)
    assert.is_true(S.max_pending <= 2, "timers pending at once: " .. S.max_pending)
    assert.is_false(context.metrics().ngx_driver_running)
    assert.is_nil(core._next_wakeup())
  end)

  it("wakes the driver when an earlier deadline is watched", function()
    local fired_at
    mock.run(function()
      local far = context.with_timeout(bg, 3)
      local stop_far = context.after_func(far, function() end) -- the driver sleeps
      local t0 = context.now()
      local near = context.with_timeout(bg, 0.05)
      context.after_func(near, function() fired_at = context.now() - t0 end)
      context.sleep(bg, 0.2)
      assert.is_true(stop_far())
    end)
    assert.is_truthy(fired_at)
    assert.is_true(close_to(fired_at, 0.05), "fired after " .. tostring(fired_at))
  end)

  it("after_func runs its function in a timer once ctx is done; stop prevents it", function()
    local ran, ran2 = 0, 0
    mock.run(function()
      local ctx, cancel = bg:with_cancel()
      context.after_func(ctx, function() ran = ran + 1 end)
      local stop = context.after_func(ctx, function() ran2 = ran2 + 1 end)
      assert.is_true(stop())
      assert.is_false(stop())
      -- (the callbacks run in timers of their own)
      local function until_ran(n) eventually(function() return ran >= n end) end
      cancel()
      assert.are.equal(0, ran) -- never inside cancel()
      until_ran(1)
      assert.are.equal(1, ran)
      -- on a context done already, fn is queued, not started: as on the
      -- libev backend, stop() before it starts prevents it
      local done_ctx, c2 = bg:with_cancel()
      c2()
      local stop2 = context.after_func(done_ctx, function() ran = ran + 1 end)
      assert.is_true(stop2())
      context.after_func(done_ctx, function() ran = ran + 1 end)
      until_ran(2)
      assert.are.equal(2, ran)
      -- Go's `defer stop()`: stop() after the cancel that queued fn
      local c3, cancel3 = bg:with_cancel()
      local stop3 = context.after_func(c3, function() ran2 = ran2 + 1 end)
      cancel3()
      assert.is_true(stop3())
      assert.is_false(stop3())
      context.after_func(done_ctx, function() ran = ran + 1 end)
      until_ran(3)
    end)
    assert.are.equal(0, ran2)
  end)

  it("the helpers wait through this backend: group, retry, hedge", function()
    mock.run(function()
      local g, gctx = context.group(bg)
      g:go(function(c) return c:done() end)
      g:go(function() context.sleep(bg, 0.01); return nil, "boom" end)
      assert.are.equal("boom", g:wait())
      assert.are.equal("boom", gctx:cause())

      local attempts, t0 = 0, context.now()
      local v = context.retry(bg, function(_, n)
        attempts = n
        if n < 3 then return nil, "flaky" end
        return "ok"
      end, { base = 0.01, jitter = "none", attempts = 5 })
      assert.are.equal("ok", v)
      assert.are.equal(3, attempts)
      assert.is_true(context.now() - t0 >= 0.03 - 0.001) -- slept 0.01 + 0.02

      local r = context.hedge(bg, function(actx, i)
        if i == 1 then actx:done(); return nil, "slow one cancelled" end
        return "second"
      end, { delay = 0.01 })
      assert.are.equal("second", r)
    end)
  end)

  it("parallel light threads under one context all stop when it is cancelled", function()
    mock.run(function()
      local ctx, cancel = bg:with_cancel()
      local tasks = {}
      for i = 1, 5 do
        tasks[i] = context.go(function() return context.sleep(ctx, 10) end)
      end
      context.sleep(bg, 0.01)
      local t0 = context.now()
      cancel()
      for i = 1, 5 do
        local ok, err = tasks[i]:wait()
        assert.is_nil(ok)
        assert.are.equal(context.canceled, err)
      end
      -- (the sleeps are 10 s: anything near 1 s is the cancel, with room
      -- for a loaded machine)
      assert.is_true(context.now() - t0 < 1)
    end)
  end)

  it("a light thread killed mid-wait leaves no watch behind", function()
    mock.run(function()
      local ctx = context.with_timeout(bg, 30)
      local t = context.go(function() return ctx:done() end)
      -- until the task waits (it starts after go returns)
      eventually(function() return core._next_wakeup() ~= nil end)
      assert.is_truthy(core._next_wakeup() ~= nil)
      mock.ngx.thread.kill(t:thread())
    end)
    collectgarbage()
    collectgarbage()
    assert.is_nil(core._next_wakeup())
  end)

  it("a killed light thread's waits and task are released, though ngx_lua clears its stack", function()
    -- (the mock's ngx.thread.kill clears the locals of the killed thread's
    -- frames, as ngx_lua's reset does: a watch or guard made as a closure in
    -- those frames used to read nil there)
    local ctx, cancel = context.with_timeout(bg, 30)
    local forever = bg:with_cancel() -- only a cancel ends it; nobody will
    local waiter, other
    mock.run(function()
      local t = context.go(function() return ctx:done() end)
      waiter = context.go(function() return t:wait() end)
      other = context.go(function() return context.select(forever, ctx, 30) end)
      context.after_func(forever, function() end)
      eventually(function() return context.metrics().tasks_waiting == 3 end)
      assert.are.equal(3, context.metrics().tasks_waiting)
      mock.ngx.thread.kill(t:thread())
      mock.ngx.thread.kill(other:thread())
      -- the watches of the killed waits are told first, before any collection
      cancel()
      context.sleep(bg, 0.01)
      collectgarbage()
      collectgarbage()
      -- the killed task ended as failed, and its waiter heard of it
      eventually(function() return waiter:status() ~= "running" end)
      assert.are.same({ nil, "task's light thread was killed" }, { waiter:wait() })
    end)
    collectgarbage()
    collectgarbage()
    local m = context.metrics()
    assert.are.equal(0, m.tasks)
    assert.are.equal(0, m.tasks_waiting)
    assert.are.equal(1, m.callbacks_pending) -- forever's after_func, which could still run
    assert.are.equal(1, m.ngx_watches)
    assert.are.equal(0, m.ngx_sema_waiters)
    assert.are.equal(0, m.ngx_watch_errors)
    assert.are.same({}, mock.errors())
    forever = nil
    collectgarbage()
    collectgarbage()
    m = context.metrics()
    -- nothing can cancel `forever` now: its after_func went with it, uncounted
    assert.are.equal(0, m.callbacks_pending)
    assert.are.equal(0, m.ngx_watches)
    assert.is_nil(core._next_wakeup())
  end)

  it("task:wait on a killed task whose guard runs as the wait begins gives 'killed' (found by fuzz_ngx)", function()
    -- a killed light thread's task ends when its guard is collected: any
    -- allocation may run it, such as those of the wait that has just seen
    -- the task running (wait_on indexed its _waiters, nil by then)
    local forever, cancel = bg:with_cancel()
    mock.run(function()
      local t = context.go(function() return forever:done() end)
      eventually(function() return context.metrics().tasks_waiting == 1 end)
      mock.ngx.thread.kill(t:thread())
      assert.are.equal("running", t:status())
      local sem = package.loaded["ngx.semaphore"]
      local new = sem.new
      sem.new = function(...) -- the wait's first allocation: the guard runs here
        sem.new = new
        collectgarbage(); collectgarbage()
        return new(...)
      end
      local r = { pcall(t.wait, t) }
      sem.new = new
      assert.are.same({ true, nil, "task's light thread was killed" }, r)
    end)
    cancel()
    collectgarbage(); collectgarbage()
    local m = context.metrics()
    assert.are.equal(0, m.tasks)
    assert.are.equal(0, m.tasks_waiting)
    assert.are.same({}, mock.errors())
  end)

  -- a stand-in for a semaphore wait that returns at once, for waits made
  -- in `phase`: results() gives what it returns; calls are counted, and a
  -- loop that spins is stopped by an error after `limit` calls
  local function at_once(phase, limit, ...)
    local res = { n = select("#", ...), ... }
    local h = { calls = 0 }
    S.sema_hook = function(_, _, cur)
      if cur.phase ~= phase then return end
      h.calls = h.calls + 1
      if h.calls > limit then error("spinning: " .. h.calls .. " waits returned at once", 0) end
      return (table.unpack or unpack)(res, 1, res.n)
    end
    return h
  end

  after_each(function() S.sema_hook = nil end)

  for _, case in ipairs({
    { "a timeout of 0 ms", nil, "timeout" },
    { "a stray post", true },
  }) do
    it("a wait whose semaphore returns at once (" .. case[1] .. ") yields to nginx on each pass", function()
      local h = at_once("content", 100000, case[2], case[3])
      local y0 = context.metrics().ngx_yields_forced
      mock.run(function()
        local ctx = context.with_timeout(bg, 0.05)
        local t0 = context.now()
        assert.are.equal(context.deadline_exceeded, ctx:done())
        assert.is_true(close_to(context.now() - t0, 0.05))
      end)
      S.sema_hook = nil
      -- about two passes per forced 1 ms sleep; a spin makes tens of thousands
      assert.is_true(h.calls > 0 and h.calls < 1000, h.calls .. " passes")
      assert.is_true(context.metrics().ngx_yields_forced > y0)
    end)
  end

  it("the driver yields on each pass when its semaphore returns at once", function()
    local h = at_once("timer", 100000, nil, "timeout")
    local p0 = context.metrics().ngx_driver_passes
    mock.run(function()
      local ctx = context.with_timeout(bg, 0.05)
      assert.are.equal(context.deadline_exceeded, ctx:done())
    end)
    S.sema_hook = nil
    mock.spin(0.01)
    local passes = context.metrics().ngx_driver_passes - p0
    assert.is_true(h.calls < 1000 and passes < 1000, h.calls .. " waits, " .. passes .. " passes")
    assert.is_false(context.metrics().ngx_driver_running)
  end)

  it("the driver stops when its semaphore wait fails, says so, and waits still end on time", function()
    local h = at_once("timer", 100000, nil, "broken")
    local p0 = context.metrics().ngx_driver_passes
    local n0 = #S.logs
    mock.run(function()
      local ctx = context.with_timeout(bg, 0.05)
      local t0 = context.now()
      assert.are.equal(context.deadline_exceeded, ctx:done())
      assert.is_true(close_to(context.now() - t0, 0.05))
    end)
    S.sema_hook = nil
    local passes = context.metrics().ngx_driver_passes - p0
    -- one failed pass per driver started (one per wait made here)
    assert.is_true(h.calls <= 3 and passes <= 3, h.calls .. " waits, " .. passes .. " passes")
    local said = false
    for i = n0 + 1, #S.logs do
      if S.logs[i].msg:find("error in the deadline driver: semaphore wait failed: broken", 1, true) then
        said = true
      end
    end
    assert.is_true(said)
    assert.is_false(context.metrics().ngx_driver_running)
    S.logs = {}
  end)

  it("after_func callbacks that queue callbacks forever never starve nginx: one timer a round", function()
    local done = bg:with_cancel()
    local cancel_done = select(2, bg:with_cancel())
    local _ = cancel_done
    local c2, cancel2 = bg:with_cancel()
    cancel2()
    local rounds, stop = 0, false
    local function again()
      rounds = rounds + 1
      if not stop and rounds < 100000 then context.after_func(c2, again) end
    end
    context.after_func(c2, again)
    mock.run(function()
      context.sleep(bg, 0.02) -- nginx must get here while the chain goes on
      stop = true
    end)
    mock.spin(0.01)
    assert.is_true(stop)
    assert.is_true(rounds > 1 and rounds < 100000, rounds .. " rounds")
    assert.are.equal(0, context.metrics().callbacks_pending)
    local _ = done
  end)

  it("raises clear errors for what nginx does not allow", function()
    for _, name in ipairs({ "wait_fd", "fd", "signal", "run", "step", "pollfd", "timeout" }) do
      local ok, err = pcall(context[name], bg)
      assert.is_false(ok)
      assert.matches("not available in OpenResty", err)
    end
    local ctx = bg:with_cancel()
    mock.in_phase("log", function()
      local ok, err = pcall(ctx.done, ctx)
      assert.is_false(ok)
      assert.matches("cannot wait in the 'log' phase", err)
      assert.is_false(context.in_task())
    end)
    mock.run(function() assert.is_true(context.in_task()) end)
  end)

  it("from_request: the deadline from the headers, cancelled when the client aborts", function()
    mock.new_request({ ["x-request-timeout-ms"] = "2000" })
    mock.run(function()
      local ctx, cancel, info = context.from_request()
      assert.is_true(info.abort)
      local r = ctx:remaining()
      assert.is_true(r > 1.9 and r <= 2)
      assert.are.equal(ctx, (context.from_request())) -- the same for the request
      assert.are.equal(ctx, context.request_context())
      context.go(function() mock.abort() end)
      assert.are.equal(context.canceled, ctx:done())
      assert.are.equal("client aborted", ctx:cause())
      assert.is_function(cancel)
    end)
    -- a server budget caps the headers'
    mock.new_request({ ["grpc-timeout"] = "10S" })
    mock.run(function()
      local ctx = context.from_request({ timeout = 0.5 })
      assert.is_true(ctx:remaining() <= 0.5)
      context.finish_request("done")
      assert.are.equal("done", ctx:cause())
    end)
    -- without lua_check_client_abort
    mock.new_request({})
    S.check_abort = false
    mock.run(function()
      local ctx, _, info = context.from_request()
      assert.is_false(info.abort)
      assert.matches("lua_check_client_abort", info.abort_error)
      assert.is_nil(ctx:deadline())
    end)
    S.check_abort = true
    mock.in_phase("log", function()
      assert.has_error(function() context.from_request() end)
    end)
  end)

  it("shared_breaker: workers sharing a dict share the breaker", function()
    mock.dict("breakers")
    local a = context.shared_breaker("breakers", { name = "up", threshold = 2, cooldown = 60 })
    local b = context.shared_breaker("breakers", { name = "up", threshold = 2, cooldown = 60 })
    mock.run(function()
      local fail = function() return nil, "down" end
      a:call(bg, fail)
      b:call(bg, fail)
      assert.are.equal("open", a:state())
      assert.are.equal("open", b:state())
      local r, err = b:call(bg, function() return "never" end)
      assert.is_nil(r)
      assert.are.equal(context.breaker_open, err)
    end)
    assert.has_error(function() context.shared_breaker("nope") end,
      "bad argument #1 to 'shared_breaker' (no lua_shared_dict named 'nope')")
  end)

  it("from_request and shared_breaker refuse misspelled options, naming themselves", function()
    mock.dict("breakers")
    local ok, err = pcall(context.shared_breaker, "breakers", { name = "x", treshold = 2 })
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'shared_breaker' (unknown option 'treshold'; did you mean 'threshold'?)",
      err, 1, true)
    assert.is_truthy(context.shared_breaker("breakers", { name = "x", threshold = 2 }))
    mock.new_request({})
    mock.run(function()
      local ok2, err2 = pcall(context.from_request, { timeuot = 1 })
      assert.is_false(ok2)
      assert.matches("bad argument #1 to 'from_request' (unknown option 'timeuot'; did you mean 'timeout'?)",
        err2, 1, true)
      local ctx = context.from_request({ timeout = 1 })
      assert.is_true(ctx:remaining() <= 1)
      context.finish_request()
    end)
  end)

  it("metrics count the backend's tasks and waits", function()
    mock.run(function()
      local ctx, cancel = bg:with_cancel()
      local t = context.go(function() context.sleep(ctx, 30) end)
      eventually(function() return context.metrics().tasks_waiting > 0 end)
      local m = context.metrics()
      assert.are.equal(1, m.tasks)
      assert.are.equal(1, m.tasks_waiting)
      cancel()
      t:wait()
    end)
    local m = context.metrics()
    assert.are.equal(0, m.tasks)
    assert.are.equal(0, m.tasks_waiting)
    assert.matches("lcontext_ngx_driver_starts_total", context.metrics_text())
  end)

  it("stops the driver when the worker exits; waits still end on time", function()
    mock.run(function()
      local ctx = context.with_timeout(bg, 0.03)
      local t = context.go(function() return ctx:done() end)
      context.sleep(bg, 0.005)
      mock.quit()
      local t0 = context.now()
      assert.are.equal(context.deadline_exceeded, t:wait())
      assert.is_true(context.now() - t0 < 1)
    end)
    S.exiting = false
    assert.are.same({}, mock.errors())
  end)
end)
