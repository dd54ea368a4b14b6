-- context.group (docs/resilience.md): Go's errgroup, plus g:go
-- returning false after the first failure, g:errors(), and Lua errors raised
-- in a task becoming its failure with a traceback.
--
-- Assertions run on the main thread (in nginx: the request's light thread;
-- an assertion raised in a task would only reach the error handler); every
-- test leaves the scheduler idle. Runs unchanged on lcontext.ngx
-- (spec/ngx/shared.sh): B.run() drains where context.run() is unavailable.
local context = require "lcontext"
local h = require "spec.helpers"
local B = require "spec.backend"

local bg = context.background()

-- no task error goes unnoticed; every test leaves the scheduler idle
local guard_start, guard_check = require("spec.sched_helpers").task_guard()
before_each(guard_start)
after_each(guard_check)

describe("context.group", function()
  it("runs fn(gctx, ...) in tasks; wait() returns nil when all succeed", function()
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
    table.sort(seen)
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
    g:go(function(ctx)
      local ok, err = context.sleep(ctx, 5) -- cut short by the failure
      saw = { ok, err }
      return nil, err
    end)
    g:go(function() context.sleep(bg, 0.002); return nil, boom end)
    local t0 = context.now()
    h.is(g:wait(), boom, "wait's result")
    assert.is_true(context.now() - t0 < 2, "the sleeper was not cancelled")
    h.is(gctx:err(), context.canceled, "gctx err")
    h.is(gctx:cause(), boom, "gctx cause")
    assert.are.same({ nil, context.canceled }, saw)
    local errs = g:errors()
    assert.are.equal(2, #errs)
    h.is(errs[1], boom, "first failure")
    h.is(errs[2], context.canceled, "second failure (the cancelled sibling)")
  end)

  it("g:errors() lists every failure in completion order", function()
    local g = context.group(bg)
    local a, b, c = { "a" }, { "b" }, { "c" }
    -- started in the order c, a, b; they finish in the order a, b, c
    g:go(function() context.sleep(bg, 0.15); return nil, c end)
    g:go(function() context.sleep(bg, 0.05); return nil, a end)
    g:go(function() context.sleep(bg, 0.1); return nil, b end)
    h.is(g:wait(), a, "first failure")
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
    local g = context.group(bg)
    local done = {}
    g:go(function(ctx)
      context.sleep(ctx, 0.001)
      g:go(function(ctx2)
        context.sleep(ctx2, 0.003)
        done[#done + 1] = "grandchild"
      end)
      done[#done + 1] = "child"
    end)
    assert.is_nil(g:wait())
    assert.are.same({ "child", "grandchild" }, done)
  end)

  it("parent cancellation reaches gctx; the tasks see it", function()
    local parent, cancel = context.with_cancel_cause(bg)
    local g, gctx = context.group(parent)
    g:go(function(ctx) return ctx:done() == nil or nil, ctx:err() end)
    local canceller = context.go(function() context.sleep(bg, 0.001); cancel("shutdown") end)
    h.is(g:wait(), context.canceled, "wait's result")
    assert.are.equal("shutdown", gctx:cause())
    canceller:wait()
  end)

  it("limit: never more than `limit` tasks at once; g:go suspends the caller", function()
    local g = context.group(bg, 2)
    local running, peak, order = 0, 0, {}
    local function job(ctx, i)
      running = running + 1
      peak = math.max(peak, running)
      context.sleep(ctx, 0.002)
      running = running - 1
      order[#order + 1] = i
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
  end)

  it("limit: g:go from a task suspends it too, and gives up when the group fails", function()
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
    assert.are.equal("second failed", g:wait())
  end)

  it("try_go never waits: false while the slots are full", function()
    local g = context.group(bg, 1)
    assert.is_true(g:try_go(function(ctx) context.sleep(ctx, 0.002) end))
    assert.is_false(g:try_go(function() end))
    assert.is_nil(g:wait())
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
