local context = require "lcontext"
local h = require "spec.helpers"

-- README, "Asking": ctx:check() and context.origin(ctx).

local bg = context.background()
local C, DE = context.canceled, context.deadline_exceeded

local function raises(ctx, sentinel, what)
  local ok, e = pcall(ctx.check, ctx)
  if ok then error((what or "check()") .. " did not raise", 2) end
  h.is(e, sentinel, what or "check() raised")
end

describe("ctx:check()", function()
  it("returns ctx while running", function()
    for _, ctx in ipairs {
      bg, context.todo(), (context.with_cancel(bg)), (context.with_cancel_cause(bg)),
      (context.with_timeout(bg, 3600)), (context.with_deadline(bg, os.time() + 3600)),
      context.with_value(bg, "k", 1), (context.merge(bg, context.todo())), context.without_cancel(bg),
    } do
      h.is(ctx:check(), ctx, tostring(ctx) .. ":check()")
      h.is(ctx:check():check(), ctx, "chained check()")
    end
  end)

  it("raises canceled itself once cancelled", function()
    local ctx, cancel = context.with_cancel(bg)
    cancel()
    assert.is_true(select(2, pcall(ctx.check, ctx)) == context.canceled)
    raises(ctx, C)
    local ok, e = pcall(function() ctx:check() end)
    assert.is_false(ok)
    h.is(e, C, "method call inside pcall")
  end)

  it("raises the sentinel, not the cause", function()
    local ctx, cancel = context.with_cancel_cause(bg)
    cancel("the cause")
    raises(ctx, C)
    raises(context.with_timeout(bg, 0, "the cause"), DE, "expired with a cause")
  end)

  it("raises deadline_exceeded once the deadline passed, with no loop running", function()
    local start = h.now()
    local ctx = context.with_timeout(bg, 0.02)
    local child = context.with_value(ctx, "k", 1)
    local ok, r = pcall(ctx.check, ctx)
    if h.within(start, 0.02) then
      assert.is_true(ok)
      h.is(r, ctx, "before the deadline")
    end
    h.sleep(0.04)
    raises(child, DE, "child check()")
    raises(ctx, DE)
  end)

  it("raises in descendants of a cancelled context", function()
    local p, cancel = context.with_cancel(bg)
    local c = context.with_cancel(context.with_value(p, "k", 1))
    cancel()
    raises(c, C)
    local w = context.without_cancel(p)
    h.is(w:check(), w, "without_cancel check()")
  end)

  it("works as a checkpoint in a long loop", function()
    local ctx, cancel = context.with_cancel(bg)
    local reached = 0
    local ok, e = pcall(function()
      for i = 1, 1000 do
        ctx:check()
        reached = i
        if i == 50 then cancel() end
      end
    end)
    assert.is_false(ok)
    h.is(e, C, "raised")
    assert.are.equal(50, reached)
  end)
end)

describe("context.origin(ctx)", function()
  it("is nil while running", function()
    for _, ctx in ipairs {
      bg, context.todo(), (context.with_cancel(bg)), (context.with_timeout(bg, 3600)),
      context.with_value(bg, 1, 1), (context.merge(bg, context.todo())), context.without_cancel(bg),
    } do
      assert.is_nil(context.origin(ctx))
    end
  end)

  it("is ctx itself when its own cancel ended it", function()
    for _, mk in ipairs {
      function() return context.with_cancel(bg) end,
      function() return context.with_cancel_cause(bg) end,
      function() return context.with_timeout(bg, 3600) end,
      function() return context.with_deadline(bg, os.time() + 3600) end,
      function() return context.merge(bg, context.todo()) end,
    } do
      local ctx, cancel = mk()
      cancel()
      h.is(context.origin(ctx), ctx, tostring(ctx))
    end
  end)

  it("is ctx itself when its own timer ended it", function()
    local a = context.with_timeout(bg, 0)
    h.is(context.origin(a), a, "timeout 0")
    local b = context.with_deadline(bg, os.time() - 60)
    h.is(context.origin(b), b, "past deadline")
    local p = context.with_timeout(bg, 3600)
    local c = context.with_timeout(p, 0.02)
    h.sleep(0.04)
    h.is(context.origin(c), c, "own timer under a longer-lived parent")
    assert.is_nil(context.origin(p))
  end)

  it("is the ancestor when the end was inherited from its cancel", function()
    local g, cancel = context.with_cancel(bg)
    local p = context.with_value(context.with_cancel(g), "k", 1)
    local c = context.with_cancel(p)
    cancel()
    h.is(context.origin(g), g, "origin(ancestor)")
    h.is(context.origin(p), g, "origin(child)")
    h.is(context.origin(c), g, "origin(grandchild)")
  end)

  it("is the parent when the parent's timeout fired", function()
    local parent = context.with_timeout(bg, 0.02)
    local child = context.with_cancel(parent)
    h.sleep(0.04)
    h.is(context.origin(child), parent, "origin(child)")
    h.is(context.origin(parent), parent, "origin(parent)")
  end)

  it("is the original ancestor for a child made after the end", function()
    local g, cancel = context.with_cancel(bg)
    local p = context.with_cancel(g)
    cancel()
    local late = context.with_timeout(p, 3600)
    h.is(context.origin(late), g, "origin(late child)")
  end)

  it("does not change after later cancels", function()
    local g, gcancel = context.with_cancel(bg)
    local p, pcancel = context.with_cancel(g)
    local c, ccancel = context.with_cancel(p)
    pcancel()
    ccancel()
    gcancel()
    h.is(context.origin(c), p, "origin(c)")
    h.is(context.origin(p), p, "origin(p)")
    h.is(context.origin(g), g, "origin(g)")
  end)

  it("is nil for without_cancel of a done context", function()
    local p, cancel = context.with_cancel(bg)
    cancel()
    assert.is_nil(context.origin(context.without_cancel(p)))
  end)
end)
