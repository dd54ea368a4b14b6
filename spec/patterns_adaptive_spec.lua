-- lcontext.patterns (docs/patterns.md), part 2: context.adaptive_timeout.
-- Durations come from an injected clock where the value matters, so the
-- learned numbers are exact; the timer-driven rules run on the virtual
-- clock (context.virtual_clock, docs/testing.md): exact, and at once. One
-- test is in real time: a deadline that passes while no loop runs.
local context = require "lcontext"
local B = require "spec.backend"
local h = require "spec.helpers"
local P = require "spec.patterns_helpers"

local bg = context.background()
local C, DE = context.canceled, context.deadline_exceeded

-- the virtual clock of the test, uninstalled before the idle check
local vclock
local function virtual(opts)
  vclock = context.virtual_clock(opts)
  return vclock
end
before_each(P.setup)
after_each(function()
  if vclock then vclock:uninstall(); vclock = nil end
  P.teardown()
end)

local function observe_all(at, list)
  for _, v in ipairs(list) do at:observe(v) end
end

-- 1, 2, ..., n milliseconds, in seconds, shuffled deterministically
local function ramp(n)
  local t = {}
  for i = 1, n do t[i] = i / 1000 end
  for i = n, 2, -1 do -- a fixed permutation: the order must not matter
    local j = (i * 7919 + 13) % n + 1
    t[i], t[j] = t[j], t[i]
  end
  return t
end

