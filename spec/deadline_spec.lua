local context = require "lcontext"
local h = require "spec.helpers"

-- Deadlines and timeouts, with NO loop running. Every wait here is a plain
-- sleep (LuaSocket) or a busy wait: a passed deadline is noticed by err()
-- even when no loop runs (README, "A tour for Go programmers").

local bg = context.background()
local DE = context.deadline_exceeded

describe("deadline()", function()
  it("of with_deadline(bg, d) is d, in epoch seconds", function()
    for _, d in ipairs { os.time() + 100.25, h.now() + 5.123456, os.time() + 86400 * 365 } do
      h.near(context.with_deadline(bg, d):deadline(), d, 1e-6, "function form")
      h.near(bg:with_deadline(d):deadline(), d, 1e-6, "method form")
    end
  end)

  it("must be an epoch time: one before 2000 (a monotonic context.now() + n) is refused", function()
    for _, d in ipairs { context.now() + 1, 0, -5, 946684799.5 } do
      local ok, msg = pcall(context.with_deadline, bg, d)
      assert.is_false(ok, "with_deadline(bg, " .. d .. ") accepted")
      assert.is_true(h.names_arg(msg, 2, "with_deadline"), tostring(msg))
      assert.is_truthy(tostring(msg):find("context.time()", 1, true), tostring(msg))
      ok = pcall(function() return bg:with_deadline(d, "cause") end)
      assert.is_false(ok, "method form")
    end
    -- 2000-01-01 itself is an epoch time: a deadline long past
    h.is(context.with_deadline(bg, 946684800):err(), DE, "2000-01-01")
  end)

  it("of with_timeout(bg, 10) is about os.time() + 10", function()
    local before = h.now()
    local ctx = context.with_timeout(bg, 10)
    local after = h.now()
    local d = ctx:deadline()
    assert.is_number(d)
    assert.is_true(math.abs(d - (os.time() + 10)) <= 2, "deadline " .. d .. " vs os.time()+10")
    assert.is_true(d >= before + 10 - 0.05 and d <= after + 10 + 0.05,
      string.format("deadline %.6f outside [%.6f, %.6f] (+-50ms)", d, before + 10, after + 10))
    h.near(bg:with_timeout(10):deadline(), os.time() + 10, 2, "method form")
  end)

  it("remaining() of with_timeout(bg, 10) is within (9, 10]", function()
    -- 1 ms of slack above for a deadline rounded up to the timer resolution;
    -- below, no more than the time the test took
    local start = h.now()
    h.remaining_near(context.with_timeout(bg, 10), 10, start)
    h.remaining_near(context.with_timeout(bg, 0.5), 0.5, start)
  end)

  it("remaining() only goes down", function()
    local ctx = context.with_timeout(bg, 5)
    local r1 = ctx:remaining()
    h.sleep(0.02)
    local r2 = ctx:remaining()
    assert.is_true(r2 < r1, ("%s then %s"):format(r1, r2))
    assert.is_true(r1 - r2 >= 0.02 - 1e-3, ("%s then %s"):format(r1, r2))
  end)

  it("is inherited by with_cancel, with_cancel_cause and with_value children", function()
    local p = context.with_deadline(bg, os.time() + 60.5)
    for _, c in ipairs {
      (context.with_cancel(p)), (context.with_cancel_cause(p)), context.with_value(p, 1, 2),
      (context.with_cancel(context.with_value(context.with_cancel(p), 1, 2))),
    } do
      h.near(c:deadline(), p:deadline(), 1e-6, "child deadline()")
      local r = c:remaining()
      assert.is_true(r > 59 and r <= 60.5 + 1e-3, "remaining " .. tostring(r))
    end
  end)

  it("an earlier child deadline is the child's own", function()
    local p = context.with_timeout(bg, 3600)
    local c = context.with_timeout(p, 10)
    h.near(c:deadline(), h.now() + 10, 0.25, "child deadline()")
    assert.is_true(c:deadline() < p:deadline())
    local d = os.time() + 20.75
    h.near(context.with_deadline(p, d):deadline(), d, 1e-6, "with_deadline child")
  end)

  it("a later child deadline is ignored: deadline() reports the parent's", function()
    local p = context.with_timeout(bg, 30)
    for _, c in ipairs {
      (context.with_timeout(p, 3600)),
      (p:with_timeout(60)),
      (context.with_deadline(p, os.time() + 3600)),
      (p:with_deadline(p:deadline() + 0.5)),
    } do
      h.near(c:deadline(), p:deadline(), 1e-6, "child deadline()")
      local pr = p:remaining() -- (the parent's first: time only shrinks the child's)
      assert.is_true(c:remaining() <= pr + 1e-3)
    end
  end)
end)

