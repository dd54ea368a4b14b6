-- Acceptance tests of context.signal (README, "Scheduler"): a context cancelled with
-- cause "signal SIGxxx" when a listed signal arrives. Signals are sent to
-- this very process with kill(1); only USR1 and USR2 are used.
--
-- Safety net: while this file runs, a guard context listens for USR1 and
-- USR2, so that a signal arriving when no tested context listens any more
-- (a bug) cannot kill the test runner with the default action. The guard is
-- renewed after each test that consumed it and cancelled at the end.
local context = require "lcontext"
local core = require "lcontext.core"

local H = require "spec.sched_helpers"
local SLACK, is, at_most, matches = H.SLACK, H.is, H.at_most, H.matches

local bg = context.background()
local canceled = context.canceled

local now = context.now

local PID = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")

local function kill(sig)
  local ok = os.execute("kill -" .. sig .. " " .. PID)
  assert(ok, "kill -" .. sig .. " failed")
end

-- the signal arrives later, while the loop blocks
local function kill_later(sig, secs)
  local ok = os.execute(("(sleep %g; kill -%s %s) >/dev/null 2>&1 &"):format(secs, sig, PID))
  assert(ok, "could not start kill")
end

local function nsig() return core.sched_stats().signal_contexts end

local guard, guard_cancel
local function renew_guard()
  if guard == nil or guard:is_done() then
    if guard_cancel then guard_cancel() end
    guard, guard_cancel = context.signal(bg, "USR1", "USR2")
  end
end

local unexpected

