-- Acceptance tests of the scheduler (README, "Scheduler"):
-- go / task:wait / task:status, run and its modes, step, sleep, ctx:done()
-- in tasks and on the main thread, select, after_func, on_error, yields that
-- are not the scheduler's, now / time / in_task, deadlock detection, GC of
-- contexts that tasks wait on.
--
-- Timing: the tests of order (which sleep, deadline or waitable wins, in
-- what order tasks wake) run on the virtual clock, exact and instant (see
-- vt() below). The rest are in real time: lower bounds are strict (a
-- deadline never fires early), upper bounds are generous (a noisy 2-core
-- box, valgrind, the GC-stress run).
-- Assertions are made on the main thread: an assertion raised inside a task
-- would only reach the error handler. Every test must leave the scheduler
-- idle (checked after each test).
--
-- Backend-neutral (spec/backend.lua): under busted on the libev backend,
-- and unchanged inside a real nginx worker on lcontext.ngx
-- (spec/ngx/shared.sh), where each test body runs in the request's light
-- thread: "the main thread" is then a light thread that can wait, and its
-- waits suspend it while the tasks (light threads) run. B.run() drains
-- what B.run() drains here; context.run, context.step, their modes
-- and deadlock detection are libev's (nginx runs the loop, and cannot know
-- that nothing will end a wait: another request or timer may), so those
-- tests are libev only, each saying why.
local B = require "spec.backend"
local context = require "lcontext"
local socket = require "socket"

local H = require "spec.sched_helpers"
local SLACK, EPS, is, at_least, at_most, matches, subprocess =
  H.SLACK, H.EPS, H.is, H.at_least, H.at_most, H.matches, H.subprocess
local idle = B.idle

-- the scheduler's figures, from context.metrics() (the same names on both
-- backends): tasks alive, waits ended so far
local function stats()
  local m = context.metrics()
  return { tasks = m.tasks, resumed = m.tasks_resumed, waiting = m.tasks_waiting }
end