describe("a deadline with no loop running", function()
  it("makes err() deadline_exceeded once it passes, and remaining() <= 0", function()
    local start = h.now()
    local ctx = context.with_timeout(bg, 0.05)
    local e, r = ctx:err(), ctx:remaining()
    if h.within(start, 0.05) then
      assert.is_nil(e)
      assert.is_true(r > 0)
    end
    h.sleep(0.1)
    h.is(ctx:err(), DE, "err()")
    assert.is_true(ctx:is_done())
    assert.is_true(ctx:remaining() <= 0, "remaining() = " .. tostring(ctx:remaining()))
    h.is(ctx:cause(), DE, "cause()")
    h.is(context.origin(ctx), ctx, "origin()")
  end)

  it("with_deadline(bg, now + 50ms) expires the same way", function()
    local start = h.now()
    local ctx = context.with_deadline(bg, start + 0.05)
    local e = ctx:err()
    if h.within(start, 0.05) then assert.is_nil(e) end
    h.sleep(0.1)
    h.is(ctx:err(), DE, "err()")
    assert.is_true(ctx:remaining() <= 0)
  end)

  it("ends the children made before it expired, with the same err (children asked first)", function()
    local start = h.now()
    local t = context.with_timeout(bg, 0.05)
    local kids = {
      { "with_cancel", (context.with_cancel(t)) },
      { "with_cancel_cause", (context.with_cancel_cause(t)) },
      { "with_timeout(3600)", (context.with_timeout(t, 3600)) },
      { "with_value", context.with_value(t, "k", 1) },
      { "merge", (context.merge(bg, t)) },
      { "grandchild", (context.with_cancel(context.with_value(context.with_cancel(t), "k", 2))) },
    }
    local orphan = context.without_cancel(t)
    local errs = {}
    for i, k in ipairs(kids) do errs[i] = k[2]:err() end
    if h.within(start, 0.05) then
      for i, k in ipairs(kids) do assert.is_nil(errs[i], k[1]) end
    end
    h.sleep(0.1)
    for _, k in ipairs(kids) do
      h.is(k[2]:err(), DE, k[1] .. " err()")
      h.is(k[2]:cause(), DE, k[1] .. " cause()")
      h.is(context.origin(k[2]), t, k[1] .. " origin()")
      assert.is_true(k[2]:remaining() <= 0, k[1] .. " remaining()")
    end
    h.is(t:err(), DE, "parent err()")
    h.is(context.origin(t), t, "parent origin()")
    assert.is_nil(orphan:err())
  end)

  -- Each observer, asked first, must notice the passed deadline by itself.
  local observers = {
    { "is_done()", function(ctx) assert.is_true(ctx:is_done()) end },
    { "cause()", function(ctx) h.is(ctx:cause(), DE, "cause()") end },
    { "context.cause()", function(ctx) h.is(context.cause(ctx), DE, "context.cause()") end },
    { "check()", function(ctx)
        local ok, e = pcall(ctx.check, ctx)
        assert.is_false(ok)
        h.is(e, DE, "raised")
      end },
    { "context.origin()", function(ctx) assert.is_not_nil(context.origin(ctx)) end },
    { "a child's err()", function(_, child) h.is(child:err(), DE, "child err()") end },
    { "deriving a new child", function(ctx)
        local c = context.with_cancel(ctx)
        h.is(c:err(), DE, "new child err()")
        h.is(c:cause(), DE, "new child cause()")
        h.is(context.origin(c), context.origin(ctx), "new child origin()")
      end },
  }
  for _, o in ipairs(observers) do
    it("is noticed when " .. o[1] .. " is the first to ask", function()
      local parent = context.with_timeout(bg, 0.02)
      local ctx = context.with_value(context.with_cancel(parent), "k", 1)
      local child = context.with_cancel(ctx)
      h.sleep(0.04)
      o[2](ctx, child)
      h.is(ctx:err(), DE, "err()")
      h.is(child:err(), DE, "child err()")
      h.is(context.origin(ctx), parent, "origin()")
    end)
  end

  it("never fires early: err() stays nil until remaining() <= 0", function()
    for _, timeout in ipairs { 0.03, 0.06 } do
      local start = h.now()
      local ctx = context.with_timeout(bg, timeout)
      local fired_at
      local i = 0
      while h.now() - start < timeout + 2 do
        i = i + 1
        if i % 2 == 0 then
          local e = ctx:err()
          local t = h.now()
          local r = ctx:remaining()
          if e ~= nil then
            h.is(e, DE, "err()")
            assert.is_true(r <= 0, "err() was set while remaining() = " .. r)
            fired_at = t
            break
          end
        else
          local r = ctx:remaining()
          local e = ctx:err()
          if r <= 0 then
            h.is(e, DE, "err() right after remaining() = " .. r)
            fired_at = h.now()
            break
          end
          -- (r > 0 says nothing about the later err(): time moved on)
        end
      end
      assert.is_not_nil(fired_at, "never expired")
      assert.is_true(fired_at - start >= timeout - 1e-3,
        ("expired after %.6f s, timeout %.3f s"):format(fired_at - start, timeout))
    end
  end)

  it("a with_deadline deadline never fires before the wall-clock time", function()
    local d = h.now() + 0.04
    local ctx = context.with_deadline(bg, d)
    while true do
      local e = ctx:err()
      local t = h.now()
      if e ~= nil then
        assert.is_true(t >= d - 1e-3, ("fired %.6f s early"):format(d - t))
        break
      end
      assert.is_true(t < d + 2, "never expired")
    end
  end)

  it("ends a child whose own later deadline was ignored, with the parent", function()
    local p = context.with_timeout(bg, 0.03)
    local c = context.with_timeout(p, 3600, "child's cause")
    local d = context.with_deadline(p, os.time() + 3600)
    h.sleep(0.06)
    h.is(c:err(), DE, "child err()")
    h.is(c:cause(), DE, "child cause() is the parent's")
    h.is(context.origin(c), p, "child origin()")
    h.is(d:err(), DE, "with_deadline child err()")
  end)

  it("a child's own earlier timeout ends it, not the parent", function()
    local p, pcancel = context.with_cancel(bg)
    local c = context.with_timeout(p, 0.02)
    h.sleep(0.04)
    h.is(c:err(), DE, "child err()")
    h.is(context.origin(c), c, "child origin()")
    assert.is_nil(p:err())
    pcancel()
    h.is(c:err(), DE, "child err() after the parent's cancel")
    h.is(c:cause(), DE, "child cause() after the parent's cancel")
    h.is(context.origin(c), c, "child origin() after the parent's cancel")
  end)

  it("a child cancelled before the deadline stays canceled", function()
    local start = h.now()
    local t = context.with_timeout(bg, 0.1)
    local c, cancel = context.with_cancel(t)
    cancel()
    if not h.within(start, 0.1) then return end -- stalled past the deadline: nothing to test
    h.sleep(0.12)
    h.is(t:err(), DE, "parent err()")
    h.is(c:err(), context.canceled, "child err()")
    h.is(c:cause(), context.canceled, "child cause()")
    h.is(context.origin(c), c, "child origin()")
  end)

  -- Go's timer would have fired before these cancels: the outcome must not
  -- depend on whether anybody looked at err() in between.
  it("cancel() after an unobserved expiry leaves deadline_exceeded", function()
    local t, cancel = context.with_timeout(bg, 0.02)
    local c, ccancel = context.with_cancel_cause(t)
    h.sleep(0.04)
    ccancel("late")
    cancel()
    h.is(t:err(), DE, "err()")
    h.is(t:cause(), DE, "cause()")
    h.is(c:err(), DE, "child err()")
    h.is(c:cause(), DE, "child cause()")
    h.is(context.origin(c), t, "child origin()")
  end)

  it("a parent's cancel after a child's unobserved expiry leaves deadline_exceeded", function()
    local r, rcancel = context.with_cancel_cause(bg)
    local t = context.with_timeout(r, 0.02)
    local c = context.with_cancel(t)
    h.sleep(0.04)
    rcancel("root")
    h.is(r:err(), context.canceled, "root err()")
    h.is(t:err(), DE, "timed child err()")
    h.is(c:err(), DE, "grandchild err()")
    h.is(c:cause(), DE, "grandchild cause()")
    h.is(context.origin(c), t, "grandchild origin()")
  end)

  it("is_done() never blocks", function()
    local ctxs = {
      bg, context.todo(), (context.with_timeout(bg, 3600)), (context.with_cancel(bg)),
      (context.with_deadline(bg, os.time() + 3600)),
    }
    local start = h.now()
    for _ = 1, 2000 do
      for _, c in ipairs(ctxs) do assert(c:is_done() == false) end
    end
    -- (a call that blocked would wait for an hour; 10 s is room for a
    -- loaded machine or valgrind)
    assert.is_true(h.now() - start < 10, "10,000 is_done() calls took " .. (h.now() - start) .. " s")
  end)
end)
