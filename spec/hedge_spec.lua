-- context.hedge and context.latency_estimator (docs/resilience.md): "the tail at
-- scale" hedged requests — a second attempt after a delay (fixed, or a
-- quantile of observed durations), the first success wins, the losers'
-- contexts are cancelled, the caller's deadline is never exceeded.
--
-- Timing: the tests about time run on a virtual clock (docs/testing.md):
-- exact start times, delays and durations, no real time, no slack. The
-- others run in real time, with delays of a few milliseconds.
--
-- Under the virtual clock the hedge delays are binary fractions (0.125,
-- 0.25, 0.5): hedge waits `next_at - now()` in context.now() seconds, whose
-- base is the real monotonic time at install, so a delay of 0.005 comes out
-- as 0.005000000001 and the wait ends a tick late, at 0.006. Binary
-- fractions add and subtract exactly.
local context = require "lcontext"
local B = require "spec.backend"
local h = require "spec.helpers"

local bg = context.background()
local canceled, deadline_exceeded = context.canceled, context.deadline_exceeded

-- no task error goes unnoticed; every test leaves the scheduler idle (once
-- cancelled losers have finished)
local guard_start, guard_check = require("spec.sched_helpers").task_guard(
  function() B.run() end)

-- virtual(): a virtual clock with autojump for this test. The after_each
-- lets what is left (cancelled losers) end under it, then uninstalls it
-- before the idle guard runs.
local clock
local function virtual()
  clock = context.virtual_clock { autojump = true }
  return clock
end
before_each(guard_start)
after_each(function()
  if clock then
    B.run()
    clock:uninstall(); clock = nil
  end
  guard_check()
end)

