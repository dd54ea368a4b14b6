-- lcontext.patterns (docs/patterns.md), part 3: context.scope, context.fallback,
-- context.errors.
local context = require "lcontext"
local h = require "spec.helpers"
local P = require "spec.patterns_helpers"

local bg = context.background()
local C, DE = context.canceled, context.deadline_exceeded
local between, SLACK, in_task = P.between, P.SLACK, P.in_task

before_each(P.setup)
after_each(P.teardown)

describe("context.scope", function()
  it("starts named children of the parent, with or without a timeout", function()
    local K = context.key("k")
    local parent, pcancel = context.with_cancel(context.with_value(bg, K, "v"))
    local sc = context.scope(parent)
    local a = sc:start("a")
    local b = sc:start("b", 0.3)
    assert.is_nil(a:deadline())
    between(b:remaining(), 0.25, 0.3, "b")
    assert.are.equal("v", a:value(K))
    h.is(sc:get("a"), a, "get a")
    h.is(sc:get("b"), b, "get b")
    assert.is_nil(sc:get("c"))
    assert.are.same({ "a", "b" }, sc:names())
    pcancel()
    h.is(a:err(), C, "a follows the parent")
    h.is(b:err(), C, "b follows the parent")
    assert.are.same({}, sc:names())
  end)

  it("cancels one child by name, with a cause, and forgets it", function()
    local sc = context.scope(bg)
    local a, b = sc:start("a"), sc:start("b")
    assert.is_true(sc:cancel("a", "not needed"))
    h.is(a:err(), C, "a")
    assert.are.equal("not needed", a:cause())
    assert.is_nil(b:err())
    assert.is_nil(sc:get("a"))
    assert.are.same({ "b" }, sc:names())
    assert.is_false(sc:cancel("a"), "already gone")
    assert.is_false(sc:cancel("zzz"))
    assert.is_true(sc:cancel("b"))
    h.is(b:cause(), C, "no cause given")
  end)

  it("cancels all children, and stays usable", function()
    local sc = context.scope(bg)
    local list = { sc:start("x"), (sc:start("y", 60)), (sc:start("z")) }
    assert.are.equal(3, sc:cancel_all("shutdown"))
    for _, c in ipairs(list) do
      h.is(c:err(), C, "err")
      assert.are.equal("shutdown", c:cause())
    end
    assert.are.same({}, sc:names())
    assert.are.equal(0, sc:cancel_all())
    local again = sc:start("x")
    assert.is_nil(again:err())
    assert.are.same({ "x" }, sc:names())
    sc:cancel_all()
  end)

  it("cancels the running child when a name is started again", function()
    local sc = context.scope(bg)
    local old = sc:start("job", 60)
    local new = sc:start("job")
    h.is(old:err(), C, "old")
    assert.are.equal("scope: 'job' replaced", old:cause())
    assert.is_nil(new:err())
    h.is(sc:get("job"), new, "get")
    assert.are.same({ "job" }, sc:names())
    sc:cancel_all()
  end)

  it("drops children that ended by themselves", function()
    local sc = context.scope(bg)
    local quick = sc:start("quick", 0.2)
    local _, cancel = sc:start("own")
    sc:start("slow", 60)
    cancel() -- the child's own cancel, not the scope's
    assert.are.same({ "quick", "slow" }, sc:names())
    h.is(quick:done(), DE, "quick")
    assert.are.equal("local", context.classify_timeout(quick))
    assert.is_nil(sc:get("quick"))
    assert.is_nil(sc:get("own"))
    assert.are.same({ "slow" }, sc:names())
    assert.is_false(sc:cancel("quick"))
    sc:cancel_all()
  end)

  it("does not hold on to ended children it is never asked about", function()
    local sc = context.scope(bg)
    local seen = h.weak()
    for i = 1, 300 do
      seen[i] = sc:start("c" .. i, 0) -- each done at once
    end
    h.full_gc()
    assert.is_true(h.count(seen) <= 40, "kept " .. h.count(seen) .. " ended children")
  end)

  it("closes: the scope's own context ends, later children are done at once", function()
    local sc = context.scope(bg)
    local a = sc:start("a")
    sc:close("closing")
    h.is(a:err(), C, "a")
    assert.are.equal("closing", a:cause())
    local late = sc:start("late")
    h.is(late:err(), C, "late")
    h.is(sc:context():err(), C, "scope context")
    assert.are.same({}, sc:names())
    -- a scope as a <close> variable: spec/close_54_spec.lua (Lua 5.4 only)
  end)

  it("names its arguments", function()
    h.argerr(1, "scope", function() context.scope(nil) end)
    local sc = context.scope(bg)
    h.argerr(1, "start", function() sc:start(nil) end)
    h.argerr(1, "start", function() sc:start(42) end)
    h.argerr(2, "start", function() sc:start("a", "1") end)
    h.argerr(2, "start", function() sc:start("a", h.NAN) end)
    h.argerr(1, "get", function() sc:get() end)
    h.argerr(1, "cancel", function() sc:cancel() end)
    h.argerr(0, "names", function() sc.names({}) end)
    assert.are.same({}, sc:names())
  end)
end)