describe("context.signal", function()
  setup(function() renew_guard() end)

  teardown(function()
    context.step(0.05) -- let a stray signal reach the guard, not the default action
    guard_cancel()
    context.run()
  end)

  before_each(function()
    renew_guard()
    context.run() -- the guard's bookkeeping settles
    unexpected = {}
    context.on_error(function(err, tb) unexpected[#unexpected + 1] = tb or tostring(err) end)
  end)

  after_each(function()
    context.on_error(nil)
    if #unexpected > 0 then
      error("a task raised an unexpected error: " .. tostring(unexpected[1]))
    end
    local s = core.sched_stats()
    assert(s.tasks == 0 and s.timers == 0 and s.fd_waits == 0,
      ("scheduler not idle: tasks=%d timers=%d fd_waits=%d"):format(s.tasks, s.timers, s.fd_waits))
    renew_guard()
  end)

  it("is cancelled with cause \"signal SIGUSR1\" when USR1 arrives", function()
    local ctx, cancel = context.signal(bg, "USR1")
    assert.is_nil(ctx:err())
    local t = context.go(function() return ctx:done() end)
    context.go(function() context.sleep(bg, 0.01); kill("USR1") end)
    is(t:wait(), canceled, "done()")
    is(ctx:err(), canceled, "err()")
    assert.are.equal("signal SIGUSR1", ctx:cause())
    assert.are.equal("signal SIGUSR1", context.cause(ctx))
    cancel()
  end)

  it("accepts names with the SIG prefix, and several signals", function()
    local ctx = context.signal(bg, "SIGUSR1", "SIGUSR2")
    local t = context.go(function() return ctx:done() end)
    context.go(function() context.sleep(bg, 0.01); kill("USR2") end)
    is(t:wait(), canceled, "done()")
    assert.are.equal("signal SIGUSR2", ctx:cause())
  end)

  it("wakes the main thread blocked in the loop when the signal arrives", function()
    local ctx = context.signal(bg, "USR2")
    kill_later("USR2", 0.05)
    local t0 = now()
    is(ctx:done(), canceled, "done()")
    assert.are.equal("signal SIGUSR2", ctx:cause())
    at_most(now() - t0, 0.05 + SLACK + 1, "done()")
  end)

  it("graceful shutdown: every worker on the signal context stops", function()
    local ctx, cancel = context.signal(bg, "USR1", "USR2")
    local stopped, errs = 0, {}
    for i = 1, 50 do
      context.go(function()
        local child = context.with_timeout(ctx, 30)
        local ok, err = context.sleep(child, 10 + i)
        if ok == nil and err == canceled then stopped = stopped + 1 end
        errs[i] = context.cause(child)
      end)
    end
    kill_later("USR1", 0.05)
    local t0 = now()
    assert.is_false(context.run(), "run() did not end with the workers")
    at_most(now() - t0, 0.05 + SLACK + 1, "shutdown")
    assert.are.equal(50, stopped)
    for i = 1, 50 do assert.are.equal("signal SIGUSR1", errs[i]) end
    cancel()
  end)

  it("cancels descendants with the same cause", function()
    local ctx = context.signal(bg, "USR1")
    local child = context.with_value(context.with_timeout(ctx, 30), "k", "v")
    local t = context.go(function() return child:done() end)
    context.go(function() context.sleep(bg, 0.01); kill("USR1") end)
    is(t:wait(), canceled, "done()")
    assert.are.equal("signal SIGUSR1", child:cause())
    is(context.origin(child), ctx, "origin")
  end)

  it("cancels every context listening for the signal", function()
    local c1 = context.signal(bg, "USR1")
    local c2 = context.signal(bg, "USR2", "USR1")
    local c3 = context.signal(bg, "USR2")
    local t1 = context.go(function() return c1:done() end)
    local t2 = context.go(function() return c2:done() end)
    context.go(function() context.sleep(bg, 0.01); kill("USR1") end)
    is(t1:wait(), canceled, "c1")
    is(t2:wait(), canceled, "c2")
    assert.is_nil(c3:err(), "a context not listening for USR1 was cancelled")
    -- c3 still listens: give it its own signal
    local t3 = context.go(function() return c3:done() end)
    context.go(function() context.sleep(bg, 0.01); kill("USR2") end)
    is(t3:wait(), canceled, "c3")
    assert.are.equal("signal SIGUSR2", c3:cause())
  end)

  it("a signal that arrives with no loop running is handled at the next step", function()
    local ctx, cancel = context.signal(bg, "USR1")
    kill("USR1")
    local t0 = now()
    while not ctx:is_done() and now() - t0 < 2 do context.step(0.05) end
    is(ctx:err(), canceled, "err()")
    assert.are.equal("signal SIGUSR1", ctx:cause())
    cancel()
  end)

  it("an explicit cancel keeps the cause canceled and stops listening", function()
    local before = nsig()
    local ctx, cancel = context.signal(bg, "USR1")
    assert.are.equal(before + 1, nsig())
    cancel()
    is(ctx:err(), canceled, "err()")
    is(ctx:cause(), canceled, "cause()")
    context.run()
    assert.are.equal(before, nsig(), "signal watchers left after cancel")
  end)

  it("a cancelled parent cancels it and stops the listening", function()
    local before = nsig()
    local p, pcancel = context.with_cancel(bg)
    local ctx = context.signal(p, "USR2")
    assert.are.equal(before + 1, nsig())
    pcancel()
    is(ctx:err(), canceled, "err()")
    context.run()
    assert.are.equal(before, nsig())
  end)

  it("on a parent already done: done at once, nothing listens", function()
    local before = nsig()
    local p, pcancel = context.with_cancel_cause(bg)
    pcancel("gone")
    local ctx = context.signal(p, "USR1")
    is(ctx:err(), canceled, "err()")
    assert.are.equal("gone", ctx:cause())
    assert.are.equal(before, nsig())
  end)

  it("does not keep run() alive when nothing waits on it", function()
    local ctx, cancel = context.signal(bg, "USR1")
    local t0 = now()
    assert.is_false(context.run())
    at_most(now() - t0, SLACK, "run()")
    assert.is_nil(ctx:err())
    cancel()
  end)

  it("a task waiting on it is not a deadlock: run() waits for the signal", function()
    local ctx = context.signal(bg, "USR2")
    local t = context.go(function() return ctx:done() end)
    kill_later("USR2", 0.05)
    assert.is_false(context.run())
    is(t:wait(), canceled, "done()")
    assert.are.equal("signal SIGUSR2", ctx:cause())
  end)

  -- "returns a cancel function usable with <close>": spec/close_54_spec.lua
  -- (Lua 5.4 only)

  it("prints the signals it listens for", function()
    local ctx, cancel = context.signal(bg, "USR1", "SIGUSR2", "USR1")
    assert.are.equal("context.Background.WithSignal(SIGUSR1, SIGUSR2)", tostring(ctx))
    local p, pcancel = context.with_cancel(bg)
    local child = context.with_value(context.signal(p, "HUP"), "k", "v")
    assert.are.equal("context.Background.WithCancel.WithSignal(SIGHUP).WithValue(k, v)", tostring(child))
    cancel()
    assert.are.equal("context.Background.WithSignal(SIGUSR1, SIGUSR2)", tostring(ctx), "once done too")
    pcancel()
    -- a plain with_cancel is not a signal context
    assert.are.equal("context.Background.WithCancel", tostring((context.with_cancel(bg))))
  end)

  it("rejects unknown signal names and a missing name", function()
    local function raises(pat, ...)
      local ok, msg = pcall(context.signal, ...)
      assert.is_false(ok, "no error for " .. pat)
      matches(tostring(msg), pat)
    end
    raises("bad argument #2 to '[^']*signal'", bg, "NOPE")
    raises("bad argument #3 to '[^']*signal'", bg, "USR1", "SIGNOPE")
    raises("bad argument #2 to '[^']*signal'", bg, 10)
    raises("bad argument #2 to '[^']*signal'", bg)
    raises("bad argument #1 to '[^']*signal'", nil, "USR1")
  end)
end)
