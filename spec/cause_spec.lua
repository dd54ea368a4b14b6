local context = require "lcontext"
local h = require "spec.helpers"

-- with_cancel_cause / with_timeout(…, cause) / with_deadline(…, cause) and
-- ctx:cause() / context.cause(ctx) (README, "Deriving" and "Asking").

local bg = context.background()
local DE = context.deadline_exceeded

local function cause_is(ctx, expected, what)
  what = what or "ctx"
  h.is(ctx:cause(), expected, what .. ":cause()")
  h.is(context.cause(ctx), expected, "context.cause(" .. what .. ")")
end

describe("cause", function()
  it("is nil while running", function()
    for _, ctx in ipairs {
      bg, (context.with_cancel(bg)), (context.with_cancel_cause(bg)),
      (context.with_timeout(bg, 3600, "c")), (context.with_deadline(bg, os.time() + 3600, "c")),
      context.with_value(bg, 1, 2), (context.merge(bg, context.todo())), context.without_cancel(bg),
    } do
      cause_is(ctx, nil, tostring(ctx))
    end
  end)

  it("is err() when none was given", function()
    local a, ca = context.with_cancel(bg)
    ca()
    cause_is(a, context.canceled, "with_cancel")
    local b, cb = context.with_cancel_cause(bg)
    cb()
    cause_is(b, context.canceled, "with_cancel_cause + cancel()")
    local c, cc = context.with_cancel_cause(bg)
    cc(nil)
    cause_is(c, context.canceled, "with_cancel_cause + cancel(nil)")
    cause_is(context.with_timeout(bg, 0), DE, "with_timeout(0)")
  end)

  describe("with_cancel_cause", function()
    local values = {
      { "a string", "shutting down" },
      { "a number", 42 },
      { "false", false },
      { "a table", setmetatable({}, { __tostring = function() return "my error" end }) },
      { "a function", print },
      { "the canceled sentinel", context.canceled },
      { "the deadline_exceeded sentinel", DE },
    }
    for _, v in ipairs(values) do
      it("records " .. v[1] .. " as cause, err() stays canceled", function()
        local ctx, cancel = context.with_cancel_cause(bg)
        cancel(v[2])
        h.is(ctx:err(), context.canceled, "err()")
        cause_is(ctx, v[2])
        h.is(ctx:is_done(), true, "is_done()")
      end)
    end

    it("works in method form", function()
      local ctx, cancel = bg:with_cancel_cause()
      cancel("m")
      cause_is(ctx, "m")
    end)

    it("gives all descendants the same cause object", function()
      local ctx, cancel = context.with_cancel_cause(bg)
      local kids = {
        (context.with_cancel(ctx)), (context.with_cancel_cause(ctx)), (context.with_timeout(ctx, 3600)),
        context.with_value(ctx, "k", 1), (context.merge(bg, ctx)),
        (context.with_cancel(context.with_value(context.with_cancel(ctx), "k", 2))),
      }
      local cause = {}
      cancel(cause)
      for i, k in ipairs(kids) do
        h.is(k:err(), context.canceled, "child " .. i .. " err()")
        cause_is(k, cause, "child " .. i)
      end
    end)

    it("is fixed by the first cancel", function()
      local ctx, cancel = context.with_cancel_cause(bg)
      local child = context.with_cancel(ctx)
      cancel("first")
      cancel("second")
      cancel()
      cause_is(ctx, "first")
      cause_is(child, "first", "child")
    end)

    it("a cancel(cause) after the parent ended it changes nothing", function()
      local p, pcancel = context.with_cancel_cause(bg)
      local ctx, cancel = context.with_cancel_cause(p)
      pcancel("parent")
      cancel("mine")
      cause_is(ctx, "parent")
      h.is(context.origin(ctx), p, "origin")
    end)

    it("a child made after cancel(cause) inherits the cause", function()
      local p, pcancel = context.with_cancel_cause(bg)
      local t = {}
      pcancel(t)
      local a = context.with_cancel(p)
      local b = context.with_timeout(p, 3600, "own")
      local c = context.with_value(p, 1, 1)
      for _, x in ipairs { a, b, c } do
        h.is(x:err(), context.canceled)
        cause_is(x, t)
      end
    end)

    it("a child's own cancel(cause) does not reach the parent", function()
      local p = context.with_cancel_cause(bg)
      local c, cancel = context.with_cancel_cause(p)
      cancel("child")
      cause_is(p, nil, "parent")
      cause_is(c, "child", "child")
    end)
  end)

  describe("with_timeout(parent, s, cause)", function()
    it("reports the cause after expiry, err() is deadline_exceeded", function()
      local cause = { "slow backend" }
      local start = h.now()
      local ctx = context.with_timeout(bg, 0.03, cause)
      local child = context.with_cancel(ctx)
      local early = ctx:cause()
      if h.within(start, 0.03) then h.is(early, nil, "cause() before expiry") end
      h.sleep(0.06)
      h.is(ctx:err(), DE, "err()")
      cause_is(ctx, cause)
      h.is(child:err(), DE, "child err()")
      cause_is(child, cause, "child")
    end)

    it("works in method form", function()
      local ctx = bg:with_timeout(0, "m")
      h.is(ctx:err(), DE)
      cause_is(ctx, "m")
    end)

    it("with a timeout <= 0 reports the cause at once", function()
      for _, s in ipairs { 0, -5 } do
        local cause = {}
        local ctx = context.with_timeout(bg, s, cause)
        h.is(ctx:err(), DE, "err()")
        cause_is(ctx, cause)
      end
    end)

    it("without a cause reports deadline_exceeded", function()
      local ctx = context.with_timeout(bg, 0.02)
      h.sleep(0.04)
      cause_is(ctx, DE)
    end)

    it("its cancel() before expiry gives canceled, not the timeout cause", function()
      local ctx, cancel = context.with_timeout(bg, 3600, "timeout cause")
      cancel()
      h.is(ctx:err(), context.canceled)
      cause_is(ctx, context.canceled)
    end)
  end)

  describe("with_deadline(parent, d, cause)", function()
    it("reports the cause for a past deadline", function()
      local ctx = context.with_deadline(bg, os.time() - 1, "too late")
      h.is(ctx:err(), DE)
      cause_is(ctx, "too late")
      cause_is(bg:with_deadline(os.time() - 1, "m"), "m", "method form")
    end)

    it("reports the cause after expiry", function()
      local ctx = context.with_deadline(bg, h.now() + 0.03, "late")
      h.sleep(0.06)
      h.is(ctx:err(), DE)
      cause_is(ctx, "late")
    end)
  end)

  it("without_cancel has no cause even when its parent has one", function()
    local p, cancel = context.with_cancel_cause(bg)
    local w = context.without_cancel(p)
    cancel("x")
    cause_is(w, nil, "without_cancel")
  end)
end)