describe("context.fallback", function()
  local K = context.key("request")

  local function request(seconds)
    local ctx, cancel = context.with_timeout(bg, seconds)
    return context.with_value(ctx, K, "req-7"), cancel
  end

  -- a primary that waits `latency` seconds on its context
  local function slow(latency, ...)
    local results = table.pack(...)
    return function(ctx)
      local ok, err = context.sleep(ctx, latency)
      if not ok then return nil, err end
      return table.unpack(results, 1, results.n)
    end
  end

  it("passes the primary's results through, all of them", function()
    local ctx, cancel = request(60)
    local called = false
    local r = table.pack(context.fallback(ctx, slow(0, 1, nil, "three", nil),
      function() called = true end))
    assert.are.equal(4, r.n)
    assert.are.same({ 1, nil, "three", nil, n = 4 }, r)
    assert.is_false(called)
    -- a lone nil is a result, not a failure
    assert.are.same({ n = 1 }, table.pack(context.fallback(ctx, function() return nil end,
      function() called = true end)))
    assert.is_false(called)
    cancel()
  end)

  it("falls back when the primary times out, with a fresh context keeping the values", function()
    local ctx, cancel = request(60)
    local seen = {}
    local start = context.now()
    local r1, r2 = in_task(function()
      return context.fallback(ctx, slow(5, "fresh"), function(fctx, err)
        seen.err, seen.value = err, fctx:value(K)
        seen.done, seen.deadline = fctx:err(), fctx:deadline()
        return "cached", "stale"
      end, { timeout = 0.02 })
    end)
    assert.are.equal("cached", r1)
    assert.are.equal("stale", r2)
    h.is(seen.err, DE, "the primary's failure")
    assert.are.equal("req-7", seen.value)
    assert.is_nil(seen.done)
    assert.is_nil(seen.deadline, "no fallback_timeout: no deadline of its own")
    local elapsed = context.now() - start
    between(elapsed, 0.02, 0.02 + SLACK, "the primary got its 20 ms")
    cancel()
  end)

  it("bounds the fallback by fallback_timeout, even past the request's deadline", function()
    local ctx, cancel = request(0.2)
    local remaining, err = context.fallback(ctx, slow(5), function(fctx)
      return fctx:remaining()
    end, { timeout = 0.01, fallback_timeout = 1 })
    assert.is_nil(err)
    between(remaining, 0.5, 1, "the fallback's own time")
    local r, e = context.fallback(ctx, slow(5), function(fctx)
      return context.sleep(fctx, 5)
    end, { timeout = 0.01, fallback_timeout = 0.02 })
    assert.is_nil(r)
    h.is(e, DE, "the fallback's own timeout")
    cancel()
  end)

  it("falls back on a cancelled primary, and on any error once the primary's context ended", function()
    local ctx, cancel = request(60)
    local r = context.fallback(ctx, function(pctx)
      pctx:check()                     -- fine
      error(C)                         -- raised: the primary was cancelled
    end, function(_, err) return err end)
    h.is(r, C, "fallback saw canceled")
    -- the primary's context ended, and it reports its own error
    r = context.fallback(ctx, function(pctx)
      context.sleep(pctx, 5)
      return nil, "socket: timeout"
    end, function(_, err) return err end, { timeout = 0.01 })
    assert.are.equal("socket: timeout", r)
    cancel()
  end)

  it("returns other failures as they are, unless any_error is set", function()
    local ctx, cancel = request(60)
    local called = 0
    local fb = function() called = called + 1; return "degraded" end
    local r, e = context.fallback(ctx, function() return nil, "bad request" end, fb)
    assert.is_nil(r)
    assert.are.equal("bad request", e)
    r, e = context.fallback(ctx, function() error({ code = 500 }) end, fb)
    assert.is_nil(r)
    assert.are.same({ code = 500 }, e)
    assert.are.equal(0, called)
    r = context.fallback(ctx, function() return nil, "bad request" end, fb, { any_error = true })
    assert.are.equal("degraded", r)
    assert.are.equal(1, called)
    cancel()
  end)

  it("does not fall back when the caller's own context ends", function()
    local ctx, cancel = context.with_cancel_cause(context.with_value(bg, K, 1))
    local called = false
    local t = context.go(function()
      return context.fallback(ctx, slow(5, "x"), function() called = true end,
        { timeout = 1 })
    end)
    context.go(function()
      context.sleep(bg, 0.01)
      cancel("client left")
    end)
    local r, e = t:wait()
    assert.is_nil(r)
    h.is(e, C, "the caller's err")
    assert.is_false(called)
    -- nor when the caller's deadline passes
    local short, scancel = request(0.01)
    r, e = context.fallback(short, slow(5, "x"), function() called = true end)
    assert.is_nil(r)
    h.is(e, DE, "the caller's deadline")
    assert.is_false(called)
    -- nor when it is already done: the primary does not even run
    local ran = false
    r, e = context.fallback(short, function() ran = true end, function() called = true end)
    h.is(e, DE, "already done")
    assert.is_false(ran or called)
    scancel()
  end)

  it("lets an explicit cancel of the request reach the fallback", function()
    local ctx, cancel = context.with_cancel_cause(bg)
    local t = context.go(function()
      return context.fallback(ctx, slow(5), function(fctx)
        local ok, err = context.sleep(fctx, 5)
        return { ok = ok, err = err, cause = fctx:cause() }
      end, { timeout = 0.01, fallback_timeout = 5 })
    end)
    context.go(function()
      context.sleep(bg, 0.03)
      cancel("client left")
    end)
    local start = context.now()
    local r = t:wait()
    assert.is_nil(r.ok)
    h.is(r.err, C, "the fallback's sleep")
    assert.are.equal("client left", r.cause)
    assert.is_true(context.now() - start < SLACK)
  end)

  it("reports a failing fallback, calls on_fallback, and cancels what it made", function()
    local ctx, cancel = request(60)
    local pctx, fctx, noted
    local r, e = context.fallback(ctx, function(c) pctx = c; return nil, C end,
      function(c) fctx = c; error("cache down", 0) end,
      { on_fallback = function(err) noted = err end })
    assert.is_nil(r)
    assert.are.equal("cache down", e)
    h.is(noted, C, "on_fallback")
    h.is(pctx:err(), C, "the primary's context is cancelled")
    h.is(fctx:err(), C, "the fallback's context is cancelled")
    assert.is_nil(ctx:err())
    cancel()
  end)

  it("suspends the calling task: other tasks run meanwhile", function()
    local ctx, cancel = request(60)
    local ticks, stop = 0, false
    local ticker = context.go(function()
      while not stop do
        context.sleep(bg, 0.002)
        ticks = ticks + 1
      end
    end)
    local r = in_task(function()
      return context.fallback(ctx, slow(5), function() return "ok" end, { timeout = 0.03 })
    end)
    stop = true
    ticker:wait()
    assert.are.equal("ok", r)
    assert.is_true(ticks >= 2, "the loop was blocked: " .. ticks .. " ticks")
    cancel()
  end)

  it("names its arguments", function()
    local f = function() end
    h.argerr(1, "fallback", function() context.fallback(nil, f, f) end)
    h.argerr(2, "fallback", function() context.fallback(bg, nil, f) end)
    h.argerr(3, "fallback", function() context.fallback(bg, f, "f") end)
    h.argerr(4, "fallback", function() context.fallback(bg, f, f, 1) end)
    h.argerr(4, "fallback", function() context.fallback(bg, f, f, { timeout = "1" }) end)
    h.argerr(4, "fallback", function() context.fallback(bg, f, f, { fallback_timeout = h.INF }) end)
    h.argerr(4, "fallback", function() context.fallback(bg, f, f, { on_fallback = 1 }) end)
  end)
end)