-- fn whose attempt i sleeps plan[i] seconds (on its context) then returns
-- plan.results[i] (default: "attempt i"); records what each attempt saw,
-- and, under the virtual clock, when each attempt started and ended
local function planned(plan)
  local log = { started = {}, ended = {}, at = {}, ended_at = {} }
  return function(actx, i)
    log.started[#log.started + 1] = i
    if clock then log.at[i] = clock:now() end
    local ok, err = context.sleep(actx, plan[i] or 0)
    if clock then log.ended_at[i] = clock:now() end
    log.ended[i] = ok and "slept" or err
    if not ok then return nil, err end
    local r = plan.results and plan.results[i]
    if r then return table.unpack(r, 1, r.n or #r) end
    return "attempt " .. i
  end, log
end

describe("context.hedge", function()
  it("a fast first attempt wins alone: no hedge is sent", function()
    virtual()
    local fn, log = planned { 0.249 } -- 1 ms short of the delay
    local hedged = {}
    local r = { context.hedge(bg, fn, { delay = 0.25,
      on_attempt = function(i) hedged[#hedged + 1] = i end }) }
    assert.are.same({ "attempt 1" }, r)
    assert.are.equal(0.249, clock:now())
    assert.are.same({ 1 }, log.started)
    assert.are.same({ 1 }, hedged)
  end)

  it("passes all of the winner's results through, nils included", function()
    local fn = planned { 0, results = { { 1, nil, "x", nil, n = 4 } } }
    local r = table.pack(context.hedge(bg, fn, { delay = 1 }))
    assert.are.equal(4, r.n)
    assert.are.same({ 1, nil, "x" }, { r[1], r[2], r[3] })
  end)

  it("sends a second attempt after the delay; the first success wins; the loser is cancelled",
    function()
      virtual()
      local fn, log = planned { 5, 0.001 }
      local r = { context.hedge(bg, fn, { delay = 0.125 }) }
      assert.are.same({ "attempt 2" }, r)
      assert.are.same({ 0, 0.125 }, log.at, "the hedge went at the delay")
      assert.are.equal(0.126, clock:now(), "the first success won, at once")
      assert.are.same({ 1, 2 }, log.started)
      B.run()
      h.is(log.ended[1], canceled, "the loser's context")
      assert.are.equal(0.126, log.ended_at[1], "the loser was cancelled when the winner won")
    end)

  it("if the first attempt finishes first after all, it wins and the hedge is cancelled",
    function()
      virtual()
      local fn, log = planned { 0.2, 5 }
      local r = { context.hedge(bg, fn, { delay = 0.125 }) }
      assert.are.same({ "attempt 1" }, r)
      assert.are.equal(0.2, clock:now())
      assert.are.same({ 0, 0.125 }, log.at)
      B.run()
      h.is(log.ended[2], canceled)
      assert.are.equal(0.2, log.ended_at[2])
    end)

  it("up to `attempts` attempts, one more after each delay", function()
    virtual()
    local fn, log = planned { 5, 5, 0.001 }
    local r = { context.hedge(bg, fn, { delay = 0.125, attempts = 3 }) }
    assert.are.same({ "attempt 3" }, r)
    assert.are.same({ 1, 2, 3 }, log.started)
    assert.are.same({ 0, 0.125, 0.25 }, log.at)
    assert.are.equal(0.251, clock:now())
    B.run()
    h.is(log.ended[1], canceled); h.is(log.ended[2], canceled)
  end)

  it("each hedge starts exactly `delay` after the one before it", function()
    virtual()
    local fn, log = planned { 5, 5, 0.001 }
    local at = {}
    local r = { context.hedge(bg, fn, { delay = 0.25, attempts = 3,
      on_attempt = function(i) at[i] = clock:now() end }) }
    assert.are.same({ "attempt 3" }, r)
    assert.are.same({ 0, 0.25, 0.5 }, at)
    assert.are.same({ 0, 0.25, 0.5 }, log.at, "the attempts ran when they were started")
    B.run()
    h.is(log.ended[1], canceled); h.is(log.ended[2], canceled)
  end)

  it("a failed attempt starts the next one at once", function()
    virtual()
    local at = {}
    local r = { context.hedge(bg, function(_, i)
      context.sleep(bg, 0.1)
      at[i] = clock:now()
      if i == 1 then return nil, "refused" end
      return "second"
    end, { delay = 5 }) }
    assert.are.same({ "second" }, r)
    -- attempt 2 started at 0.1, when attempt 1 failed, not at 5
    assert.are.same({ 0.1, 0.2 }, at, "waited for the delay after a failure")
    assert.are.equal(0.2, clock:now())
  end)

  it("all attempts failed: nil and the last error; raised errors count as failures", function()
    local r = { context.hedge(bg, function(_, i)
      if i == 1 then error("crashed") end
      context.sleep(bg, 0.002)
      return nil, "refused " .. i
    end, { delay = 0.001 }) }
    assert.are.same({ nil, "refused 2" }, r)
  end)

  it("retryable(err) false ends it at once, cancelling the others", function()
    local fn = function(actx, i)
      if i == 2 then return nil, "bad request" end
      local _, err = context.sleep(actx, 5)
      return nil, err
    end
    virtual()
    local started = {}
    local r = { context.hedge(bg, fn, { delay = 0.125, attempts = 3,
      on_attempt = function(i) started[i] = clock:now() end,
      retryable = function(err) return err ~= "bad request" end }) }
    assert.are.same({ nil, "bad request" }, r)
    assert.are.equal(0.125, clock:now(), "it did not end at once")
    assert.are.same({ 0, 0.125 }, started, "a third attempt was started")
  end)

  it("never runs past the caller's deadline: nil, deadline_exceeded, attempts cancelled",
    function()
      virtual()
      local ctx = context.with_timeout(bg, 0.1)
      local fn, log = planned { 5, 5 }
      local r = { context.hedge(ctx, fn, { delay = 0.3 }) }
      assert.are.same({ nil, deadline_exceeded }, r)
      assert.are.equal(0.1, clock:now())
      B.run()
      assert.are.same({ 1 }, log.started, "a hedge started after the deadline")
      h.is(log.ended[1], deadline_exceeded)
      assert.are.equal(0.1, log.ended_at[1])
    end)

  it("stops when the caller cancels", function()
    virtual()
    local ctx, cancel = context.with_cancel(bg)
    local fn, log = planned { 5, 5 }
    -- cancel at 0.2, once both attempts run (the hedge goes at 0.125)
    context.go(function() context.sleep(bg, 0.2); cancel() end)
    local r = { context.hedge(ctx, fn, { delay = 0.125 }) }
    assert.are.same({ nil, canceled }, r)
    assert.are.equal(0.2, clock:now())
    assert.are.same({ 0, 0.125 }, log.at)
    B.run()
    assert.are.same({ canceled, canceled }, { log.ended[1], log.ended[2] })
    assert.are.same({ 0.2, 0.2 }, log.ended_at)
  end)

  it("does not call fn when ctx is already done", function()
    local ctx, cancel = context.with_cancel(bg)
    cancel()
    local called = false
    assert.are.same({ nil, canceled }, { context.hedge(ctx, function() called = true end,
      { delay = 0 }) })
    assert.is_false(called)
  end)

  it("each attempt has its own child context carrying the caller's values", function()
    local k = context.key("request")
    local ctx = context.with_value(bg, k, "req-1")
    local seen = {}
    context.hedge(ctx, function(actx, i)
      seen[i] = { actx, actx:value(k) }
      if i == 1 then return nil, "fail" end
      return true
    end, { delay = 1 })
    assert.are.equal("req-1", seen[1][2])
    assert.are.equal("req-1", seen[2][2])
    assert.are_not.equal(seen[1][1], seen[2][1])
    assert.are_not.equal(ctx, seen[1][1])
  end)

  it("works from inside a task too", function()
    local fn = planned { 5, 0.001 }
    local t = context.go(function() return context.hedge(bg, fn, { delay = 0.002 }) end)
    assert.are.same({ "attempt 2" }, { t:wait() })
  end)

  it("takes the delay from a function", function()
    virtual()
    local asked = 0
    local fn, log = planned { 5, 5, 0 }
    local r = { context.hedge(bg, fn, { attempts = 3,
      delay = function() asked = asked + 1; return 0.25 end }) }
    assert.are.same({ "attempt 3" }, r)
    assert.are.equal(1, asked)
    assert.are.same({ 0, 0.25, 0.5 }, log.at)
  end)

  it("takes the delay from an estimator and tells it the winner's duration", function()
    virtual()
    local est = context.latency_estimator { min_samples = 3, initial = 0.125 }
    local fn, log = planned { 0.25, 0.03 }
    assert.are.same({ "attempt 2" }, { context.hedge(bg, fn, { delay = est }) })
    assert.are.same({ 0, 0.125 }, log.at, "hedged after the initial delay")
    assert.are.equal(0.155, clock:now(), "the hedge won after its 30 ms")
    assert.are.equal(1, est:count())
    assert.is_true(est:delay() == 0.125, "still the initial delay")
    -- the duration it was told is the winner's own, 0.03 (that of the call
    -- is 0.155). Two shorter ones make it the 95th percentile. (hedge takes
    -- it as a difference of context.now(): nearly exact, not exactly.)
    est:observe(0.0001); est:observe(0.0001)
    h.near(est:delay(), 0.03, 1e-9, "the winner's duration")
    for _ = 1, 3 do est:observe(0.5) end
    assert.are.equal(0.5, est:delay())
    -- now the slow first attempt is not hedged before 0.5 s
    local fn2, log2 = planned { 0.499, 0.001 }
    assert.are.same({ "attempt 1" }, { context.hedge(bg, fn2, { delay = est }) })
    assert.are.same({ 1 }, log2.started)
    assert.are.equal(0.654, clock:now())
    -- and a slower one is, at 0.5 s
    local fn3, log3 = planned { 0.6, 0.001 }
    assert.are.same({ "attempt 2" }, { context.hedge(bg, fn3, { delay = est }) })
    assert.are.same({ 0.654, 1.154 }, log3.at)
  end)

  it("a raise in on_attempt cancels what was started, and is raised", function()
    virtual()
    local fn, log = planned { 5, 5 }
    local ok, err = pcall(context.hedge, bg, fn, { delay = 0.125,
      on_attempt = function(i) if i == 2 then error("callback broke", 0) end end })
    assert.is_false(ok)
    assert.are.equal("callback broke", err)
    assert.are.equal(0.125, clock:now())
    B.run()
    h.is(log.ended[1], canceled, "attempt 1 left running")
    assert.are.equal(0.125, log.ended_at[1], "attempt 1 ran on after the raise")
  end)

  it("names bad arguments", function()
    local f = function() end
    h.argerr(1, "hedge", function() context.hedge(nil, f, { delay = 1 }) end)
    h.argerr(2, "hedge", function() context.hedge(bg, nil, { delay = 1 }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, {}) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = -1 }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = 0 / 0 }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = {} }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = function() return "x" end }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = 1, attempts = 0 }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = 1, attempts = 1.5 }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = 1, on_attempt = 1 }) end)
    h.argerr(3, "hedge", function() context.hedge(bg, f, { delay = 1, retryable = 1 }) end)
  end)