describe("context.adaptive_timeout", function()
  it("is the static base until min_samples durations were seen", function()
    local at = context.adaptive_timeout { base = 0.2, max = 2, min_samples = 5 }
    assert.are.equal(0.2, at:timeout())
    observe_all(at, { 1, 1, 1, 1 })
    assert.are.equal(0.2, at:timeout())
    assert.is_true(at:stats().learning)
    at:observe(1)
    assert.is_false(at:stats().learning)
    assert.are.equal(1.5, at:timeout()) -- p95 (1 s) x 1.5
  end)

  it("learns the percentile (nearest rank) times the multiplier", function()
    local at = context.adaptive_timeout { base = 0.001, max = 10, window = 100,
      percentile = 0.95, multiplier = 2 }
    observe_all(at, ramp(100))
    local s = at:stats()
    h.near(s.quantile, 0.095, 1e-12, "p95 of 1..100 ms")
    h.near(at:timeout(), 0.19, 1e-12, "p95 x 2")
    local p50 = context.adaptive_timeout { base = 0.001, max = 1, percentile = 0.5, multiplier = 1 }
    observe_all(p50, ramp(20))
    h.near(p50:timeout(), 0.010, 1e-12, "p50 of 1..20 ms: the 10th")
  end)

  it("takes the percentile as a fraction or as a percent", function()
    local a = context.adaptive_timeout { base = 0.001, max = 1, percentile = 99, multiplier = 1 }
    local b = context.adaptive_timeout { base = 0.001, max = 1, percentile = 0.99, multiplier = 1 }
    observe_all(a, ramp(100))
    observe_all(b, ramp(100))
    h.near(a:timeout(), 0.099, 1e-12, "percent")
    assert.are.equal(a:timeout(), b:timeout())
    assert.are.equal(0.99, a:stats().percentile)
  end)

  it("clamps the learned value between base and max", function()
    local at = context.adaptive_timeout { base = 0.05, max = 0.5, multiplier = 2, min_samples = 3 }
    observe_all(at, { 0.001, 0.001, 0.001 })
    assert.are.equal(0.05, at:timeout(), "floored at base")
    observe_all(at, { 9, 9, 9, 9, 9, 9, 9, 9, 9, 9 })
    assert.are.equal(0.5, at:timeout(), "capped at max")
    local dflt = context.adaptive_timeout { base = 0.2, min_samples = 1 }
    dflt:observe(60)
    h.near(dflt:timeout(), 2, 1e-12, "max defaults to 10 x base")
  end)

  it("forgets what fell out of the window", function()
    local at = context.adaptive_timeout { base = 0.001, max = 10, window = 10,
      min_samples = 10, multiplier = 1 }
    observe_all(at, { 5, 5, 5, 5, 5, 5, 5, 5, 5, 5 })
    assert.are.equal(5, at:timeout())
    observe_all(at, { 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01 })
    assert.are.equal(5, at:timeout(), "one slow sample is still in the window")
    at:observe(0.01)
    assert.are.equal(0.01, at:timeout())
    local s = at:stats()
    assert.are.equal(10, s.samples)
    assert.are.equal(20, s.observed)
  end)

  it("clamps :timeout(ctx) to what the context has left", function()
    virtual()
    local at = context.adaptive_timeout { base = 1 }
    local ctx, cancel = context.with_timeout(bg, 0.05)
    h.near(at:timeout(ctx), 0.05, 1e-12, "clamped")
    assert.are.equal(1, at:timeout(bg), "no deadline: the learned value")
    assert.are.equal(0, at:timeout(context.with_timeout(bg, 0)), "nothing left: 0")
    local far, fcancel = context.with_timeout(bg, 60)
    assert.are.equal(1, at:timeout(far))
    cancel(); fcancel()
  end)

  it("makes children with the learned timeout, bounded by the parent", function()
    local clock = virtual()
    local at = context.adaptive_timeout { base = 0.3 }
    local c, cancel = at:with_timeout(bg)
    h.near(c:remaining(), 0.3, 1e-12, "learned")
    cancel()
    local p, pcancel = context.with_timeout(bg, 0.05)
    clock:advance(0.01)
    local c2, cancel2 = at:with_timeout(p)
    h.near(c2:remaining(), 0.04, 1e-12, "the parent's")
    cancel2(); pcancel()
  end)

  it("records the time from with_timeout to cancel, once", function()
    local clock, set = P.fake_clock(100)
    local at = context.adaptive_timeout { base = 5, clock = clock, min_samples = 1, multiplier = 1 }
    local c, cancel = at:with_timeout(bg)
    set(100.123)
    cancel("done")
    h.is(c:err(), C, "cancelled")
    assert.are.equal("done", c:cause(), "the cause passes through")
    set(250)
    cancel()
    B.run()
    local s = at:stats()
    assert.are.equal(1, s.samples)
    h.near(s.max, 0.123, 1e-9, "the sample")
    assert.are.equal(5, at:timeout(), "floored at base")
    assert.are.equal(0, s.timeouts)
  end)

  -- "records on <close> as well": spec/close_54_spec.lua (Lua 5.4 only)

  it("records a timeout of its own as a sample at the timeout value", function()
    local vc = virtual { autojump = true } -- (the timer; the estimator has its own clock)
    local clock, set = P.fake_clock(0)
    local at = context.adaptive_timeout { base = 0.01, max = 1, clock = clock, min_samples = 1 }
    local c, cancel = at:with_timeout(bg)
    set(7) -- the clock says nothing about a timeout: its value is the sample
    h.is(c:done(), DE, "err")
    assert.are.equal(0.01, vc:now(), "ended by its timeout")
    B.run() -- the recording runs in after_func's task
    local s = at:stats()
    assert.are.equal(1, s.timeouts)
    assert.are.equal(1, s.samples)
    assert.are.equal(0.01, s.max)
    cancel() -- after the end: nothing more
    assert.are.equal(1, at:stats().observed)
    h.near(at:timeout(), 0.015, 1e-12, "0.01 x 1.5")
  end)

  it("records a timeout of its own when nobody waits on the child", function()
    local clock = virtual { autojump = true }
    local at = context.adaptive_timeout { base = 0.01, max = 1, min_samples = 1 }
    local c, cancel = at:with_timeout(bg)
    context.sleep(bg, 0.05) -- (waits on bg alone: the child's timer fires meanwhile)
    B.run() -- the recording runs in after_func's task
    assert.are.equal(0.05, clock:now())
    local s = at:stats()
    assert.are.equal(1, s.timeouts)
    assert.are.equal(1, s.observed)
    assert.are.equal(0.01, s.max, "the sample is the timeout value")
    h.is(c:err(), DE, "err")
    cancel()
    assert.are.equal(1, at:stats().observed)
  end)

  it("counts a timeout noticed only by cancel() (no loop ran) as a timeout", function()
    local at = context.adaptive_timeout { base = 0.01, min_samples = 1 }
    local c, cancel = at:with_timeout(bg)
    h.sleep(0.02) -- the deadline passes while no loop runs
    cancel()
    h.is(c:err(), DE, "err")
    B.run()
    local s = at:stats()
    assert.are.equal(1, s.timeouts)
    assert.are.equal(1, s.observed)
    assert.are.equal(0.01, s.max)
  end)

  it("does not learn from children the parent ended", function()
    local clock = virtual { autojump = true }
    local at = context.adaptive_timeout { base = 1, min_samples = 1 }
    local p, pcancel = context.with_cancel(bg)
    local c, cancel = at:with_timeout(p)
    pcancel()
    B.run()
    cancel()
    local short, scancel = context.with_timeout(bg, 0.01) -- the parent's deadline first
    local c2, cancel2 = at:with_timeout(short)
    h.is(c2:done(), DE, "err")
    assert.are.equal(0.01, clock:now(), "ended by the parent's deadline")
    B.run()
    cancel2(); scancel()
    local s = at:stats()
    assert.are.equal(0, s.observed)
    assert.are.equal(2, s.abandoned)
    assert.are.equal(1, at:timeout())
    h.is(c:err(), C, "err")
  end)

  it("learns from measured durations with the default clock (context.now)", function()
    local clock = virtual { autojump = true }
    local at = context.adaptive_timeout { base = 0.5, max = 1, min_samples = 3, multiplier = 1 }
    local ends = { 0.01, 0.03, 0.06 }
    for i, d in ipairs { 0.01, 0.02, 0.03 } do
      local c, cancel = at:with_timeout(bg)
      context.sleep(bg, d)
      assert.is_nil(c:err())
      cancel()
      assert.are.equal(ends[i], clock:now())
    end
    local s = at:stats()
    assert.are.equal(3, s.samples)
    -- (context.now() is the monotonic clock in seconds: a difference of two
    -- readings carries its float rounding, well below a nanosecond)
    h.near(s.min, 0.01, 1e-9, "min")
    h.near(s.max, 0.03, 1e-9, "max")
    h.near(s.quantile, 0.03, 1e-9, "p95")
    assert.are.equal(0, s.timeouts)
  end)

  it("reports its state in stats()", function()
    local at = context.adaptive_timeout { base = 0.5, min_samples = 2 }
    local s = at:stats()
    assert.are.same({ timeout = 0.5, learning = true, samples = 0, observed = 0,
      timeouts = 0, abandoned = 0, percentile = 0.95 }, s)
    observe_all(at, { 0.1, 0.3 })
    s = at:stats()
    assert.are.equal(0.1, s.min)
    assert.are.equal(0.3, s.max)
    h.near(s.mean, 0.2, 1e-12, "mean")
    assert.are.equal(0.3, s.quantile)
  end)

  it("names its arguments", function()
    local F = "adaptive_timeout"
    h.argerr(1, F, function() context.adaptive_timeout(5) end)
    h.argerr(1, F, function() context.adaptive_timeout { base = 0 } end)
    h.argerr(1, F, function() context.adaptive_timeout { base = h.INF } end)
    h.argerr(1, F, function() context.adaptive_timeout { base = 2, max = 1 } end)
    h.argerr(1, F, function() context.adaptive_timeout { window = 0 } end)
    h.argerr(1, F, function() context.adaptive_timeout { window = 2.5 } end)
    h.argerr(1, F, function() context.adaptive_timeout { percentile = 0 } end)
    h.argerr(1, F, function() context.adaptive_timeout { percentile = 101 } end)
    h.argerr(1, F, function() context.adaptive_timeout { multiplier = -1 } end)
    h.argerr(1, F, function() context.adaptive_timeout { window = 5, min_samples = 6 } end)
    h.argerr(1, F, function() context.adaptive_timeout { clock = 5 } end)
    assert.has_no.errors(function() context.adaptive_timeout() end)
    local at = context.adaptive_timeout()
    assert.are.equal(1, at:timeout(), "default base")
    h.argerr(1, "observe", function() at:observe(-1) end)
    h.argerr(1, "observe", function() at:observe(h.NAN) end)
    h.argerr(1, "observe", function() at:observe("1") end)
    h.argerr(1, "with_timeout", function() at:with_timeout(nil) end)
    h.argerr(1, "timeout", function() at:timeout(42) end)
    h.argerr(0, "stats", function() at.stats({}) end)
  end)
end)