-- Let the tasks started so far run until `n` of them are parked in a wait
-- (libev: context.run("nowait"), one iteration that does not block; nginx
-- has no such call: the test's light thread sleeps a little until they are).
local function park(n)
  if B.libev then return context.run("nowait") end
  local stop = context.now() + 10
  while context.metrics().tasks_waiting < n and context.now() < stop do ngx.sleep(0.001) end
  return context.metrics().tasks_waiting >= n
end

local NO_RUN = "context.run/step are not available in nginx (nginx runs the event loop)"
local NO_DEADLOCK = "no deadlock detection in nginx: lcontext.ngx cannot know that nothing "
  .. "will end a wait (another request or a timer may), so the wait would last forever"
local SUBPROCESS_LIBEV = "checks the libev backend in a child interpreter (its run loop, "
  .. "context.fd, stderr)"

local bg = context.background()
local canceled, deadline_exceeded = context.canceled, context.deadline_exceeded

local now = context.now

-- Errors raised in tasks are collected here, so that none goes unnoticed:
-- a test that expects errors installs its own handler.
local guard_start, guard_check = H.task_guard()

-- The tests of order (which sleep, deadline or waitable wins, in what
-- order tasks wake) run on the virtual clock (docs/testing.md): exact
-- virtual times, no real time. vt() installs it with autojump; it is
-- uninstalled before the idle guard runs. The tests of the real clock
-- itself (never early, lateness bounds, now()/time() following real time,
-- run/step, the subprocess ones) stay in real time.
local clock
local function vt()
  clock = context.virtual_clock{ autojump = true }
  return clock
end
before_each(guard_start)
after_each(function()
  if clock then clock:uninstall(); clock = nil end
  guard_check()
end)

describe("context.go and tasks", function()
  it("starts the task at the next loop iteration, not inside go()", function()
    local started = false
    local t = context.go(function() started = true end)
    assert.is_false(started, "go() ran the function at once")
    assert.are.equal("running", t:status())
    assert.is_false(B.run())
    assert.is_true(started)
    assert.are.equal("ok", t:status())
  end)

  it("does not start a task inside go() called from a task either", function()
    local seen
    local parent = context.go(function()
      local started = false
      context.go(function() started = true end)
      seen = started
      coroutine.yield() -- lets others run
      return started
    end)
    assert.are.same({ true }, { parent:wait() })
    assert.is_false(seen)
  end)

  it("passes the arguments and returns all results, nils included", function()
    local t = context.go(function(a, b, c) return a + b, nil, c, nil end, 1, 2, "x")
    local r = table.pack(t:wait())
    assert.are.equal(4, r.n)
    assert.are.equal(3, r[1]); assert.is_nil(r[2])
    assert.are.equal("x", r[3]); assert.is_nil(r[4])
    -- asking again gives the same
    local r2 = table.pack(t:wait())
    assert.are.same(r, r2)
  end)

  it("returns no values for a function that returns none", function()
    local t = context.go(function() end)
    assert.are.equal(0, select("#", t:wait()))
    assert.are.equal("ok", t:status())
  end)

  it("accepts a callable table", function()
    local callable = setmetatable({}, { __call = function(_, x) return x * 2 end })
    assert.are.equal(42, context.go(callable, 21):wait())
  end)

  it("rejects what is not callable, naming the argument", function()
    local ok, msg = pcall(context.go, 42)
    assert.is_false(ok)
    matches(msg, "bad argument #1 to '[^']*go'")
    ok = pcall(context.go)
    assert.is_false(ok)
  end)

  it("gives nil, err for a task that raised; string errors carry a position", function()
    context.on_error(function() end)
    local t = context.go(function() error("boom") end)
    local r = table.pack(t:wait())
    assert.are.equal(2, r.n)
    assert.is_nil(r[1])
    matches(r[2], "^[^:]*sched_spec%.lua:%d+: boom$", "error")
    assert.are.equal("failed", t:status())
  end)

  it("gives back a non-string error value itself", function()
    context.on_error(function() end)
    local e = { code = 7 }
    local t = context.go(function() error(e) end)
    local v, err = t:wait()
    assert.is_nil(v)
    is(err, e, "error value")
  end)

  it("gives nil, the sentinel for a task that failed on ctx:check()", function()
    local c, cancel = context.with_cancel(bg)
    cancel()
    local t = context.go(function() c:check(); return "not reached" end)
    local v, err = t:wait()
    assert.is_nil(v)
    is(err, canceled, "error")
    assert.are.equal("failed", t:status())
  end)

  it("task:wait() from the main thread runs the loop, other tasks included", function()
    vt()
    local other_done
    context.go(function() context.sleep(bg, 0.01); other_done = clock:now() end)
    local t = context.go(function() context.sleep(bg, 0.03); return "late" end)
    assert.are.equal("late", t:wait())
    assert.are.equal(0.03, clock:now())
    assert.are.equal(0.01, other_done)
  end)

  it("task:wait() in a task suspends it while others run", function()
    vt()
    local log = {}
    local slow = context.go(function()
      context.sleep(bg, 0.02)
      log[#log + 1] = "slow"
      return "s"
    end)
    local waiter = context.go(function()
      log[#log + 1] = "waiter starts"
      local r = slow:wait()
      log[#log + 1] = "waiter got " .. r
      return r
    end)
    context.go(function() log[#log + 1] = "third runs" end)
    assert.is_false(B.run())
    assert.are.same({ "waiter starts", "third runs", "slow", "waiter got s" }, log)
    assert.are.equal(0.02, clock:now())
    assert.are.equal("s", waiter:wait())
  end)

  it("a chain of tasks each waiting on the previous one", function()
    local a = context.go(function() context.sleep(bg, 0.01); return "a" end)
    local b = context.go(function() return a:wait() .. "b" end)
    local c = context.go(function() return b:wait() .. "c" end)
    local d = context.go(function() return c:wait() .. "d" end)
    assert.are.equal("abcd", d:wait())
  end)

  it("many tasks waiting on one task all get its results", function()
    local src = context.go(function() context.sleep(bg, 0.01); return 1, 2 end)
    local got = {}
    for i = 1, 20 do
      context.go(function() got[i] = table.pack(src:wait()) end)
    end
    B.run()
    for i = 1, 20 do
      assert.are.same({ n = 2, 1, 2 }, got[i])
    end
  end)

  it("a task waiting on a failed task gets nil, err", function()
    context.on_error(function() end)
    local bad = context.go(function() context.sleep(bg, 0.005); error("bad", 0) end)
    local t = context.go(function() return bad:wait() end)
    local r = table.pack(t:wait())
    assert.are.same({ n = 2, nil, "bad" }, r)
    assert.are.equal("ok", t:status())
  end)

  it("tostring of a task says it is a task", function()
    local t = context.go(function() end)
    assert.is_truthy(tostring(t):find("task"))
    t:wait()
  end)
end)

describe("context.run", function()
  B.it_libev("returns false when nothing is left, having run everything", NO_RUN, function()
    local n = 0
    for _ = 1, 5 do context.go(function() context.sleep(bg, 0.005); n = n + 1 end) end
    assert.is_false(context.run())
    assert.are.equal(5, n)
    assert.is_false(context.run()) -- again: nothing to do
  end)

  B.it_libev("waits for a task parked on a context with a deadline", NO_RUN, function()
    local t0 = now()
    local c = context.with_timeout(bg, 0.03)
    local t = context.go(function() return c:done() end)
    assert.is_false(context.run())
    at_least(now() - t0, 0.03, "run()")
    is(t:wait(), deadline_exceeded, "task result")
  end)

  B.it_libev("is not kept alive by deadlines nobody waits on", NO_RUN, function()
    local c = context.with_timeout(bg, 30)
    local t0 = now()
    assert.is_false(context.run())
    at_most(now() - t0, SLACK, "run()")
    assert.is_nil(c:err())
    assert.are.equal(0, H.stats().timers)
  end)

  B.it_libev("\"nowait\" runs one iteration without blocking", NO_RUN, function()
    -- a 30 s sleep that only the cancel below ends: returning at all
    -- shows run("nowait") did not block (bounded generously for load)
    local ctx, cancel = context.with_cancel(bg)
    local t = context.go(function() context.sleep(ctx, 30) end)
    local t0 = now()
    assert.is_true(context.run("nowait"))
    assert.are.equal("running", t:status())
    at_most(now() - t0, SLACK, "run(\"nowait\")")
    assert.are.equal(1, stats().tasks)
    cancel()
    assert.is_false(context.run())
    assert.are.equal("ok", t:status())
  end)

  B.it_libev("\"nowait\" with nothing to do returns false", NO_RUN, function()
    assert.is_false(context.run("nowait"))
  end)

  B.it_libev("\"once\" runs one blocking iteration", NO_RUN, function()
    local t0 = now()
    local t = context.go(function() context.sleep(bg, 0.03) end)
    local n = 0
    repeat n = n + 1 until not context.run("once") or n > 50
    assert.is_true(n <= 5, "run(\"once\") needed " .. n .. " calls for one sleep")
    at_least(now() - t0, 0.03, "run(\"once\")")
    assert.are.equal("ok", t:status())
  end)

  B.it_libev("\"once\" with nothing to do returns false at once", NO_RUN, function()
    local t0 = now()
    assert.is_false(context.run("once"))
    at_most(now() - t0, SLACK, "run(\"once\")")
  end)

  B.it_libev("rejects an unknown mode", NO_RUN, function()
    local ok, msg = pcall(context.run, "bogus")
    assert.is_false(ok)
    matches(msg, "bad argument #1")
  end)

  it("raises inside a task", function()
    local t = context.go(function()
      local r = {}
      r.run = table.pack(pcall(context.run))
      r.nowait = table.pack(pcall(context.run, "nowait"))
      r.step = table.pack(pcall(context.step))
      r.step1 = table.pack(pcall(context.step, 0.01))
      return r
    end)
    local r = t:wait()
    for k, v in pairs(r) do
      assert.is_false(v[1], k .. " inside a task did not raise")
      assert.are.equal("string", type(v[2]), k)
    end
  end)

  B.it_libev("raises \"deadlock\" when tasks wait for what nothing can bring", NO_DEADLOCK, function()
    local c, cancel = context.with_cancel(bg)
    local t = context.go(function() return c:done() end)
    local ok, msg = pcall(context.run)
    assert.is_false(ok, "run() returned")
    matches(tostring(msg), "deadlock")
    assert.are.equal("running", t:status())
    -- the task is still there and can be released
    cancel()
    assert.is_false(context.run())
    is(t:wait(), canceled, "task result")
  end)

  B.it_libev("raises \"deadlock\" for a task waiting on a task that waits for it", NO_DEADLOCK, function()
    local c, cancel = context.with_cancel(bg)
    local b
    local a = context.go(function() return context.select(c, b) end)
    b = context.go(function() return context.select(c, a) end)
    local ok, msg = pcall(context.run)
    assert.is_false(ok)
    matches(tostring(msg), "deadlock")
    cancel()
    context.run()
    assert.are.equal(1, (a:wait()))
    assert.are.equal(1, (b:wait()))
  end)

  B.it_libev("raises \"deadlock\" for a task parked on a without_cancel context", NO_DEADLOCK, function()
    local p, pcancel = context.with_cancel(bg)
    local c, cancel = context.with_cancel(bg) -- the way out, for the cleanup
    local wc = context.without_cancel(p)
    local t = context.go(function() return context.select(wc, c) end)
    pcancel()
    local ok, msg = pcall(context.run)
    assert.is_false(ok)
    matches(tostring(msg), "deadlock")
    cancel()
    context.run()
    assert.are.equal(2, (t:wait()))
  end)
end)

describe("context.step", function()
  B.it_libev("runs ready tasks and returns false when nothing is left", NO_RUN, function()
    local ran = false
    context.go(function() ran = true end)
    assert.is_false(context.step())
    assert.is_true(ran)
  end)

  B.it_libev("without a timeout does not block", NO_RUN, function()
    local ctx, cancel = context.with_cancel(bg)
    local t = context.go(function() context.sleep(ctx, 30) end)
    local t0 = now()
    assert.is_true(context.step())
    at_most(now() - t0, SLACK, "step()")
    assert.are.equal("running", t:status())
    cancel()
    context.run()
  end)

  B.it_libev("waits at most the timeout when nothing happens", NO_RUN, function()
    local t0 = now()
    assert.is_false(context.step(0.03))
    at_most(now() - t0, 0.03 + SLACK, "step(0.03)")
  end)

  B.it_libev("returns as soon as work arrives, well before the timeout", NO_RUN, function()
    local t = context.go(function() context.sleep(bg, 0.02); return "woke" end)
    local t0 = now()
    local more = context.step(5)
    while more and t:status() == "running" and now() - t0 < 5 do more = context.step(5) end
    local elapsed = now() - t0
    assert.are.equal("ok", t:status())
    at_least(elapsed, 0.02, "step")
    at_most(elapsed, 0.02 + SLACK, "step(5)")
  end)

  B.it_libev("returns true while work is left", NO_RUN, function()
    local c, cancel = context.with_timeout(bg, 30)
    local t = context.go(function() return c:done() end)
    assert.is_true(context.step())
    assert.is_true(context.step(0.001))
    cancel()
    assert.is_false(context.step())
    is(t:wait(), canceled, "task result")
  end)

  B.it_libev("rejects a bad timeout", NO_RUN, function()
    assert.is_false((pcall(context.step, 0 / 0)))
    assert.is_false((pcall(context.step, "soon")))
  end)
end)

describe("context.sleep", function()
  it("wakes sleepers in the order of their durations", function()
    vt()
    local order = {}
    for _, ms in ipairs { 300, 100, 200 } do
      context.go(function() context.sleep(bg, ms / 1000); order[#order + 1] = { ms, clock:now() } end)
    end
    B.run()
    assert.are.same({ { 100, 0.1 }, { 200, 0.2 }, { 300, 0.3 } }, order)
  end)

  it("returns true after at least the duration (never early)", function()
    local res = {}
    for i, d in ipairs { 0.001, 0.004, 0.011, 0.023, 0.031 } do
      context.go(function()
        local t0 = now()
        local r = table.pack(context.sleep(bg, d))
        res[i] = { d = d, elapsed = now() - t0, r = r }
      end)
    end
    B.run()
    for _, x in ipairs(res) do
      assert.are.same({ n = 1, true }, x.r)
      at_least(x.elapsed, x.d, "sleep(" .. x.d .. ")")
      at_most(x.elapsed, x.d + SLACK, "sleep(" .. x.d .. ")")
    end
  end)

  it("returns nil, canceled as soon as the context is cancelled", function()
    vt()
    local c, cancel = context.with_cancel(bg)
    local sleeper = context.go(function() return context.sleep(c, 10) end)
    context.go(function() context.sleep(bg, 0.01); cancel() end)
    local r = table.pack(sleeper:wait())
    assert.are.same({ n = 2, nil, canceled }, r)
    is(r[2], canceled, "err")
    assert.are.equal(0.01, clock:now(), "cancelled sleep")
  end)

  it("returns nil, deadline_exceeded when the deadline comes first", function()
    vt()
    local c = context.with_timeout(bg, 0.02)
    local sleeper = context.go(function() return context.sleep(c, 10) end)
    local v, err = sleeper:wait()
    assert.is_nil(v)
    is(err, deadline_exceeded, "err")
    assert.are.equal(0.02, clock:now(), "deadline")
  end)

  it("returns at once for a context that is already done", function()
    local c, cancel = context.with_cancel(bg)
    cancel()
    local t0 = now()
    local r = table.pack(context.sleep(c, 10)) -- main thread
    assert.are.same({ n = 2, nil, canceled }, r)
    local t = context.go(function() return context.sleep(c, 10) end)
    local v, err = t:wait()
    assert.is_nil(v)
    is(err, canceled, "err")
    at_most(now() - t0, SLACK, "sleep on a done context")
  end)

  it("works from the main thread, running the loop meanwhile", function()
    local ran = false
    context.go(function() ran = true end)
    local t0 = now()
    assert.is_true(context.sleep(bg, 0.03))
    at_least(now() - t0, 0.03, "main-thread sleep")
    assert.is_true(ran, "tasks did not run while the main thread slept")
  end)

  it("with zero seconds returns true", function()
    assert.is_true(context.sleep(bg, 0))
    assert.are.equal(true, context.go(function() return context.sleep(bg, 0) end):wait())
  end)

  it("rejects bad arguments", function()
    assert.is_false((pcall(context.sleep, nil, 1)))
    assert.is_false((pcall(context.sleep, bg, "1")))
    assert.is_false((pcall(context.sleep, bg, 0 / 0)))
  end)
end)

describe("ctx:done()", function()
  it("wakes a task on with_timeout(bg, 0.03) after at least 0.03 s", function()
    local t0 = now()
    local c = context.with_timeout(bg, 0.03)
    local woke
    local t = context.go(function() local e = c:done(); woke = now(); return e end)
    is(t:wait(), deadline_exceeded, "done()")
    at_least(woke - t0, 0.03, "deadline")
    at_most(woke - t0, 0.03 + SLACK, "deadline")
  end)

  it("never fires early, for many deadlines at once", function()
    local early, results = {}, 0
    for i = 1, 100 do
      local d = (i % 25) * 0.002
      context.go(function()
        local t0 = now()
        local c = context.with_timeout(bg, d)
        local e = c:done()
        local elapsed = now() - t0
        if elapsed < d - EPS then early[#early + 1] = ("%g after %g"):format(d, elapsed) end
        if e == deadline_exceeded then results = results + 1 end
      end)
    end
    B.run()
    assert.are.same({}, early)
    assert.are.equal(100, results)
  end)

  it("returns at once for a context that is already done", function()
    local c, cancel = context.with_cancel(bg)
    cancel()
    is(c:done(), canceled, "main thread")
    is(context.go(function() return c:done() end):wait(), canceled, "task")
  end)

  it("10,000 tasks parked on one context are all resumed by one cancel", function()
    local c, cancel = context.with_cancel(bg)
    local n, got = 10000, 0
    local wrong
    for _ = 1, n do
      context.go(function()
        local e = c:done()
        if e == canceled then got = got + 1 else wrong = e end
      end)
    end
    assert.is_true(park(n))
    assert.are.equal(n, stats().tasks)
    local resumed = stats().resumed
    cancel()
    assert.are.equal(0, got, "tasks resumed inside cancel()")
    assert.are.equal(resumed, stats().resumed, "tasks resumed inside cancel()")
    assert.is_false(B.run())
    assert.is_nil(wrong)
    assert.are.equal(n, got)
    assert.are.equal(n, stats().resumed - resumed, "each task resumed exactly once")
  end)

  it("a parent's timeout wakes tasks waiting on a descendant", function()
    vt()
    local parent = context.with_timeout(bg, 0.03)
    local mid = context.with_timeout(context.with_value(parent, "k", 1), 10)
    local leaf = context.with_value(context.with_cancel(mid), "k2", 2)
    local merged = context.merge(context.with_cancel(bg), leaf)
    local res = {}
    for i, c in ipairs { leaf, mid, merged, leaf } do
      context.go(function() res[i] = { c:done(), clock:now() } end)
    end
    B.run()
    for i = 1, 4 do
      is(res[i][1], deadline_exceeded, "task " .. i)
      assert.are.equal(0.03, res[i][2], "task " .. i)
    end
    is(context.origin(leaf), parent, "origin")
  end)

  it("on a with_value context: done when its parent is cancelled", function()
    vt()
    local p, cancel = context.with_cancel(bg)
    local wv = context.with_value(p, "k", "v")
    local t = context.go(function() return wv:done() end)
    context.go(function() context.sleep(bg, 0.01); cancel() end)
    is(t:wait(), canceled, "done()")
    assert.are.equal(0.01, clock:now())
    -- a with_value of background is never done
    local never = context.with_value(bg, "k", "v")
    assert.are.equal(2, (context.select(never, 0.01)))
    assert.are.equal(0.02, clock:now())
  end)

  it("on a without_cancel context: not done when its parent is", function()
    vt()
    local p = context.with_timeout(bg, 0.01)
    local wc = context.without_cancel(p)
    local t = context.go(function() return context.select(wc, 0.05) end)
    assert.are.equal(2, (t:wait()))
    assert.are.equal(0.05, clock:now(), "select")
    is(p:err(), deadline_exceeded, "parent err")
    assert.is_nil(wc:err())
  end)

  it("from the main thread runs the loop until done", function()
    vt()
    local c, cancel = context.with_cancel(bg)
    context.go(function() context.sleep(bg, 0.02); cancel() end)
    is(c:done(), canceled, "done()")
    assert.are.equal(0.02, clock:now(), "done()")
  end)

  B.it_libev("from the main thread raises \"deadlock\" when nothing can end it", NO_DEADLOCK, function()
    local c, cancel = context.with_cancel(bg)
    local ok, msg = pcall(c.done, c)
    assert.is_false(ok, "done() returned")
    matches(tostring(msg), "deadlock")
    idle("after the deadlock")
    -- nothing was left behind: the context can still end, done() still works
    cancel()
    is(c:done(), canceled, "done() after cancel")
  end)

  B.it_libev("from the main thread raises \"deadlock\" on a without_cancel context", NO_DEADLOCK, function()
    local p, cancel = context.with_cancel(bg)
    local wc = context.without_cancel(p)
    cancel()
    local ok, msg = pcall(wc.done, wc)
    assert.is_false(ok)
    matches(tostring(msg), "deadlock")
  end)

  B.it_libev("task:wait() from the main thread raises \"deadlock\" on a stuck task", NO_DEADLOCK, function()
    local c, cancel = context.with_cancel(bg)
    local t = context.go(function() return c:done() end)
    local ok, msg = pcall(t.wait, t)
    assert.is_false(ok)
    matches(tostring(msg), "deadlock")
    cancel()
    is(t:wait(), canceled, "after cancel")
  end)

  B.it_libev("raises \"does not run\" in a coroutine the scheduler does not own", "ngx_lua's coroutines can wait: a coroutine.create/wrap coroutine in a light "
    .. "thread yields through it (ngx_lua's coroutine API), so ctx:done() waits there", function()
    local c = context.with_timeout(bg, 0.01)
    -- from the main thread's own coroutine
    local co = coroutine.create(function() return c:done() end)
    local ok, msg = coroutine.resume(co)
    assert.is_false(ok)
    matches(tostring(msg), "does not run")
    -- from a generator inside a task
    local t = context.go(function()
      local gen = coroutine.wrap(function() return pcall(c.done, c) end)
      return gen()
    end)
    local r = table.pack(t:wait())
    assert.is_false(r[1])
    matches(tostring(r[2]), "does not run")
  end)

  it("tasks parked on a context nobody else holds are woken by its deadline", function()
    local weak = setmetatable({}, { __mode = "v" })
    local res = {}
    local t0 = now()
    do
      local c = context.with_timeout(bg, 0.03)
      weak[1] = c
      for i = 1, 3 do context.go(function() res[i] = { c:done(), now() } end) end
    end
    assert.is_true(park(3), "not all parked")
    collectgarbage(); collectgarbage()
    assert.is_not_nil(weak[1], "a context waited on was collected")
    assert.is_false(B.run())
    for i = 1, 3 do
      is(res[i] and res[i][1], deadline_exceeded, "task " .. i)
      at_least(res[i][2] - t0, 0.03, "task " .. i)
    end
    collectgarbage(); collectgarbage()
    assert.is_nil(weak[1], "the context was not reclaimed once nobody waited")
  end)

  it("tasks parked on a descendant are woken when a dropped ancestor's deadline fires", function()
    local res = {}
    local t0 = now()
    do
      local leaf = context.with_cancel(context.with_value(context.with_timeout(bg, 0.03), "k", 1))
      for i = 1, 3 do context.go(function() res[i] = { leaf:done(), now() } end) end
    end
    assert.is_true(park(3), "not all parked")
    collectgarbage(); collectgarbage()
    assert.is_false(B.run())
    for i = 1, 3 do
      is(res[i] and res[i][1], deadline_exceeded, "task " .. i)
      at_least(res[i][2] - t0, 0.03, "task " .. i)
    end
  end)
end)

describe("context.select", function()
  it("returns the index and the waitable of the first to fire", function()
    vt()
    local c, cancel = context.with_cancel(bg)
    local t = context.go(function() return context.select(c, 10) end)
    context.go(function() context.sleep(bg, 0.01); cancel() end)
    local i, w = t:wait()
    assert.are.equal(1, i)
    is(w, c, "waitable")
    assert.are.equal(0.01, clock:now())
  end)

  it("a number is a sleep of that many seconds", function()
    vt()
    local i, w = context.select(5, 0.02, 10)
    assert.are.equal(2, i)
    assert.are.equal(0.02, w)
    assert.are.equal(0.02, clock:now(), "select sleep")
    idle("after select")
  end)

  it("a task fires when it ends, with its result kept for wait()", function()
    vt()
    local job = context.go(function() context.sleep(bg, 0.01); return "done" end)
    local c = context.with_cancel(bg)
    local i, w = context.select(c, job, 10)
    assert.are.equal(2, i)
    is(w, job, "waitable")
    assert.are.equal(0.01, clock:now())
    assert.are.equal("done", job:wait())
  end)

  it("a failed task fires too", function()
    context.on_error(function() end)
    local job = context.go(function() error("x") end)
    assert.are.equal(1, (context.select(job, 5)))
  end)

  it("gives the lowest index when several are ready at call time", function()
    local c1, k1 = context.with_cancel(bg)
    local c2, k2 = context.with_cancel(bg)
    k1(); k2()
    local finished = context.go(function() end)
    finished:wait()
    assert.are.equal(1, (context.select(c2, c1, 0)))
    assert.are.equal(2, (context.select(5, c1, c2)))
    assert.are.equal(2, (context.select(10, finished, c1)))
    assert.are.equal(1, (context.select(0, c1)))
    local t = context.go(function() return context.select(10, c2, c1) end)
    assert.are.equal(2, (t:wait()))
    idle("after select")
  end)

  it("the losers leave nothing behind", function()
    local vc = vt()
    local cdl = context.with_timeout(bg, 5)            -- a watched deadline
    local cc, cancel = context.with_cancel(bg)
    local release, stop_job = context.with_cancel(bg)
    local job = context.go(function() return release:done() end)
    local selected, after_select = context.with_cancel(bg)
    local res
    local selector = context.go(function()
      local i = context.select(cdl, cc, job, 10, 0.01)
      after_select()
      -- losers must not wake this task later: cc is cancelled and job ends
      -- while it sleeps below
      local t0 = vc:now()
      local ok = context.sleep(bg, 0.05)
      res = { i = i, ok = ok, at = t0, woke = vc:now() }
    end)
    context.go(function()
      selector:wait()
      stop_job()
    end)
    context.go(function() selected:done(); cancel() end)
    park(4)
    -- while selecting (virtual time stands still until only timers can
    -- wake anyone): the deadline of cdl and two sleeps of the selector.
    -- Under the virtual clock every sleep is a timer of lcontext's wheel,
    -- in nginx too (no real timer is armed; in real time a sleep there is
    -- the timeout of a semaphore wait, not in the wheel).
    assert.is_false(selected:is_done(), "the 10 ms sleep fired while parking")
    assert.are.equal(3, context.metrics().timers_pending, "timers while selecting")
    if B.libev then
      assert.are.equal(3, H.stats().timers, "timers while selecting")
    end
    B.run()
    assert.are.equal(5, res.i)
    assert.is_true(res.ok)
    assert.are.equal(0.01, res.at, "the 10 ms sleep won")
    assert.are.equal(0.06, res.woke, "a loser woke the selector early")
    is(job:wait(), canceled, "job")
    assert.are.equal("ok", selector:status())
  end)

  it("losers leave nothing behind, from the main thread", function()
    vt()
    local cdl = context.with_timeout(bg, 5)
    local cc = context.with_cancel(bg)
    assert.are.equal(3, (context.select(cdl, cc, 0.01, 10)))
    assert.are.equal(0.01, clock:now())
    idle("after a main-thread select")
    assert.is_nil(cdl:err())
  end)

  it("with no waitable raises", function()
    assert.is_false((pcall(context.select)))
  end)

  B.it_libev("with a bad waitable raises and leaves nothing behind (subprocess)", SUBPROCESS_LIBEV, function()
    -- Run in a child process: a wait left armed by the failed call points
    -- into freed memory and may crash the process later.
    local out, rc = subprocess [[
      local context = require "lcontext"
      local core = require "lcontext.core"
      local bg = context.background()
      local srv = assert(require("socket").bind("127.0.0.1", 0))
      local c, cancel = context.with_cancel(bg)
      local ok1 = pcall(context.select, 0.02, "bad")
      local ok2 = pcall(context.select, context.with_timeout(bg, 0.02), 0/0)
      local ok3 = pcall(context.select, context.fd(srv, "r"), c, "bad")
      local t = context.go(function() return pcall(context.select, c, 0.02, {}) end)
      context.run("nowait")
      local s = core.sched_stats()
      print("raised", ok1, ok2, ok3, t:status(), t:wait())
      print("timers", s.timers, "fd_waits", s.fd_waits)
      collectgarbage(); collectgarbage()
      cancel()
      print("sleep", context.sleep(bg, 0.05))
      print("end")
    ]]
    assert.are.equal(0, rc, "the child process failed:\n" .. out)
    assert.is_truthy(out:find("raised\tfalse\tfalse\tfalse\tok\tfalse", 1, true), out)
    assert.is_truthy(out:find("timers\t0\tfd_waits\t0\n", 1, true), "waits left armed:\n" .. out)
    assert.is_truthy(out:find("sleep\ttrue", 1, true), out)
  end)

  if B.ngx then
    -- the one above, in the worker itself (no fd waits there)
    it("in nginx: a bad waitable raises and leaves nothing behind", function()
      local c, cancel = context.with_cancel(bg)
      assert.is_false((pcall(context.select, 0.02, "bad")))
      assert.is_false((pcall(context.select, context.with_timeout(bg, 0.02), 0 / 0)))
      local t = context.go(function() return pcall(context.select, c, 0.02, {}) end)
      assert.is_false((t:wait()))
      assert.are.equal("ok", t:status())
      local m = context.metrics()
      assert.are.equal(0, m.tasks_waiting, "waits left armed")
      assert.are.equal(0, m.timers_pending, "deadlines left in the wheel")
      collectgarbage(); collectgarbage()
      cancel()
      assert.is_true(context.sleep(bg, 0.05))
    end)
  end

  -- The output of a chunk of code: on libev, run in a child interpreter (a
  -- crash fails one test); in nginx, in the worker itself against
  -- lcontext.ngx, its print captured.
  local function chunk_output(code)
    if B.libev then return subprocess(code) end
    local out = {}
    local env = setmetatable({ print = function(...)
      local t = table.pack(...)
      for i = 1, t.n do t[i] = tostring(t[i]) end
      out[#out + 1] = table.concat(t, "\t", 1, t.n) .. "\n"
    end }, { __index = _G })
    local f = assert(loadstring(code))
    setfenv(f, env)
    local ok, err = pcall(f)
    return table.concat(out) .. (ok and "" or tostring(err)), ok and 0 or 1
  end

  it("a bad waitable is named by its position and type (subprocess on libev)", function()
    local out, rc = chunk_output [[
      local context = require "lcontext"
      local bg = context.background()
      print("A", select(2, pcall(context.select, 0.02, "bad")))
      print("B", select(2, pcall(context.select, bg:with_cancel(), 0/0)))
      print("C", select(2, pcall(context.select, 1, 2, true)))
    ]]
    assert.are.equal(0, rc, "the child process failed:\n" .. out)
    local a = out:match("A\t([^\n]*)") or ""
    local b = out:match("B\t([^\n]*)") or ""
    local c = out:match("C\t([^\n]*)") or ""
    matches(a, "bad argument #2 to '[^']*select'", "select(0.02, \"bad\")")
    matches(a, "got string", "select(0.02, \"bad\")")
    matches(b, "bad argument #2 to '[^']*select'", "select(ctx, NaN)")
    matches(c, "bad argument #3 to '[^']*select'", "select(1, 2, true)")
    matches(c, "got boolean", "select(1, 2, true)")
  end)

  it("many selectors sharing a deadline context leave no timer behind", function()
    vt()
    local c = context.with_timeout(bg, 5)
    local wins = 0
    for i = 1, 50 do
      context.go(function()
        if context.select(c, 0.001 * (i % 7)) == 2 then wins = wins + 1 end
      end)
    end
    assert.is_false(B.run())
    assert.are.equal(50, wins)
    assert.are.equal(0.006, clock:now(), "the longest sleep")
    idle("after the selectors")
    assert.is_nil(c:err())
  end)
end)

describe("context.after_func", function()
  it("runs fn once, in its own task, after cancel() returned", function()
    local c, cancel = context.with_cancel(bg)
    local runs, in_task = 0, nil
    context.after_func(c, function()
      runs = runs + 1
      in_task = context.in_task()
    end)
    cancel()
    assert.are.equal(0, runs, "fn ran inside cancel()")
    cancel()
    assert.is_false(B.run())
    assert.are.equal(1, runs)
    assert.is_true(in_task)
    cancel()
    B.run()
    assert.are.equal(1, runs)
  end)

  it("never runs fn inside a cancel() called from a task", function()
    local c, cancel = context.with_cancel(bg)
    local log = {}
    context.after_func(c, function() log[#log + 1] = "fn" end)
    context.go(function()
      cancel()
      log[#log + 1] = "cancel returned"
      coroutine.yield()
      log[#log + 1] = "task goes on"
    end)
    B.run()
    assert.are.equal("cancel returned", log[1])
    assert.are.equal(3, #log)
  end)

  B.it_libev("fn runs during the next step", NO_RUN, function()
    local c, cancel = context.with_cancel(bg)
    local ran = false
    context.after_func(c, function() ran = true end)
    cancel()
    assert.is_false(ran)
    context.step()
    assert.is_true(ran)
  end)

  it("fires on a deadline, never early, even when the context is dropped", function()
    local t0 = now()
    local at
    context.after_func(context.with_timeout(bg, 0.03), function() at = now() end)
    collectgarbage(); collectgarbage()
    B.run()
    assert.is_not_nil(at, "fn never ran")
    at_least(at - t0, 0.03, "after_func")
    at_most(at - t0, 0.03 + SLACK, "after_func")
  end)

  it("on a context already done: fn runs at the next run", function()
    local c, cancel = context.with_cancel(bg)
    cancel()
    local ran = false
    context.after_func(c, function() ran = true end)
    assert.is_false(ran)
    B.run()
    assert.is_true(ran)
  end)

  it("stop() before the context is done: true, and fn never runs", function()
    local c, cancel = context.with_cancel(bg)
    local ran = false
    local stop = context.after_func(c, function() ran = true end)
    assert.are.equal("function", type(stop))
    assert.is_true(stop())
    assert.is_false(stop(), "second stop()")
    cancel()
    B.run()
    assert.is_false(ran)
  end)

  it("stop() once done but before fn started: true, and fn never runs", function()
    local c, cancel = context.with_cancel(bg)
    local ran = false
    local stop = context.after_func(c, function() ran = true end)
    cancel()
    assert.is_true(stop())
    assert.is_false(stop())
    B.run()
    assert.is_false(ran)
  end)

  it("stop() after fn ran: false", function()
    local c, cancel = context.with_cancel(bg)
    local stop = context.after_func(c, function() end)
    cancel()
    B.run()
    assert.is_false(stop())
  end)

  it("stop() from inside fn: false (fn already started)", function()
    local c, cancel = context.with_cancel(bg)
    local stop, got
    stop = context.after_func(c, function() got = stop() end)
    cancel()
    B.run()
    assert.is_false(got)
  end)

  it("stop() on a deadline's callback leaves no timer behind", function()
    local ran = false
    local stop = context.after_func(context.with_timeout(bg, 5), function() ran = true end)
    assert.is_true(stop())
    idle("after stop()")
    local t0 = now()
    B.run()
    at_most(now() - t0, SLACK, "run() after stop()")
    assert.is_false(ran)
  end)

  it("an error in fn goes to the error handler, not to the canceller", function()
    local errs = {}
    context.on_error(function(e) errs[#errs + 1] = e end)
    local c, cancel = context.with_cancel(bg)
    context.after_func(c, function() error("cb boom") end)
    assert.is_true((pcall(cancel)))
    assert.is_false(B.run())
    assert.are.equal(1, #errs)
    matches(errs[1], "cb boom")
  end)

  it("many callbacks on one context all run", function()
    local c, cancel = context.with_cancel(bg)
    local n = 0
    for _ = 1, 100 do context.after_func(c, function() n = n + 1 end) end
    cancel()
    B.run()
    assert.are.equal(100, n)
  end)
end)

describe("context.on_error", function()
  it("gets err, a traceback and the task; other tasks go on", function()
    local calls = {}
    local prev = context.on_error(function(e, tb, task) calls[#calls + 1] = { e = e, tb = tb, task = task } end)
    assert.are.equal("function", type(prev)) -- the suite's collector
    local sibling_done, later_done = false, false
    context.go(function() context.sleep(bg, 0.02); sibling_done = true end)
    local function failing_function() local x; return x.field end
    local bad = context.go(function() context.sleep(bg, 0.005); failing_function() end)
    context.go(function()
      bad:wait()
      context.go(function() later_done = true end)
    end)
    assert.is_false(B.run())
    assert.is_true(sibling_done)
    assert.is_true(later_done)
    assert.are.equal(1, #calls)
    matches(calls[1].e, "sched_spec%.lua:%d+: attempt to index")
    matches(calls[1].tb, "stack traceback")
    matches(calls[1].tb, "failing_function")
    is(calls[1].task, bad, "task")
    assert.are.equal("failed", bad:status())
  end)

  it("returns the previous handler; nil restores the default", function()
    local f1, f2 = function() end, function() end
    context.on_error(f1)
    is(context.on_error(f2), f1, "previous")
    is(context.on_error(nil), f2, "previous")
    assert.is_nil(context.on_error(nil), "the default handler is reported as nil")
  end)

  it("passes non-string errors as they are", function()
    local e = setmetatable({}, { __tostring = function() return "custom" end })
    local got
    context.on_error(function(err) got = err end)
    context.go(function() error(e) end)
    B.run()
    is(got, e, "error value")
  end)

  it("does not report canceled / deadline_exceeded raised by a task", function()
    vt()
    local calls = 0
    context.on_error(function() calls = calls + 1 end)
    local c, cancel = context.with_cancel(bg)
    cancel()
    local d = context.with_timeout(bg, 0.01)
    local t1 = context.go(function() c:check() end)
    local t2 = context.go(function() d:done(); d:check() end)
    local t3 = context.go(function() error(context.deadline_exceeded) end)
    B.run()
    assert.are.equal(0, calls)
    assert.are.equal("failed", t1:status())
    is(select(2, t2:wait()), deadline_exceeded, "t2")
    is(select(2, t3:wait()), deadline_exceeded, "t3")
  end)

  B.it_libev("the default handler writes the error and a traceback to stderr (subprocess)", SUBPROCESS_LIBEV, function()
    local out, rc = subprocess [[
      local context = require "lcontext"
      context.on_error(function() io.stdout:write("CUSTOM\n") end)
      assert(context.on_error(nil))
      local c, cancel = context.with_cancel(context.background())
      cancel()
      context.go(function() c:check() end)          -- not reported
      context.go(function() error("visible-boom") end)
      local ok = context.go(function() return "ok" end)
      context.run()
      io.stdout:write("AFTER ", tostring(ok:wait()), "\n")
    ]]
    assert.are.equal(0, rc, out)
    assert.is_falsy(out:find("CUSTOM", 1, true), "on_error(nil) did not restore the default")
    assert.is_truthy(out:find("lcontext: error in task: [^\n]*visible%-boom"), out)
    assert.is_truthy(out:find("stack traceback", 1, true), out)
    assert.is_falsy(out:find("context canceled", 1, true), "a sentinel was reported:\n" .. out)
    assert.is_truthy(out:find("AFTER ok", 1, true), out)
  end)
  B.it_libev("a handler that raises does not stop the loop (subprocess)", SUBPROCESS_LIBEV, function()
    local out, rc = subprocess [[
      local context = require "lcontext"
      context.on_error(function() error("handler fails") end)
      context.go(function() error("task fails") end)
      local ok = context.go(function() context.sleep(context.background(), 0.01); return "still runs" end)
      print("RUN", pcall(context.run))
      print("WAIT", ok:wait())
    ]]
    assert.are.equal(0, rc, out)
    assert.is_truthy(out:find("RUN\ttrue\tfalse", 1, true), out)
    assert.is_truthy(out:find("WAIT\tstill runs", 1, true), out)
  end)

  B.it_libev("an error value whose __tostring raises does not wedge the scheduler (subprocess)", SUBPROCESS_LIBEV, function()
    local out, rc = subprocess [[
      local context = require "lcontext"
      local got
      context.on_error(function(e) got = e end)
      local bad = setmetatable({}, { __tostring = function() error("no tostring") end })
      local t = context.go(function() error(bad) end)
      print("RUN1", pcall(context.run))
      local t2 = context.go(function() return "second" end)
      print("RUN2", pcall(context.run))
      print("T2", t2:status(), (pcall(t2.wait, t2)))
      print("T", t:status(), pcall(function() return rawequal(select(2, t:wait()), bad) end))
    ]]
    assert.is_truthy(out:find("RUN2\ttrue", 1, true), "the scheduler is wedged:\n" .. out)
    assert.are.equal(0, rc, out)
    assert.is_truthy(out:find("T2\tok\ttrue", 1, true), out)
    assert.is_truthy(out:find("T\tfailed\ttrue\ttrue", 1, true), out)
  end)

  -- the last one in-process too, on both backends (the other two are about
  -- what reaches stderr; in nginx the default handler, and a handler that
  -- raises, write to nginx's error log, which this suite keeps clean)
  it("an error value whose __tostring raises is the task's error, and the handler's", function()
    local got, tb
    context.on_error(function(e, t) got, tb = e, t end)
    local bad = setmetatable({}, { __tostring = function() error("no tostring") end })
    local t = context.go(function() error(bad) end)
    local v, err = t:wait()
    assert.is_nil(v)
    -- (rawequal: the value cannot be printed)
    assert.is_true(rawequal(err, bad), "error value: " .. type(err) .. " "
      .. (type(err) == "string" and err or ""))
    assert.are.equal("failed", t:status())
    B.run()
    assert.is_true(rawequal(got, bad), "the handler was not given the value")
    -- the traceback is headed as lua.c heads an error it cannot print
    assert.is_truthy(tostring(tb):find("(error object is a table value)", 1, true), tostring(tb))
    assert.are.equal("second", context.go(function() return "second" end):wait())
  end)
end)

describe("yields that are not the scheduler's", function()
  it("a coroutine.wrap generator works inside a task", function()
    local t = context.go(function()
      local gen = coroutine.wrap(function()
        for i = 1, 5 do coroutine.yield(i) end
      end)
      local sum = 0
      for v in gen do
        sum = sum + v
        context.sleep(bg, 0.001) -- the task parks between generator steps
      end
      return sum
    end)
    assert.are.equal(15, t:wait())
  end)

  it("a bare coroutine.yield() lets others run and the task continues", function()
    local log = {}
    local a = context.go(function()
      log[#log + 1] = "a1"
      coroutine.yield()
      log[#log + 1] = "a2"
      coroutine.yield("ignored", "values")
      log[#log + 1] = "a3"
      return "a done"
    end)
    context.go(function()
      log[#log + 1] = "b1"
      coroutine.yield()
      log[#log + 1] = "b2"
    end)
    assert.is_false(B.run())
    assert.are.equal("a done", a:wait())
    assert.are.same({ "a1", "b1", "a2", "b2", "a3" }, log)
  end)

  B.it_libev("tasks that only yield starve no timer, fd or main thread: the loop drains in rounds",
    "nginx schedules light threads itself (a yield there is ngx_lua's)",
    function()
      local spins = { 0, 0 }
      local stop = false
      finally(function() stop = true; context.run() end)
      local LIMIT = 3000000 -- (a bound: before rounds, the sleep below waited for all of it)
      for i = 1, 2 do -- two tasks that keep each other, and the queue, busy
        context.go(function()
          while not stop and spins[i] < LIMIT do spins[i] = spins[i] + 1; coroutine.yield() end
        end)
      end
      -- a timer, then an fd, while they spin
      assert.is_true(context.sleep(bg, 0.005))
      local at_timer = spins[1]
      local srv = assert(socket.bind("127.0.0.1", 0))
      local ip, port = srv:getsockname()
      local cl = assert(socket.connect(ip, port))
      finally(function() cl:close(); srv:close() end)
      local ok = context.wait_fd(bg, cl, "w") -- writable at once, but only the loop can tell
      stop = true
      context.run()
      assert.is_true(ok)
      assert.is_true(at_timer < LIMIT, "the main thread's sleep waited for the spinning tasks to end")
      assert.is_true(spins[1] > 0 and spins[2] > 0)
    end)

  it("a task that yields while a context it does not wait on ends is not disturbed", function()
    local c, cancel = context.with_cancel(bg)
    local t = context.go(function()
      for _ = 1, 3 do coroutine.yield() end
      return context.sleep(bg, 0.01)
    end)
    context.go(function() cancel() end)
    assert.is_true(t:wait())
    is(c:err(), canceled, "err")
  end)
end)

describe("context.now, context.time, context.in_task", function()
  it("now() is monotonic seconds that follow real time", function()
    local a = now()
    local w0 = socket.gettime()
    context.sleep(bg, 0.02)
    local b = now()
    local w1 = socket.gettime()
    assert.are.equal("number", type(a))
    assert.is_true(b >= a)
    at_least(b - a, 0.02, "now()")
    assert.is_true(math.abs((b - a) - (w1 - w0)) < 0.1, "now() does not follow wall time")
    local prev = now()
    for _ = 1, 1000 do
      local x = now()
      assert.is_true(x >= prev, "now() went back")
      prev = x
    end
  end)

  it("time() is epoch seconds with a fraction", function()
    local t = context.time()
    assert.is_true(math.abs(t - os.time()) <= 1.5)
    assert.is_true(math.abs(t - socket.gettime()) < 0.1)
    local frac = false
    for _ = 1, 50 do
      local x = context.time()
      if x ~= math.floor(x) then frac = true break end
      socket.sleep(0.001)
    end
    assert.is_true(frac, "time() has no fraction")
  end)

  -- in_task() says whether the caller can wait. In nginx the test's own
  -- light thread (the "main thread" here) and the coroutines it runs can
  -- wait (ngx_lua's coroutines yield through the light thread): true there.
  local main_can_wait = B.ngx

  it("in_task() is true in tasks only", function()
    assert.are.equal(main_can_wait, context.in_task())
    local c, cancel = context.with_cancel(bg)
    local in_cb
    context.after_func(c, function() in_cb = context.in_task() end)
    cancel()
    local r = table.pack(context.go(function()
      return context.in_task(), coroutine.wrap(function() return context.in_task() end)()
    end):wait())
    assert.are.same({ n = 2, true, main_can_wait }, r)
    assert.is_true(in_cb)
    assert.are.equal(main_can_wait, coroutine.wrap(function() return context.in_task() end)())
  end)
end)