end)

describe("context.latency_estimator", function()
  it("gives `initial` until min_samples, then the quantile (nearest rank)", function()
    local est = context.latency_estimator { quantile = 0.95, min_samples = 5, initial = 0.1 }
    for i = 1, 4 do est:observe(i / 1000) end
    assert.are.equal(0.1, est:delay())
    for i = 5, 100 do est:observe(i / 1000) end
    assert.are.equal(100, est:count())
    assert.are.equal(0.095, est:delay())
    local med = context.latency_estimator { quantile = 0.5, min_samples = 1 }
    for _, v in ipairs({ 5, 1, 3 }) do med:observe(v) end
    assert.are.equal(3, med:delay())
  end)

  it("keeps the last `size` durations", function()
    local est = context.latency_estimator { quantile = 1, size = 3, min_samples = 1 }
    for _, v in ipairs({ 9, 1, 2, 3 }) do est:observe(v) end
    assert.are.equal(3, est:count())
    assert.are.equal(3, est:delay(), "the 9 should have been forgotten")
  end)

  it("clamps to [min, max]", function()
    local est = context.latency_estimator { min_samples = 1, min = 0.01, max = 0.2 }
    est:observe(0.001)
    assert.are.equal(0.01, est:delay())
    est = context.latency_estimator { min_samples = 1, min = 0.01, max = 0.2 }
    est:observe(3)
    assert.are.equal(0.2, est:delay())
  end)

  it("names bad arguments", function()
    h.argerr(1, "latency_estimator", function() context.latency_estimator(1) end)
    h.argerr(1, "latency_estimator", function() context.latency_estimator { quantile = 2 } end)
    h.argerr(1, "latency_estimator", function() context.latency_estimator { size = 0 } end)
    h.argerr(1, "latency_estimator", function() context.latency_estimator { size = 2.5 } end)
    h.argerr(1, "latency_estimator", function() context.latency_estimator { min = 2, max = 1 } end)
    local est = context.latency_estimator()
    h.argerr(1, "observe", function() est:observe(-1) end)
    h.argerr(1, "observe", function() est:observe(0 / 0) end)
  end)
end)