describe("context.errors", function()
  it("classifies what it collects, and ignores nil", function()
    local ec = context.errors()
    assert.are.equal("canceled", ec:add("cache", C))
    assert.are.equal("deadline_exceeded", ec:add("db", DE))
    assert.are.equal("other", ec:add("db", "connection refused"))
    assert.is_nil(ec:add("auth", nil))
    assert.are.same({
      { op = "cache", err = C, kind = "canceled" },
      { op = "db", err = DE, kind = "deadline_exceeded" },
      { op = "db", err = "connection refused", kind = "other" },
    }, ec:list())
  end)

  it("counts only real failures towards should_abort", function()
    local ec = context.errors()
    assert.is_false(ec:should_abort())
    for _ = 1, 5 do ec:add("x", C); ec:add("y", DE) end
    assert.is_false(ec:should_abort(), "cancellations and timeouts are not failures")
    ec:add("z", "boom")
    assert.is_true(ec:should_abort())
    assert.is_false(ec:should_abort(2))
    ec:add("z", "boom again")
    assert.is_true(ec:should_abort(2))
    local lenient = context.errors { threshold = 3 }
    lenient:add("a", "e1"); lenient:add("a", "e2")
    assert.is_false(lenient:should_abort())
    lenient:add("a", "e3")
    assert.is_true(lenient:should_abort())
  end)

  it("summarises by kind and by operation", function()
    local ec = context.errors()
    ec:add("db", "refused"); ec:add("db", DE); ec:add("cache", C); ec:add("db", "refused")
    assert.are.same({
      total = 4, canceled = 1, deadline_exceeded = 1, other = 2,
      by_op = {
        db = { total = 3, canceled = 0, deadline_exceeded = 1, other = 2 },
        cache = { total = 1, canceled = 1, deadline_exceeded = 0, other = 0 },
      },
    }, ec:summary())
    assert.are.same({ total = 0, canceled = 0, deadline_exceeded = 0, other = 0, by_op = {} },
      context.errors():summary())
  end)

  it("gives the first real failure, else the first error", function()
    local ec = context.errors()
    assert.is_nil(ec:first())
    ec:add("cache", C)
    local err, op = ec:first()
    h.is(err, C, "first of any kind")
    assert.are.equal("cache", op)
    ec:add("db", "refused")
    ec:add("auth", "denied")
    err, op = ec:first()
    assert.are.equal("refused", err)
    assert.are.equal("db", op)
  end)

  it("hands out copies", function()
    local ec = context.errors()
    ec:add("a", "x")
    local l = ec:list()
    l[1].err = "changed"
    l[2] = {}
    assert.are.equal("x", ec:list()[1].err)
    assert.are.equal(1, #ec:list())
    assert.are.equal(1, ec:summary().total)
  end)

  it("collects from concurrent tasks", function()
    local ec = context.errors()
    local ctx, cancel = context.with_timeout(bg, 0.3)
    local tasks = {}
    for i = 1, 4 do
      tasks[i] = context.go(function()
        local ok, err = context.sleep(ctx, i % 2 == 0 and 5 or 0.001)
        if not ok then ec:add("slow" .. i, err) else ec:add("fast" .. i, "failed " .. i) end
      end)
    end
    for _, t in ipairs(tasks) do t:wait() end
    local s = ec:summary()
    assert.are.equal(4, s.total)
    assert.are.equal(2, s.deadline_exceeded)
    assert.are.equal(2, s.other)
    assert.is_true(ec:should_abort(2))
    cancel()
  end)

  it("names its arguments", function()
    h.argerr(1, "errors", function() context.errors(5) end)
    h.argerr(1, "errors", function() context.errors { threshold = 0 } end)
    h.argerr(1, "errors", function() context.errors { threshold = 1.5 } end)
    local ec = context.errors()
    h.argerr(1, "add", function() ec:add(nil, "x") end)
    h.argerr(1, "add", function() ec:add(h.NAN, "x") end)
    h.argerr(1, "should_abort", function() ec:should_abort(0) end)
    h.argerr(1, "should_abort", function() ec:should_abort("2") end)
    h.argerr(0, "summary", function() ec.summary({}) end)
  end)
end)
