-- context.retry, context.backoff, context.retry_budget (docs/resilience.md):
-- backoff and jitter, the deadline-aware rules, the structured
-- give-up (nil, last_err, attempts, reason), retry_after, retry budgets, and
-- the AWS "exponential backoff and jitter" comparison in simulated time.
--
-- Timing: the tests about time run on a virtual clock (docs/testing.md):
-- exact attempt times and delays, no real time, no slack. The others run in
-- real time with millisecond delays, jitter "none" or an injected random
-- source.
local context = require "lcontext"
local h = require "spec.helpers"

local bg = context.background()
local canceled, deadline_exceeded = context.canceled, context.deadline_exceeded

-- no task error goes unnoticed; every test leaves the scheduler idle
local guard_start, guard_check = require("spec.sched_helpers").task_guard()

-- virtual(): a virtual clock with autojump for this test; the after_each
-- uninstalls it before the idle guard runs
local clock
local function virtual()
  clock = context.virtual_clock { autojump = true }
  return clock
end
before_each(guard_start)
after_each(function()
  if clock then clock:uninstall(); clock = nil end
  guard_check()
end)

-- fn that fails `k` times with the errors given (or "fail N"), then succeeds
local function flaky(k, ...)
  local errs = { ... }
  local calls = {}
  return function(ctx, attempt)
    calls[#calls + 1] = { ctx = ctx, attempt = attempt }
    if attempt <= k then return nil, errs[attempt] or ("fail " .. attempt) end
    return "ok", attempt
  end, calls
end

-- a deterministic random source (an LCG), values in [0, 1)
local function lcg(seed)
  local s = seed
  return function()
    s = (s * 1103515245 + 12345) % 2147483648
    return s / 2147483648
  end
end

describe("context.retry", function()
  it("passes every result of the first success through, nils included", function()
    local r = table.pack(context.retry(bg, function() return 1, nil, "x", nil end))
    assert.are.equal(4, r.n)
    assert.are.same({ 1, nil, "x", nil }, { r[1], r[2], r[3], r[4] })
    assert.are.equal(0, select("#", context.retry(bg, function() end)))
  end)

  it("calls fn(ctx, attempt) until it succeeds", function()
    local fn, calls = flaky(2)
    local r = { context.retry(bg, fn, { base = 0.001, jitter = "none" }) }
    assert.are.same({ "ok", 3 }, r)
    assert.are.equal(3, #calls)
    for i, c in ipairs(calls) do
      h.is(c.ctx, bg, "ctx")
      assert.are.equal(i, c.attempt)
    end
  end)

  it("counts a raise as a failure and retries it", function()
    local n = 0
    local r = { context.retry(bg, function()
      n = n + 1
      if n == 1 then error("transient") end
      return "fine"
    end, { base = 0.001, jitter = "none" }) }
    assert.are.same({ "fine" }, r)
  end)

  it("gives up with nil, last_err, attempts, 'exhausted'", function()
    local fn, calls = flaky(10)
    local r = table.pack(context.retry(bg, fn, { attempts = 4, base = 0.001, jitter = "none" }))
    assert.are.equal(4, r.n)
    assert.are.same({ nil, "fail 4", 4, "exhausted" }, { r[1], r[2], r[3], r[4] })
    assert.are.equal(4, #calls)
  end)

  it("defaults to 3 attempts", function()
    local fn, calls = flaky(10)
    local _, _, n, why = context.retry(bg, fn, { base = 0.001 })
    assert.are.equal(3, n)
    assert.are.equal("exhausted", why)
    assert.are.equal(3, #calls)
  end)

  it("attempts = 1 never retries", function()
    local fn, calls = flaky(10)
    assert.are.same({ nil, "fail 1", 1, "exhausted" },
      { context.retry(bg, fn, { attempts = 1 }) })
    assert.are.equal(1, #calls)
  end)

  it("backs off base * factor^(n-1), capped by max; on_retry sees each delay", function()
    virtual()
    local seen, at = {}, {}
    local fn = flaky(10)
    context.retry(bg, function(ctx, attempt)
      at[#at + 1] = clock:now()
      return fn(ctx, attempt)
    end, {
      attempts = 5, base = 1, factor = 3, max = 10, jitter = "none",
      on_retry = function(attempt, err, delay) seen[#seen + 1] = { attempt, err, delay } end,
    })
    assert.are.same({ { 1, "fail 1", 1 }, { 2, "fail 2", 3 }, { 3, "fail 3", 9 },
      { 4, "fail 4", 10 } }, seen)
    -- each attempt follows the one before by exactly its delay
    assert.are.same({ 0, 1, 4, 13, 23 }, at)
    assert.are.equal(23, clock:now())
  end)

  it("uses the injected random source for jitter", function()
    local delays = {}
    context.retry(bg, flaky(10), {
      attempts = 3, base = 0.004, jitter = "full", random = function() return 0.25 end,
      on_retry = function(_, _, d) delays[#delays + 1] = d end,
    })
    h.near(delays[1], 0.001, 1e-12, "full jitter 1")
    h.near(delays[2], 0.002, 1e-12, "full jitter 2")
  end)

  it("does not retry what retryable(err) rejects: 'not_retryable'", function()
    local fn, calls = flaky(10, "fatal")
    local seen
    local r = { context.retry(bg, fn, {
      base = 0.001, retryable = function(err) seen = err; return err ~= "fatal" end }) }
    assert.are.same({ nil, "fatal", 1, "not_retryable" }, r)
    assert.are.equal("fatal", seen)
    assert.are.equal(1, #calls)
  end)

  it("by default, does not retry context.breaker_open; retryable can say otherwise", function()
    local fn, calls = flaky(10, context.breaker_open)
    assert.are.same({ nil, context.breaker_open, 1, "not_retryable" },
      { context.retry(bg, fn, { base = 0.001 }) })
    assert.are.equal(1, #calls)
    local fn2, calls2 = flaky(1, context.breaker_open)
    assert.are.same({ "ok", 2 }, { context.retry(bg, fn2, { base = 0.001,
      retryable = function() return true end }) })
    assert.are.equal(2, #calls2)
  end)

  it("never retries canceled returned or raised by fn: 'canceled'", function()
    local fn, calls = flaky(10, canceled)
    assert.are.same({ nil, canceled, 1, "canceled" }, { context.retry(bg, fn, { base = 0.001 }) })
    assert.are.equal(1, #calls)
    local n = 0
    local r = { context.retry(bg, function(ctx) n = n + 1; error(canceled) end, { base = 0.001 }) }
    assert.are.same({ nil, canceled, 1, "canceled" }, r)
    assert.are.equal(1, n)
  end)

  it("does not call fn when ctx is already done", function()
    local ctx, cancel = context.with_cancel(bg)
    cancel()
    local called = false
    local r = table.pack(context.retry(ctx, function() called = true end))
    assert.are.same({ nil, canceled, 0, "canceled" }, { r[1], r[2], r[3], r[4] })
    assert.is_false(called)
    local dctx = context.with_timeout(bg, 0)
    assert.are.same({ nil, deadline_exceeded, 0, "deadline" },
      { context.retry(dctx, function() called = true end) })
    assert.is_false(called)
  end)

  it("stops sleeping as soon as ctx is cancelled: 'canceled', last_err kept", function()
    virtual()
    local ctx, cancel = context.with_cancel(bg)
    local slept
    local task = context.go(function()
      local r = { context.retry(ctx, flaky(10), { attempts = 10, base = 2, jitter = "none",
        on_retry = function(_, _, d) slept = d end }) }
      r.at = clock:now()
      return r
    end)
    local canceller = context.go(function() context.sleep(bg, 0.5); cancel() end)
    local r = task:wait()
    canceller:wait()
    assert.are.same({ nil, "fail 1", 1, "canceled" }, { r[1], r[2], r[3], r[4] })
    assert.are.equal(2, slept, "it was sleeping 2 s")
    assert.are.equal(0.5, r.at, "it slept on after the cancel")
  end)

  it("a failure while ctx is cancelled is not retried, whatever the error", function()
    local ctx, cancel = context.with_cancel(bg)
    local r = { context.retry(ctx, function() cancel(); return nil, "io error" end,
      { base = 0.001 }) }
    assert.are.same({ nil, "io error", 1, "canceled" }, r)
  end)

  it("never sleeps past the deadline: gives up at once with 'deadline'", function()
    -- a 2 s budget and a 10 s first delay: it must not sleep at all
    virtual()
    local ctx = context.with_timeout(bg, 2)
    local fn, calls = flaky(10)
    local r = { context.retry(ctx, fn, { attempts = 10, base = 10, jitter = "none" }) }
    assert.are.same({ nil, "fail 1", 1, "deadline" }, r)
    assert.are.equal(0, clock:now(), "it slept (towards) the deadline")
    assert.is_nil(ctx:err())
    assert.are.equal(1, #calls)
  end)

  it("retries an ordinary error while the delay fits before the deadline", function()
    virtual()
    local at = {}
    local function timed(fn)
      return function(c, n) at[#at + 1] = clock:now(); return fn(c, n) end
    end
    local ctx = context.with_timeout(bg, 0.5)
    local r = { context.retry(ctx, timed(flaky(10)), { attempts = 10, base = 0.3, factor = 1,
      jitter = "none" }) }
    -- attempt 1 at 0: 0.3 < 0.5 left, retry; attempt 2 at 0.3: 0.3 >= 0.2 left
    assert.are.same({ nil, "fail 2", 2, "deadline" }, r)
    assert.are.same({ 0, 0.3 }, at)
    assert.are.equal(0.3, clock:now(), "gave up at once")
    -- exactly at the edge: a delay equal to the time left does not fit
    -- (attempt 1 at 0.3: 0.25 < 0.5 left; attempt 2 at 0.55: 0.25 >= 0.25 left)
    at = {}
    local ctx2 = context.with_timeout(bg, 0.5)
    r = { context.retry(ctx2, timed(flaky(10)), { attempts = 10, base = 0.25, factor = 1,
      jitter = "none" }) }
    assert.are.same({ nil, "fail 2", 2, "deadline" }, r)
    assert.are.same({ 0.3, 0.55 }, at)
    assert.is_nil(ctx2:err())
  end)

  it("retries deadline_exceeded only while the time left exceeds twice the delay", function()
    virtual()
    local ctx = context.with_timeout(bg, 0.2)
    -- 0.2 left <= 2 * 0.12: an ordinary error would be retried (above), this is not
    local r = { context.retry(ctx, flaky(10, deadline_exceeded), { attempts = 10,
      base = 0.12, factor = 1, jitter = "none" }) }
    assert.are.same({ nil, deadline_exceeded, 1, "deadline" }, r)
    assert.are.equal(0, clock:now())
    -- exactly at the edge: 0.2 left is not more than 2 * 0.1
    local ctx1 = context.with_timeout(bg, 0.2)
    assert.are.same({ nil, deadline_exceeded, 1, "deadline" },
      { context.retry(ctx1, flaky(10, deadline_exceeded), { attempts = 10, base = 0.1,
        factor = 1, jitter = "none" }) })
    assert.are.equal(0, clock:now())
    -- with room for it, it is retried: 0.2 left > 2 * 0.099, after exactly that delay
    local ctx2 = context.with_timeout(bg, 0.2)
    local fn, calls = flaky(1, deadline_exceeded)
    assert.are.same({ "ok", 2 }, { context.retry(ctx2, fn, { base = 0.099, jitter = "none" }) })
    assert.are.equal(2, #calls)
    assert.are.equal(0.099, clock:now())
    -- and without a deadline, always
    assert.are.same({ "ok", 2 }, { context.retry(bg, flaky(1, deadline_exceeded),
      { base = 0.001, jitter = "none" }) })
  end)

  it("gives up with 'deadline' when ctx's deadline passes during an attempt", function()
    virtual()
    local ctx = context.with_timeout(bg, 0.2)
    local r = { context.retry(ctx, function(c) c:done(); return nil, "slow" end,
      { attempts = 5, base = 0.001 }) }
    assert.are.same({ nil, "slow", 1, "deadline" }, r)
    assert.are.equal(0.2, clock:now(), "gave up at the deadline, not later")
  end)

  it("attempt_timeout: each attempt has its own timeout, and its expiry is retried", function()
    virtual()
    local seen, at, ended = {}, {}, nil
    local r = { context.retry(bg, function(actx, attempt)
      seen[attempt] = actx:remaining()
      at[attempt] = clock:now()
      if attempt == 1 then
        local _, err = context.sleep(actx, 5) -- the attempt's own timeout ends this
        ended = clock:now()
        return nil, err
      end
      return "second try"
    end, { attempt_timeout = 0.01, base = 0.001, jitter = "none" }) }
    assert.are.same({ "second try" }, r)
    assert.are.same({ 0.01, 0.01 }, seen)
    assert.are.equal(0.01, ended, "attempt 1 ended by its own timeout")
    assert.are.same({ 0, 0.011 }, at)
  end)

  it("max_elapsed: no retry whose delay would end past it ('exhausted')", function()
    virtual()
    local fn, calls = flaky(100)
    local r = { context.retry(bg, fn, { attempts = math.huge, base = 0.05, factor = 2,
      max_elapsed = 0.151, jitter = "none" }) }
    -- delays 0.05 (ends at 0.05, within), then 0.1 (ends at 0.15, within),
    -- then 0.2 (would end at 0.35). (Not a bound equal to an end: retry
    -- measures elapsed time as a difference of context.now(), which is not
    -- exact under the virtual clock.)
    assert.are.same({ nil, "fail 3", 3, "exhausted" }, r)
    assert.are.equal(0.15, clock:now(), "gave up at once, not after a sleep")
    local fn2 = flaky(100)
    r = { context.retry(bg, fn2, { attempts = math.huge, base = 0.05, factor = 2,
      max_elapsed = 0.149, jitter = "none" }) }
    assert.are.same({ nil, "fail 2", 2, "exhausted" }, r)
    assert.are.equal(0.2, clock:now())
  end)

  it("honours retry_after: the third return value, or err.retry_after", function()
    local delays = {}
    local on_retry = function(_, _, d) delays[#delays + 1] = d end
    virtual()
    local n, at = 0, {}
    local r = { context.retry(bg, function()
      n = n + 1
      at[n] = clock:now()
      if n == 1 then return nil, "429 Too Many Requests", 0.02 end
      if n == 2 then return nil, { status = 503, retry_after = 0.01 } end
      return "served"
    end, { base = 0.001, jitter = "none", attempts = 5, on_retry = on_retry }) }
    assert.are.same({ "served" }, r)
    assert.are.same({ 0.02, 0.01 }, delays)
    assert.are.same({ 0, 0.02, 0.03 }, at, "did not wait as told")
  end)

  it("a retry_after that does not fit before the deadline gives up at once", function()
    virtual()
    local ctx = context.with_timeout(bg, 0.5)
    local r = { context.retry(ctx, function() return nil, "busy", 60 end, { base = 0.001 }) }
    assert.are.same({ nil, "busy", 1, "deadline" }, r)
    assert.are.equal(0, clock:now())
  end)

  it("works in tasks, many at once, each with its own schedule", function()
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = context.go(function()
        return context.retry(bg, flaky(i % 3), { base = 0.001, jitter = "full" })
      end)
    end
    for i = 1, 20 do
      assert.are.same({ "ok", i % 3 + 1 }, { tasks[i]:wait() })
    end
  end)

  it("names bad arguments", function()
    local f = function() end
    h.argerr(1, "retry", function() context.retry(nil, f) end)
    h.argerr(2, "retry", function() context.retry(bg, nil) end)
    h.argerr(2, "retry", function() context.retry(bg, 42) end)
    h.argerr(3, "retry", function() context.retry(bg, f, 5) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { attempts = 0 }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { attempts = 2.5 }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { base = -1 }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { base = 0 / 0 }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { factor = 0.5 }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { max = "5" }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { jitter = "some" }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { retryable = true }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { on_retry = {} }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { budget = {} }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { max_elapsed = -1 }) end)
    h.argerr(3, "retry", function() context.retry(bg, f, { attempt_timeout = 0 }) end)
    local msg = h.argerr(2, "retry", function() context.retry(bg, nil) end)
    assert.is_truthy(msg:find("function expected, got nil", 1, true), msg)
    assert.is_truthy(msg:find("^[^:]*retry_spec.lua:%d+:"), "position is the caller's: " .. msg)
  end)
end)

describe("context.backoff", function()
  it("none: base * factor^(n-1), capped by max; reset starts over", function()
    local b = context.backoff { base = 0.1, factor = 2, max = 0.5, jitter = "none" }
    local got = {}
    for i = 1, 5 do got[i] = b:next() end
    assert.are.same({ 0.1, 0.2, 0.4, 0.5, 0.5 }, got)
    b:reset()
    assert.are.equal(0.1, b:next())
  end)

  it("full: uniform in [0, t]; equal: in [t/2, t]", function()
    local rnd = lcg(7)
    local full = context.backoff { base = 1, factor = 2, max = 8, jitter = "full", random = rnd }
    local equal = context.backoff { base = 1, factor = 2, max = 8, jitter = "equal", random = rnd }
    for n = 1, 30 do
      local t = math.min(8, 2 ^ (n - 1))
      local f, e = full:next(), equal:next()
      assert.is_true(f >= 0 and f <= t, "full out of range")
      assert.is_true(e >= t / 2 and e <= t, "equal out of range")
    end
    local lo = context.backoff { base = 1, jitter = "full", random = function() return 0 end }
    assert.are.equal(0, lo:next())
    local eq = context.backoff { base = 1, jitter = "equal", random = function() return 0 end }
    assert.are.equal(0.5, eq:next())
  end)

  it("decorrelated: in [base, 3 * previous], capped by max", function()
    local b = context.backoff { base = 1, max = 20, jitter = "decorrelated", random = lcg(3) }
    local prev = 1
    for _ = 1, 50 do
      local d = b:next()
      assert.is_true(d >= 1 and d <= math.min(20, 3 * prev) + 1e-12, "out of range: " .. d)
      prev = d
    end
    local top = context.backoff { base = 1, max = 100, jitter = "decorrelated",
      random = function() return 1 end }
    assert.are.same({ 3, 9, 27, 81, 100 }, { top:next(), top:next(), top:next(),
      top:next(), top:next() })
  end)

  it("defaults: base 0.1, factor 2, max 5, full jitter", function()
    local b = context.backoff { random = function() return 1 end }
    local got = {}
    for i = 1, 8 do got[i] = b:next() end
    assert.are.same({ 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5 }, got)
  end)

  it("is the schedule retry follows", function()
    local delays = {}
    context.retry(bg, flaky(10), { attempts = 6, base = 0.001, max = 0.004,
      jitter = "decorrelated", random = lcg(11),
      on_retry = function(_, _, d) delays[#delays + 1] = d end })
    local b = context.backoff { base = 0.001, max = 0.004, jitter = "decorrelated",
      random = lcg(11) }
    for i = 1, 5 do assert.are.equal(b:next(), delays[i]) end
  end)

  it("names bad options", function()
    h.argerr(1, "backoff", function() context.backoff(1) end)
    h.argerr(1, "backoff", function() context.backoff { jitter = 1 } end)
    h.argerr(1, "backoff", function() context.backoff { random = 1 } end)
    h.argerr(1, "backoff", function() context.backoff { max = math.huge } end)
  end)

  -- AWS Architecture Blog, "Exponential Backoff And Jitter" (Marc Brooker,
  -- 2015): clients contend for one resource under optimistic concurrency.
  -- Simulated, slotted time: each attempt takes one slot; of the clients that
  -- call in the same slot one wins, the others fail and back off (a delay of d
  -- slots, as context.backoff computes it, puts the next call floor(d) slots
  -- after the next one). Counted: the calls it takes until every client won.
  describe("the AWS comparison (many clients contending, simulated time)", function()
    local function simulate(clients, opts, seed)
      local rnd = lcg(seed)
      local next_slot, backoffs, left = {}, {}, clients
      for i = 1, clients do
        next_slot[i] = 0
        local o = {}
        for k, v in pairs(opts) do o[k] = v end
        o.random = rnd
        backoffs[i] = context.backoff(o)
      end
      local calls, slot = 0, 0
      while left > 0 do
        local callers = {}
        for i = 1, clients do
          if next_slot[i] == slot then callers[#callers + 1] = i end
        end
        calls = calls + #callers
        if #callers > 0 then
          local winner = callers[1 + math.floor(rnd() * #callers)]
          for _, i in ipairs(callers) do
            if i == winner then
              next_slot[i] = -1
              left = left - 1
            else
              next_slot[i] = slot + 1 + math.floor(backoffs[i]:next())
            end
          end
        end
        slot = slot + 1
        assert(slot < 1e6, "simulation does not end")
      end
      return calls, slot
    end

    local N = 50
    local strategies = {
      constant = { base = 1, factor = 1, max = 1, jitter = "none" }, -- no backoff growth, no jitter
      exponential = { base = 1, factor = 2, max = 1000, jitter = "none" },
      full = { base = 1, factor = 2, max = 1000, jitter = "full" },
      equal = { base = 1, factor = 2, max = 1000, jitter = "equal" },
      decorrelated = { base = 1, max = 1000, jitter = "decorrelated" },
    }

    it("full jitter makes far fewer calls than no jitter and than plain exponential", function()
      for _, seed in ipairs({ 1, 2, 3, 42, 1234 }) do
        local calls = {}
        for name, o in pairs(strategies) do calls[name] = simulate(N, o, seed) end
        -- without jitter the clients stay in lockstep: one winner per round
        assert.are.equal(N * (N + 1) / 2, calls.constant)
        assert.are.equal(N * (N + 1) / 2, calls.exponential)
        assert.is_true(calls.full * 3 < calls.exponential,
          ("seed %d: full %d vs exponential %d"):format(seed, calls.full, calls.exponential))
        assert.is_true(calls.full * 3 < calls.constant)
        -- the other jitters also break the lockstep
        assert.is_true(calls.equal < calls.exponential)
        assert.is_true(calls.decorrelated < calls.exponential)
      end
    end)

    it("is a test that can fail: without the jitter, full behaves as exponential", function()
      local o = {}
      for k, v in pairs(strategies.full) do o[k] = v end
      o.jitter = "none"
      assert.are.equal(N * (N + 1) / 2, (simulate(N, o, 1)))
    end)
  end)
end)

describe("context.retry_budget", function()
  it("token bucket (gRPC): failures take 1, successes give token_ratio; retry above half", function()
    local b = context.retry_budget { max_tokens = 4, token_ratio = 0.5 }
    assert.are.equal(4, b:stats().tokens)
    b:on_failure()                   -- 3 > 2
    assert.is_true(b:try_retry())
    b:on_failure()                   -- 2, not > 2
    assert.is_false(b:try_retry())
    b:on_success()                   -- 2.5
    assert.is_true(b:try_retry())
    for _ = 1, 10 do b:on_success() end
    assert.are.equal(4, b:stats().tokens, "never above max_tokens")
    for _ = 1, 10 do b:on_failure() end
    assert.are.equal(0, b:stats().tokens, "never below zero")
    local s = b:stats()
    assert.are.equal(2, s.retries)
    assert.are.equal(1, s.refused)
  end)

  it("ratio budget: retries at most ratio * requests + min_per_second * ttl, over ttl", function()
    local t = 100
    local b = context.retry_budget { ratio = 0.5, min_per_second = 0, ttl = 10,
      clock = function() return t end }
    for _ = 1, 4 do b:on_request() end
    assert.is_true(b:try_retry())
    assert.is_true(b:try_retry())
    assert.is_false(b:try_retry(), "more than half the requests")
    t = t + 5
    b:on_request(); b:on_request()
    assert.is_true(b:try_retry())
    assert.is_false(b:try_retry())
    t = t + 6 -- the first 4 requests and 2 retries have left the window
    local s = b:stats()
    assert.are.equal(2, s.requests)
    assert.are.equal(1, s.retries)
    assert.is_false(b:try_retry()) -- 1 + 1 > 0.5 * 2
    b:on_request(); b:on_request()
    assert.is_true(b:try_retry())
    t = t + 100
    assert.is_false(b:try_retry(), "nothing left in the window")
    local floor = context.retry_budget { ratio = 0, min_per_second = 0.5, ttl = 4,
      clock = function() return t end }
    assert.is_true(floor:try_retry())
    assert.is_true(floor:try_retry())
    assert.is_false(floor:try_retry(), "min_per_second * ttl = 2")
  end)

  it("a shared token bucket stops retries of later calls: reason 'budget'", function()
    local budget = context.retry_budget { max_tokens = 4, token_ratio = 0.1 }
    local opts = { attempts = 10, base = 0.001, jitter = "none", budget = budget }
    local fn1, calls1 = flaky(100)
    -- 4 -> 3 (retry) -> 2 (refused)
    assert.are.same({ nil, "fail 2", 2, "budget" }, { context.retry(bg, fn1, opts) })
    assert.are.equal(2, #calls1)
    local fn2, calls2 = flaky(100)
    assert.are.same({ nil, "fail 1", 1, "budget" }, { context.retry(bg, fn2, opts) })
    assert.are.equal(1, #calls2)
    -- successes refill it
    for _ = 1, 30 do context.retry(bg, function() return true end, opts) end -- 1 + 30 * 0.1
    assert.are.same({ "ok", 2 }, { context.retry(bg, flaky(1), opts) })
  end)

  it("a shared ratio budget: a failing dependency gets few retries", function()
    local t = 0
    local budget = context.retry_budget { ratio = 0.2, min_per_second = 0, ttl = 10,
      clock = function() return t end }
    local total = 0
    local reasons = {}
    for _ = 1, 20 do
      local fn, calls = flaky(100)
      local _, _, _, why = context.retry(bg, fn, { attempts = 5, base = 0,
        jitter = "none", budget = budget })
      total = total + #calls
      reasons[why] = (reasons[why] or 0) + 1
    end
    -- 20 requests, retries at most 20% of them: 4
    assert.is_true(total <= 24, "too many calls: " .. total)
    assert.is_true(total >= 20)
    assert.is_true((reasons.budget or 0) >= 15)
  end)

  it("non-retryable failures do not drain the token bucket", function()
    local budget = context.retry_budget { max_tokens = 2, token_ratio = 1 }
    for _ = 1, 5 do
      context.retry(bg, function() return nil, "bad request" end,
        { budget = budget, retryable = function() return false end })
    end
    assert.are.equal(2, budget:stats().tokens)
  end)

  it("names bad options", function()
    h.argerr(1, "retry_budget", function() context.retry_budget(3) end)
    h.argerr(1, "retry_budget", function() context.retry_budget { kind = "leaky" } end)
    h.argerr(1, "retry_budget", function() context.retry_budget { max_tokens = 0 } end)
    h.argerr(1, "retry_budget", function() context.retry_budget { ratio = -0.1 } end)
    h.argerr(1, "retry_budget", function() context.retry_budget { ratio = 0.1, clock = 5 } end)
  end)
end)
