-- context.group (docs/resilience.md): Go's errgroup, plus g:go
-- returning false after the first failure, g:errors(), and Lua errors raised
-- in a task becoming its failure with a traceback; the policies (supervise,
-- any, quorum), g:results(), g:cancel, context.group_scope, and a group in
-- a cancelled spawned task. (<close>: close_54_spec.lua.)
--
-- Assertions run on the main thread (in nginx: the request's light thread;
-- an assertion raised in a task would only reach the error handler); every
-- test leaves the scheduler idle. Runs unchanged on lcontext.ngx
-- (spec/ngx/shared.sh): B.run() drains where context.run() is unavailable.
local context = require "lcontext"
local h = require "spec.helpers"
local B = require "spec.backend"

local bg = context.background()
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack

-- no task error goes unnoticed; every test leaves the scheduler idle
local guard_start, guard_check = require("spec.sched_helpers").task_guard()

-- The tests whose outcome depends on timing (which member ends first, a
-- group's deadline, partial results, any/quorum racing sleeps) run on the
-- virtual clock (docs/testing.md): exact virtual times and orders, no real
-- time. vt() installs it with autojump; it is uninstalled before the idle
-- guard runs.
local clock
local function vt()
  clock = context.virtual_clock{ autojump = true }
  return clock
end
local function now() return clock:now() end
before_each(guard_start)
after_each(function()
  if clock then clock:uninstall(); clock = nil end
  guard_check()
end)

describe("context.group", function()
  it("runs fn(gctx, ...) in tasks; wait() returns nil when all succeed", function()
    vt()
    local g, gctx = context.group(bg)
    local seen = {}
    for i = 1, 3 do
      assert.is_true(g:go(function(ctx, a, b)
        h.is(ctx, gctx, "fn's context")
        context.sleep(ctx, 0.001 * i)
        seen[#seen + 1] = a + b
        return "ignored", nil
      end, i, 10))
    end
    assert.is_nil(g:wait())
    assert.are.equal(0.003, now())
    assert.are.same({ 11, 12, 13 }, seen)
    assert.are.same({}, (g:errors()))
  end)

  it("cancels gctx when wait() returns, as Go does, even without failure", function()
    local g, gctx = context.group(bg)
    g:go(function() end)
    assert.is_nil(gctx:err())
    assert.is_nil(g:wait())
    h.is(gctx:err(), context.canceled, "gctx after wait")
    h.is(gctx:cause(), context.canceled, "cause without failure")
  end)

  it("treats nil, nil and other returns as success, only nil, err as failure", function()
    local g = context.group(bg)
    g:go(function() return nil end)
    g:go(function() return nil, nil end)
    g:go(function() return false, "not a failure: first value is not nil" end)
    g:go(function() end)
    assert.is_nil(g:wait())
  end)

  it("the first failure (nil, err) cancels gctx with err as cause; wait returns it", function()
    local g, gctx = context.group(bg)
    local boom = { "boom" }
    local saw
    vt()
    g:go(function(ctx)
      local ok, err = context.sleep(ctx, 5) -- cut short by the failure
      saw = { ok, err, now() }
      return nil, err
    end)
    g:go(function() context.sleep(bg, 0.002); return nil, boom end)
    h.is(g:wait(), boom, "wait's result")
    assert.are.equal(0.002, now(), "the sleeper was not cancelled at the failure")
    h.is(gctx:err(), context.canceled, "gctx err")
    h.is(gctx:cause(), boom, "gctx cause")
    assert.are.same({ nil, context.canceled, 0.002 }, saw)
    local errs = g:errors()
    assert.are.equal(2, #errs)
    h.is(errs[1], boom, "first failure")
    h.is(errs[2], context.canceled, "second failure (the cancelled sibling)")
  end)

  it("g:errors() lists every failure in completion order", function()
    local g = context.group(bg)
    local a, b, c = { "a" }, { "b" }, { "c" }
    vt()
    local at = {}
    -- started in the order c, a, b; they finish in the order a, b, c
    -- (sleeping on bg, not on the group's context: the first failure does
    -- not cut them short)
    g:go(function() context.sleep(bg, 0.15); at[#at + 1] = now(); return nil, c end)
    g:go(function() context.sleep(bg, 0.05); at[#at + 1] = now(); return nil, a end)
    g:go(function() context.sleep(bg, 0.1); at[#at + 1] = now(); return nil, b end)
    h.is(g:wait(), a, "first failure")
    assert.are.same({ 0.05, 0.1, 0.15 }, at)
    assert.are.equal(0.15, now())
    local errs, tbs = g:errors()
    assert.are.equal(3, #errs)
    h.is(errs[1], a); h.is(errs[2], b); h.is(errs[3], c)
    assert.are.same({ false, false, false }, tbs)
  end)

  it("a raised string becomes the failure with its traceback", function()
    local g, gctx = context.group(bg)
    g:go(function() error("kaboom") end)
    local err = g:wait()
    assert.are.equal("string", type(err))
    assert.is_truthy(err:find("kaboom", 1, true), err)
    assert.is_truthy(err:find("group_spec.lua:%d+"), err)
    assert.is_truthy(err:find("stack traceback:", 1, true), err)
    h.is(gctx:cause(), err, "cause")
    local errs, tbs = g:errors()
    h.is(errs[1], err)
    assert.are.equal(err, tbs[1])
  end)

  it("a raised non-string keeps its identity; its traceback is in errors()", function()
    local g, gctx = context.group(bg)
    local obj = setmetatable({}, { __tostring = function() return "custom error" end })
    g:go(function() error(obj) end)
    h.is(g:wait(), obj, "wait's result")
    h.is(gctx:cause(), obj, "cause")
    local errs, tbs = g:errors()
    h.is(errs[1], obj)
    assert.is_truthy(tbs[1]:find("custom error", 1, true), tbs[1])
    assert.is_truthy(tbs[1]:find("stack traceback:", 1, true), tbs[1])
  end)

  it("ctx:check() raising the sentinel fails with the sentinel itself", function()
    local g = context.group(bg)
    g:go(function() return nil, "first" end)
    g:go(function(ctx) ctx:done(); ctx:check() end)
    assert.are.equal("first", g:wait())
    local errs = g:errors()
    h.is(errs[2], context.canceled, "the sentinel")
  end)

  it("error(nil) is still a failure", function()
    local g = context.group(bg)
    g:go(function() error(nil) end)
    local err = g:wait()
    assert.is_not_nil(err)
    assert.is_truthy(tostring(err):find("stack traceback", 1, true))
  end)

  it("g:go returns false (and the failure) after the first failure, and runs nothing", function()
    local g = context.group(bg)
    g:go(function() return nil, "down" end)
    g:go(function(ctx) ctx:done() end)
    local ran = false
    local results
    vt()
    local starter = context.go(function()
      context.sleep(bg, 0.002) -- after the failure
      results = { g:go(function() ran = true end) }
    end)
    starter:wait()
    assert.are.same({ false, "down" }, results)
    assert.are.equal("down", g:wait())
    B.run() -- nothing left that could still run it
    assert.is_false(ran)
  end)

  it("g:go returns false once wait() has returned", function()
    local g = context.group(bg)
    g:go(function() end)
    g:wait()
    local ran = false
    assert.is_false(g:go(function() ran = true end))
    B.run() -- nothing left that could still run it
    assert.is_false(ran)
    assert.is_nil(g:wait(), "wait again gives the same answer")
  end)

  -- a member ended from outside: its coroutine closed (libev, Lua 5.4), its
  -- light thread killed by the thread that started it (nginx); the
  -- regression specs in spec/regress/ cover the limit cases on libev
  it("a member ended from outside is a finished, failed member", function()
    if B.libev and not coroutine.close then
      pending("nothing ends a task's coroutine from outside before Lua 5.4")
      return
    end
    local g, gctx = context.group(bg)
    local co
    g:go(function() co = coroutine.running(); bg:with_cancel():done() end)
    context.sleep(bg, 0.01) -- it starts and waits
    if B.ngx then
      assert.is_truthy(ngx.thread.kill(co))
    else
      assert.is_true(coroutine.close(co))
    end
    assert.are.equal(0, g:running())
    assert.matches("task's coroutine was closed", tostring(g:wait()))
    assert.matches("task's coroutine was closed", tostring(gctx:cause()))
    -- nginx releases the killed light thread's task and wait once it is collected
    co = nil
    collectgarbage()
    collectgarbage()
    B.run()
  end)

  it("wait() also waits for tasks that tasks of the group start", function()
    vt()
    local g = context.group(bg)
    local done = {}
    g:go(function(ctx)
      context.sleep(ctx, 0.001)
      g:go(function(ctx2)
        context.sleep(ctx2, 0.003)
        done[#done + 1] = { "grandchild", now() }
      end)
      done[#done + 1] = { "child", now() }
    end)
    assert.is_nil(g:wait())
    assert.are.same({ { "child", 0.001 }, { "grandchild", 0.004 } }, done)
    assert.are.equal(0.004, now())
  end)

  it("parent cancellation reaches gctx; the tasks see it", function()
    local parent, cancel = context.with_cancel_cause(bg)
    local g, gctx = context.group(parent)
    vt()
    g:go(function(ctx) return ctx:done() == nil or nil, ctx:err() end)
    local canceller = context.go(function() context.sleep(bg, 0.001); cancel("shutdown") end)
    h.is(g:wait(), context.canceled, "wait's result")
    assert.are.equal(0.001, now())
    assert.are.equal("shutdown", gctx:cause())
    canceller:wait()
  end)

  it("limit: never more than `limit` tasks at once; g:go suspends the caller", function()
    vt()
    local g = context.group(bg, 2)
    local running, peak, order, ended = 0, 0, {}, {}
    local function job(ctx, i)
      running = running + 1
      peak = math.max(peak, running)
      context.sleep(ctx, 0.002)
      running = running - 1
      order[#order + 1] = i
      ended[i] = now()
    end
    -- from the main thread: g:go runs the loop while it waits for a slot (in
    -- nginx, it suspends the request's light thread)
    for i = 1, 6 do
      assert.is_true(g:go(job, i))
      assert.is_true(g:running() <= 2, "more than limit running")
    end
    assert.is_nil(g:wait())
    assert.are.equal(2, peak)
    assert.are.equal(6, #order)
    -- three rounds of two: when each member ended (the order of two that
    -- end at the same time is the scheduler's)
    assert.are.same({ 0.002, 0.002, 0.004, 0.004, 0.006, 0.006 }, ended)
  end)

  it("limit: g:go from a task suspends it too, and gives up when the group fails", function()
    vt()
    local g = context.group(bg, 1)
    local started = {}
    local feeder = context.go(function()
      local r = {}
      for i = 1, 4 do
        r[i] = g:go(function()
          started[#started + 1] = i
          context.sleep(bg, 0.002)
          if i == 2 then return nil, "second failed" end
        end)
      end
      return r
    end)
    local r = feeder:wait()
    assert.are.same({ true, true, false, false }, r)
    assert.are.same({ 1, 2 }, started)
    assert.are.equal(0.004, now(), "the feeder gave up at the failure")
    assert.are.equal("second failed", g:wait())
  end)

  it("try_go never waits: false while the slots are full", function()
    vt()
    local g = context.group(bg, 1)
    assert.is_true(g:try_go(function(ctx) context.sleep(ctx, 0.002) end))
    assert.is_false(g:try_go(function() end))
    assert.is_nil(g:wait())
    assert.are.equal(0.002, now())
  end)

  it("no limit with math.huge", function()
    local g = context.group(bg, math.huge)
    for _ = 1, 5 do assert.is_true(g:try_go(function() end)) end
    assert.is_nil(g:wait())
  end)

  it("names bad arguments", function()
    h.argerr(1, "group", function() context.group(nil) end)
    h.argerr(1, "group", function() context.group({}) end)
    h.argerr(2, "group", function() context.group(bg, "2") end)
    h.argerr(2, "group", function() context.group(bg, 0) end)
    h.argerr(2, "group", function() context.group(bg, 1.5) end)
    h.argerr(2, "group", function() context.group(bg, 0 / 0) end)
    local g = context.group(bg)
    h.argerr(1, "go", function() g:go(42) end)
    h.argerr(1, "try_go", function() g:try_go() end)
    local ok, msg = pcall(g.go, {}, function() end)
    assert.is_false(ok)
    assert.is_truthy(msg:find("bad self", 1, true), msg)
    g:wait()
  end)

  it("accepts callable tables", function()
    local g = context.group(bg)
    local hit = false
    g:go(setmetatable({}, { __call = function(_, ctx) hit = ctx ~= nil end }))
    assert.is_nil(g:wait())
    assert.is_true(hit)
  end)
end)

-- the options table and the policies (docs/resilience.md, "Policies")
describe("context.group policies", function()
  local C, DE = context.canceled, context.deadline_exceeded

  -- a member that sleeps `s` on its context, then returns `...`; nil, err
  -- when the context ends first
  local function after(s, ...)
    local r = { n = select("#", ...), ... }
    return function(ctx)
      local ok, err = context.sleep(ctx, s)
      if not ok then return nil, err end
      return unpack(r, 1, r.n)
    end
  end
  local function fails(s, err) return function(ctx) context.sleep(ctx, s); return nil, err end end
  local function statuses(g)
    local s = {}
    for i, r in ipairs(g:results()) do s[i] = r.status end
    return s
  end

  it("an options table takes the limit; no policy is fail_fast", function()
    vt()
    local g, gctx = context.group(bg, { limit = 2 })
    local running, peak = 0, 0
    for _ = 1, 5 do
      g:go(function(ctx)
        running = running + 1
        peak = math.max(peak, running)
        context.sleep(ctx, 0.002)
        running = running - 1
      end)
    end
    assert.is_nil(g:wait())
    assert.are.equal(2, peak)
    assert.are.equal(0.006, now(), "three rounds of two")
    local g2, gctx2 = context.group(bg, {})
    g2:go(function() return nil, "down" end)
    g2:go(after(5, "late"))
    assert.are.equal("down", g2:wait())
    assert.are.equal(0.006, now(), "the late member was not cancelled at once")
    assert.are.equal("down", gctx2:cause())
    h.is(gctx:cause(), C, "cause without failure")
    assert.are.same({ "failed", "canceled" }, statuses(g2))
  end)

  it("fail_fast, named, is the errgroup", function()
    local g, gctx = context.group(bg, { policy = "fail_fast" })
    local boom = { "boom" }
    vt()
    g:go(after(5, "never"))
    g:go(fails(0.001, boom))
    h.is(g:wait(), boom, "wait's result")
    assert.are.equal(0.001, now(), "the sleeper was not cancelled at the failure")
    h.is(gctx:cause(), boom, "cause")
    assert.is_false(g:go(function() end))
  end)

  describe("supervise", function()
    it("a failure cancels nothing: its siblings finish, g:go still starts", function()
      local g, gctx = context.group(bg, { policy = "supervise" })
      local boom = { "boom" }
      vt()
      g:go(after(0.03, "slow"))
      g:go(fails(0.001, boom))
      g:go(function(ctx)
        context.sleep(ctx, 0.01) -- after the failure
        assert(ctx:err() == nil, "gctx was cancelled by a failure")
        return "late", g:go(after(0.001, "started after the failure"))
      end)
      h.is(g:wait(), boom, "wait: the first failure")
      assert.are.equal(0.03, now(), "wait returned before the slow member ended")
      h.is(gctx:cause(), C, "wait cancels gctx with no failure as cause")
      local r = g:results()
      assert.are.same({ "ok", "failed", "ok", "ok" }, statuses(g))
      assert.are.same({ n = 1, "slow" }, r[1].values)
      h.is(r[2].err, boom, "the failure")
      assert.are.same({ n = 2, "late", true }, r[3].values)
      assert.are.same({ n = 1, "started after the failure" }, r[4].values)
      local errs = g:errors()
      assert.are.equal(1, #errs)
    end)

    it("wait returns nil when every member succeeds", function()
      vt()
      local g = context.group(bg, { policy = "supervise" })
      for i = 1, 3 do g:go(after(0.001 * i, i)) end
      assert.is_nil(g:wait())
      assert.are.equal(0.003, now())
      assert.are.same({ "ok", "ok", "ok" }, statuses(g))
    end)

    it("with a limit, the members after a failure still run, one at a time", function()
      vt()
      local g = context.group(bg, { policy = "supervise", limit = 1 })
      local running, peak, ran = 0, 0, {}
      for i = 1, 4 do
        assert.is_true(g:go(function(ctx)
          running = running + 1
          peak = math.max(peak, running)
          context.sleep(ctx, 0.002)
          running = running - 1
          ran[#ran + 1] = i
          if i % 2 == 1 then error("odd " .. i) end
        end))
      end
      assert.matches("odd 1", g:wait())
      assert.are.equal(0.008, now(), "one at a time")
      assert.are.equal(1, peak)
      assert.are.same({ 1, 2, 3, 4 }, ran)
      assert.are.same({ "failed", "ok", "failed", "ok" }, statuses(g))
      assert.are.equal(2, #g:errors())
    end)
  end)

  describe("any", function()
    it("the first success wins: wait gives nil and its values, the rest are cancelled", function()
      vt()
      local g, gctx = context.group(bg, { policy = "any" })
      g:go(after(5, "slow"))
      g:go(after(0.002, "fast", nil, 3)) -- a nil among the values is kept
      g:go(function(ctx) ctx:done(); ctx:check() end)
      local r = pack(g:wait())
      assert.are.equal(0.002, now(), "the losers were not cancelled at the win")
      assert.are.same({ n = 4, nil, "fast", nil, 3 }, r)
      h.is(gctx:cause(), context.group_done, "cause")
      assert.are.equal("group: done", tostring(context.group_done))
      assert.are.same({ "canceled", "ok", "canceled" }, statuses(g))
      assert.are.same({ n = 3, "fast", nil, 3 }, g:results()[2].values)
      h.is(g:results()[1].err, C, "a loser's err")
      local ok, first = g:go(function() end)
      assert.is_false(ok, "g:go after the winner")
      assert.is_nil(first)
    end)

    it("failures before the winner decide nothing", function()
      vt()
      local g, gctx = context.group(bg, { policy = "any" })
      g:go(fails(0.001, "a"))
      g:go(function() error("b") end)
      g:go(after(0.01, "c"))
      local err, v = g:wait()
      assert.are.equal(0.01, now(), "decided before the winner")
      assert.is_nil(err)
      assert.are.equal("c", v)
      h.is(gctx:cause(), context.group_done)
      assert.are.same({ "failed", "failed", "ok" }, statuses(g))
      assert.are.equal(2, #g:errors())
    end)

    it("when every member fails, wait returns the first failure", function()
      local g, gctx = context.group(bg, { policy = "any" })
      local a, b = { "a" }, { "b" }
      vt()
      g:go(fails(0.01, b))
      g:go(fails(0.001, a))
      local r = pack(g:wait())
      assert.are.equal(0.01, now(), "decided before the last member failed")
      assert.are.equal(1, r.n)
      h.is(r[1], a, "wait's result")
      h.is(gctx:cause(), a, "cause")
    end)

    it("with no member it fails with context.group_short", function()
      local g, gctx = context.group(bg, { policy = "any" })
      h.is(g:wait(), context.group_short)
      h.is(gctx:cause(), context.group_short)
      assert.are.equal("group: too few members to succeed", tostring(context.group_short))
    end)

    it("with a limit, a starter waiting for a slot gives up once a member won", function()
      vt()
      local g = context.group(bg, { policy = "any", limit = 1 })
      local started = 0
      local r = {}
      for i = 1, 3 do
        r[i] = g:go(function(ctx)
          started = started + 1
          return after(0.002, i)(ctx)
        end)
      end
      assert.are.same({ true, false, false }, r)
      assert.are.equal(0.002, now(), "the starters gave up when the first member won")
      assert.are.equal(1, started)
      local err, v = g:wait()
      assert.is_nil(err)
      assert.are.equal(1, v)
    end)
  end)

  describe("quorum", function()
    it("k successes decide: the rest are cancelled, wait returns nil", function()
      vt()
      local g, gctx = context.group(bg, { quorum = 2 }) -- quorum alone: policy quorum
      g:go(after(5, "slow"))
      g:go(after(0.001, "a"))
      g:go(fails(0.002, "x"))
      g:go(after(0.004, "b"))
      g:go(after(5, "slow"))
      assert.are.same({ n = 1 }, pack(g:wait())) -- nil, and nothing after it
      assert.are.equal(0.004, now(), "the rest were not cancelled at the second success")
      h.is(gctx:cause(), context.group_done)
      assert.are.same({ "canceled", "ok", "failed", "ok", "canceled" }, statuses(g))
      assert.is_false(g:go(function() end))
    end)

    it("fails fast once the members left cannot reach k", function()
      local g, gctx = context.group(bg, { policy = "quorum", quorum = 3 })
      local a = { "a" }
      vt()
      g:go(after(0.001, "ok"))
      g:go(fails(0.002, a))
      g:go(fails(0.004, "b"))
      g:go(after(5, "slow")) -- cannot make 3 alone: cancelled
      h.is(g:wait(), a, "wait: the first failure")
      -- at 0.002 one ok, one failed, two running: 3 can still be made; at
      -- 0.004 it cannot
      assert.are.equal(0.004, now(), "not decided when k became out of reach")
      h.is(gctx:cause(), a, "cause")
      assert.are.same({ "ok", "failed", "failed", "canceled" }, statuses(g))
    end)

    it("before wait(), failures are only recorded: more members may come", function()
      vt()
      local g = context.group(bg, { quorum = 2 })
      g:go(fails(0, "early"))
      g:go(fails(0, "early too"))
      context.sleep(bg, 0.005) -- both failed; nothing is decided
      assert.are.equal(0, g:running())
      assert.is_true(g:go(after(0.001, "a")))
      assert.is_true(g:go(after(0.002, "b")))
      assert.is_nil(g:wait())
      assert.are.equal(0.007, now())
      assert.are.same({ "failed", "failed", "ok", "ok" }, statuses(g))
    end)

    it("fewer members than k, none failed: context.group_short, at once", function()
      vt()
      local g = context.group(bg, { quorum = 3 })
      g:go(after(5, "a"))
      g:go(after(5, "b"))
      h.is(g:wait(), context.group_short)
      assert.are.equal(0, now(), "the members were not cancelled at once")
      assert.are.same({ "canceled", "canceled" }, statuses(g))
    end)

    it("with a limit, never more than limit at once, and stops at k", function()
      vt()
      local g = context.group(bg, { quorum = 2, limit = 2 })
      local running, peak, started = 0, 0, 0
      local r = {}
      for i = 1, 6 do
        r[i] = g:go(function(ctx)
          started = started + 1
          running = running + 1
          peak = math.max(peak, running)
          local ok, err = context.sleep(ctx, 0.002 * i)
          running = running - 1
          if not ok then return nil, err end
          return i
        end)
      end
      assert.is_nil(g:wait())
      assert.are.equal(2, peak)
      -- 1 and 2 start; 1 ends at 0.002 and 3 takes its slot; 2 ends at
      -- 0.004: two successes, the quorum; 3 is cancelled, 4 to 6 never start
      assert.are.equal(0.004, now())
      assert.are.equal(3, started, "members started after the quorum was met")
      assert.are.same({ true, true, true, false, false, false }, r)
    end)
  end)

  describe("g:results()", function()
    it("lists every member in start order, however they finish", function()
      vt()
      local g = context.group(bg, { policy = "supervise" })
      local obj = {}
      g:go(after(0.01, "third"))
      g:go(function() error("raised") end)
      g:go(function() error(obj) end)
      g:go(after(0.001))
      assert.are.equal("running", g:results()[1].status)
      assert.matches("raised", g:wait()) -- the first to fail
      assert.are.equal(0.01, now())
      local r = g:results()
      assert.are.same({ "ok", "failed", "failed", "ok" }, statuses(g))
      assert.are.same({ n = 1, "third" }, r[1].values)
      assert.are.same({ n = 0 }, r[4].values)
      assert.matches("raised", r[2].err)
      assert.matches("stack traceback:", r[2].traceback)
      h.is(r[3].err, obj, "a raised table, itself")
      assert.matches("stack traceback:", r[3].traceback)
      assert.is_nil(r[1].err)
      assert.is_nil(r[1].traceback)
      -- fresh tables: changing them changes nothing
      r[1].values[1] = "changed"
      assert.are.equal("third", g:results()[1].values[1])
    end)

    it("a member ended from outside shows as failed", function()
      if B.libev and not coroutine.close then
        pending("nothing ends a task's coroutine from outside before Lua 5.4")
        return
      end
      local g = context.group(bg, { policy = "supervise" })
      local co
      g:go(function() co = coroutine.running(); bg:with_cancel():done() end)
      context.sleep(bg, 0.01)
      if B.ngx then ngx.thread.kill(co) else coroutine.close(co) end
      local r = g:results()
      assert.are.equal("failed", r[1].status)
      assert.is_not_nil(r[1].err)
      g:wait()
      co = nil
      collectgarbage()
      collectgarbage()
      B.run()
    end)

    -- the group's parent reaches its deadline: what finished is kept, what
    -- did not shows how it ended (canceled, with the deadline as its err)
    for _, p in ipairs { { "fail_fast" }, { "supervise" }, { "quorum", 3 } } do
      it(p[1] .. ": partial results when the parent's deadline ends the group", function()
        vt()
        local parent, cancel = context.with_timeout(bg, 0.05)
        local g = context.group(parent, { policy = p[1], quorum = p[2] })
        g:go(after(0.001, "fast"))
        g:go(after(5, "slow"))
        g:go(after(0.002, "fast too"))
        g:go(function(ctx) ctx:done(); ctx:check() end)
        h.is(g:wait(), DE, "wait's result")
        assert.are.equal(0.05, now(), "the deadline did not end the members at its time")
        local r = g:results()
        assert.are.same({ "ok", "canceled", "ok", "canceled" }, statuses(g))
        assert.are.same({ n = 1, "fast" }, r[1].values)
        assert.are.same({ n = 1, "fast too" }, r[3].values)
        h.is(r[2].err, DE, "the slow member's err")
        h.is(r[4].err, DE, "ctx:check()'s sentinel")
        cancel()
      end)
    end

    it("any: no winner before the parent's deadline: the first failure, the rest canceled", function()
      vt()
      local parent, cancel = context.with_timeout(bg, 0.05)
      local g = context.group(parent, { policy = "any" })
      g:go(after(5, "slow"))
      g:go(fails(0.001, "no"))
      g:go(after(5, "slow too"))
      assert.are.equal("no", g:wait())
      assert.are.equal(0.05, now(), "the deadline did not end the members at its time")
      assert.are.same({ "canceled", "failed", "canceled" }, statuses(g))
      h.is(g:results()[1].err, DE, "a canceled member's err")
      cancel()
    end)

    it("results = false keeps no outcome; wait still gives the winner", function()
      vt()
      local g = context.group(bg, { policy = "any", results = false })
      g:go(after(0.001, "w"))
      local err, v = g:wait()
      assert.are.equal(0.001, now())
      assert.is_nil(err)
      assert.are.equal("w", v)
      local ok, msg = pcall(g.results, g)
      assert.is_false(ok)
      assert.matches("results = false", msg)
    end)
  end)

  it("g:cancel stops the group: gctx is cancelled, g:go starts nothing", function()
    vt()
    local g, gctx = context.group(bg, { policy = "supervise" })
    g:go(after(5, "slow"))
    g:cancel("enough")
    assert.are.equal("enough", gctx:cause())
    local ok = g:go(function() end)
    assert.is_false(ok)
    -- the member's nil, ctx:err() is the first failure, as a canceled one
    h.is(g:wait(), C, "wait's result")
    assert.are.equal(0, now(), "the member was not cancelled at once")
    assert.are.same({ "canceled" }, statuses(g))
  end)

  it("tostring names the policy and the state", function()
    vt()
    local g = context.group(bg, { quorum = 1 })
    g:go(after(0.001))
    assert.matches("^context%.group %(quorum, 1 running%)$", tostring(g))
    g:wait()
    assert.matches("^context%.group %(quorum, 0 running, done%)$", tostring(g))
    local f = context.group(bg)
    f:go(function() return nil, "x" end)
    f:wait()
    assert.matches("^context%.group %(0 running, failed%)$", tostring(f))
  end)

  it("names bad options", function()
    local function msg(opts, fname)
      local m = h.argerr(fname and 3 or 2, fname or "group", function()
        if fname then context.group_scope(bg, function() end, opts) else context.group(bg, opts) end
      end)
      return m
    end
    assert.matches("unknown option 'polcy'; did you mean 'policy'%?", msg { polcy = "any" })
    assert.matches("unknown option 'limt'; did you mean 'limit'%?", msg { limt = 2 })
    assert.matches([[option 'policy': "fail_fast", "supervise", "any" or "quorum" expected, got "first"]],
      msg { policy = "first" })
    assert.matches("option 'limit' must be >= 1", msg { limit = 0 })
    assert.matches("option 'limit' must be an integer", msg { limit = 2.5 })
    assert.matches("option 'limit': number expected, got string", msg { limit = "2" })
    assert.matches("option 'quorum' must be >= 1", msg { quorum = 0 })
    assert.matches("option 'quorum' must be an integer", msg { quorum = 1.5 })
    assert.matches("option 'quorum': number is not finite", msg { quorum = math.huge })
    assert.matches("needs option 'quorum'", msg { policy = "quorum" })
    assert.matches([[option 'quorum' goes with policy "quorum", not "any"]], msg { policy = "any", quorum = 1 })
    assert.matches("option 'results': boolean expected, got string", msg { results = "no" })
    assert.matches("number or options table expected, got string", msg("2"))
    assert.matches("number or options table expected, got boolean", msg(true, "group_scope"))
    assert.matches("unknown option 'polcy'", msg({ polcy = "any" }, "group_scope"))
    -- the number form is unchanged
    assert.matches("limit must be a positive integer", msg(0))
  end)
end)

describe("context.group_scope", function()
  it("runs fn(g, gctx), then waits for every member; returns what wait returns", function()
    local done = {}
    local seen
    vt()
    local r = pack(context.group_scope(bg, function(g, gctx)
      seen = gctx
      g:go(function(ctx) context.sleep(ctx, 0.005); done[#done + 1] = { 1, now() } end)
      g:go(function(ctx) context.sleep(ctx, 0.001); done[#done + 1] = { 2, now() } end)
      return "ignored"
    end))
    assert.are.same({ n = 1 }, r)
    assert.are.same({ { 2, 0.001 }, { 1, 0.005 } }, done)
    assert.are.equal(0.005, now())
    h.is(seen:err(), context.canceled, "gctx after the scope")
  end)

  it("takes the options of context.group, and is a method of contexts", function()
    vt()
    local err, v = bg:group_scope(function(g)
      g:go(function(ctx) context.sleep(ctx, 5) end)
      g:go(function() return "winner" end)
    end, { policy = "any" })
    assert.is_nil(err)
    assert.are.equal("winner", v)
    assert.are.equal(0, now(), "the sleeper was not cancelled at once")
    assert.are.equal("down", context.group_scope(bg, function(g)
      g:go(function() return nil, "down" end)
    end, 1))
  end)

  it("when fn raises: cancels the members with the error, waits for them, raises it again", function()
    local obj = { "fn failed" }
    local ended = {}
    vt()
    local ok, err = pcall(context.group_scope, bg, function(g)
      g:go(function(ctx)
        context.sleep(ctx, 5) -- cut short by the raise
        context.sleep(bg, 0.002) -- cleanup that takes a while: still waited for
        ended[#ended + 1] = ctx:cause()
        ended.at = now()
      end)
      context.sleep(bg, 0.001)
      error(obj)
    end)
    assert.is_false(ok)
    h.is(err, obj, "the same error")
    assert.are.equal(1, #ended, "the member outlived the scope")
    assert.are.equal(0.003, ended.at, "cut short at the raise, then the cleanup")
    assert.are.equal(0.003, now(), "the scope returned before its member ended")
    h.is(ended[1], obj, "the member's cause")
  end)

  it("names bad arguments", function()
    h.argerr(1, "group_scope", function() context.group_scope(nil, function() end) end)
    h.argerr(2, "group_scope", function() context.group_scope(bg, 42) end)
    h.argerr(3, "group_scope", function() context.group_scope(bg, function() end, 0) end)
  end)
end)

describe("context.group in a spawned task", function()
  it("cancelling the task cancels the group; wait still waits for every member", function()
    local member_done = false
    vt()
    local t = context.spawn(bg, function()
      local g, gctx = context.group(bg)
      g:go(function(ctx)
        ctx:done()
        context.sleep(bg, 0.005) -- a cleanup that does not look at ctx
        member_done = true
        return nil, ctx:cause()
      end)
      local err = g:wait()
      return member_done, err, gctx:cause()
    end)
    context.sleep(bg, 0.002)
    t:cancel("stop")
    local done, err, cause = t:wait()
    assert.is_true(done, "wait returned before its member ended")
    assert.are.equal(0.007, now(), "cancelled at 0.002, then the member's cleanup")
    assert.are.equal("stop", err)
    assert.are.equal("stop", cause)
  end)

  it("g:go waiting for a slot gives up when the task is cancelled", function()
    vt()
    local t = context.spawn(bg, function(tctx)
      local g = context.group(bg, 1)
      g:go(function(ctx) context.sleep(ctx, 5) end)
      local r = { g:go(function() end) }
      g:cancel()
      g:wait()
      return r[1], r[2], tctx:err()
    end)
    context.sleep(bg, 0.002)
    t:cancel()
    local ok, err, terr = t:wait()
    assert.are.equal(0.002, now(), "g:go did not give up at the cancel")
    assert.is_false(ok)
    h.is(err, context.canceled, "g:go's second result")
    h.is(terr, context.canceled)
  end)
end)
