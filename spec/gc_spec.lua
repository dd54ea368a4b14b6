local context = require "lcontext"
local h = require "spec.helpers"

-- README, "A tour for Go programmers": a context that nobody references and
-- nobody waits on is reclaimed by the garbage collector even when cancel was
-- never called (its timer goes with it); plus the anchoring that the opposite needs: whatever
-- is still referenced keeps working after a full GC.
--
-- Objects under test are made inside helper functions so that no dead stack
-- slot of the test function keeps them alive.

local bg = context.background()

local function collected(weak, what)
  h.full_gc()
  for k, v in pairs(weak) do
    error(("%s: %s (%s) was not collected"):format(what or "object", tostring(k), tostring(v)), 2)
  end
end

describe("garbage collection", function()
  it("reclaims a dropped with_cancel child of a live cancellable parent", function()
    local parent, pcancel = context.with_cancel(bg)
    local weak = h.weak()
    local function make()
      local c, cancel = context.with_cancel(parent)
      weak.ctx, weak.cancel = c, cancel
    end
    make()
    collected(weak, "child")
    assert.is_nil(parent:err())
    pcancel() -- must not touch the reclaimed child
    h.is(parent:err(), context.canceled)
  end)

  it("reclaims every kind of dropped child of a live parent", function()
    local parent, pcancel = context.with_cancel_cause(bg)
    local weak = h.weak()
    local function make()
      weak.a, weak.ac = context.with_cancel(parent)
      weak.b, weak.bc = context.with_cancel_cause(parent)
      weak.c, weak.cc = context.with_timeout(parent, 3600)
      weak.d, weak.dc = context.with_deadline(parent, os.time() + 3600)
      weak.e = context.with_value(parent, "k", {})
      weak.f = context.without_cancel(parent)
      weak.g, weak.gc = context.merge(parent, bg)
      weak.h, weak.hc = context.merge(bg, parent)
      weak.key = context.key("dropped")
    end
    make()
    collected(weak, "child")
    pcancel("after")
    h.is(parent:cause(), "after")
  end)

  it("reclaims a dropped with_timeout(bg, 3600) and its timer", function()
    local weak = h.weak()
    local function make()
      -- locals first: a weak table may lose them at any GC step
      local ctx, cancel = context.with_timeout(bg, 3600)
      local ctx2, cancel2 = context.with_deadline(bg, os.time() + 3600)
      -- a timer that has been asked about, and a child that waits on its parent's
      ctx:err(); ctx:remaining()
      local child = context.with_cancel(ctx2)
      weak.ctx, weak.cancel, weak.ctx2, weak.cancel2, weak.child =
        ctx, cancel, ctx2, cancel2, child
    end
    make()
    collected(weak, "timed context")
  end)

  it("reclaims a dropped cancelled or expired context", function()
    local weak = h.weak()
    local function make()
      local c, cancel = context.with_cancel(bg)
      cancel()
      weak.c, weak.cancel = c, cancel
      local t = context.with_timeout(bg, 0)
      weak.t, weak.child = t, context.with_cancel(t)
    end
    make()
    collected(weak, "done context")
  end)

  it("reclaims a dropped merge whose inputs are alive", function()
    local a, acancel = context.with_cancel(bg)
    local b = context.with_timeout(bg, 3600)
    local weak = h.weak()
    local function make()
      local m, mc = context.merge(a, b)
      weak.m, weak.mc, weak.child = m, mc, context.with_cancel(m)
    end
    make()
    collected(weak, "merge")
    acancel()
    assert.is_nil(b:err())
  end)

  it("does not cancel a context whose cancel object was collected", function()
    local weak = h.weak()
    local function make()
      local c, cancel = context.with_cancel(bg)
      weak.cancel = cancel
      return c
    end
    local ctx = make()
    local child = context.with_cancel(ctx)
    h.full_gc()
    assert.is_nil(ctx:err())
    assert.is_nil(child:err())
  end)

  it("keeps a child working after its parent context is dropped", function()
    local k = context.key("k")
    local function make()
      local p, pcancel = context.with_cancel(context.with_value(bg, k, { tag = "parent value" }))
      local c, cancel = context.with_cancel(p)
      return c, cancel, pcancel
    end
    local c, cancel, pcancel = make()
    h.full_gc()
    assert.is_nil(c:err())
    assert.are.equal("parent value", c:value(k).tag)
    cancel()
    h.is(c:err(), context.canceled)
    h.is(context.origin(c), c, "origin")
    pcancel()
    h.is(context.origin(c), c, "origin after the parent's cancel")
  end)

  it("lets a kept cancel object of a dropped parent cancel a live child", function()
    local function make()
      local p, pcancel = context.with_cancel_cause(bg)
      local c = context.with_value(context.with_cancel(p), "k", "v")
      return c, pcancel
    end
    local c, pcancel = make()
    h.full_gc()
    assert.is_nil(c:err())
    local cause = { tag = "cause" }
    pcancel(cause)
    h.is(c:err(), context.canceled)
    h.is(c:cause(), cause)
    local o = context.origin(c)
    assert.is_not_nil(o)
    assert.is_false(rawequal(o, c))
    assert.is_true(tostring(o):find("^context%.Background%.WithCancel") ~= nil, tostring(o))
    h.full_gc()
    assert.are.equal("v", c:value("k"))
    h.is(c:cause(), cause, "cause after another GC")
  end)

  it("a kept cancel object of a dropped, childless context still works", function()
    local function make()
      local _, cancel = context.with_timeout(bg, 3600)
      local _, cancel2 = context.with_cancel_cause(bg)
      return cancel, cancel2
    end
    local cancel, cancel2 = make()
    h.full_gc()
    assert.has_no.errors(function() cancel(); cancel2("x"); cancel() end)
  end)

  it("keeps merge inputs alive for the merge's values and cancellation", function()
    local function make()
      local a, acancel = context.with_cancel_cause(context.with_value(bg, "ka", { tag = "a" }))
      local b = context.with_value(context.with_timeout(bg, 3600), "kb", { tag = "b" })
      local m = context.merge(a, b)
      return m, acancel
    end
    local m, acancel = make()
    h.full_gc()
    assert.are.equal("a", m:value("ka").tag)
    assert.are.equal("b", m:value("kb").tag)
    assert.is_not_nil(m:deadline())
    assert.is_nil(m:err())
    acancel({ tag = "input cause" })
    h.is(m:err(), context.canceled)
    h.full_gc()
    assert.are.equal("input cause", m:cause().tag)
  end)

  it("keeps values and causes that only the context references", function()
    local function make()
      local ctx, cancel = context.with_cancel_cause(context.with_value(bg, "k", { tag = "value" }))
      cancel({ tag = "cause" })
      local t = context.with_timeout(bg, 0, { tag = "timeout cause" })
      return ctx, t
    end
    local ctx, t = make()
    h.full_gc()
    assert.are.equal("value", ctx:value("k").tag)
    assert.are.equal("cause", ctx:cause().tag)
    assert.are.equal("timeout cause", t:cause().tag)
  end)

  it("keeps a timer's cause until it fires", function()
    local function make()
      return (context.with_timeout(bg, 0.02, { tag = "late" }))
    end
    local t = make()
    h.full_gc()
    h.sleep(0.04)
    h.full_gc()
    h.is(t:err(), context.deadline_exceeded)
    assert.are.equal("late", t:cause().tag)
  end)

  it("survives cancelling a root after many children were collected", function()
    local root, cancel = context.with_cancel(bg)
    local function churn()
      for i = 1, 20000 do
        local c = context.with_cancel(root)
        if i % 3 == 0 then context.with_timeout(c, 3600) end
        if i % 5 == 0 then context.merge(c, bg) end
      end
    end
    churn()
    local keep = {}
    for i = 1, 100 do keep[i] = context.with_cancel(root) end
    h.full_gc()
    churn()
    collectgarbage("step", 0)
    cancel()
    for i = 1, 100 do h.is(keep[i]:err(), context.canceled, "kept child " .. i) end
    h.full_gc()
  end)

  it("memory does not grow with churn of dropped children", function()
    local root = context.with_cancel(bg)
    local function churn()
      for _ = 1, 20000 do
        local c = context.with_timeout(root, 3600)
        context.with_value(context.with_cancel(c), "k", "v")
      end
    end
    -- warm-up: the tables the churn uses may grow for good first (under
    -- Lua 5.3, after some earlier specs, one of them doubles (512 KB) during
    -- the second and third rounds, then stays: a size, not a leak)
    -- A table's doubling is a step that comes once (which round depends on
    -- the specs run before: the weak map of value contexts, sized by its
    -- history); a leak grows every round (40,000 contexts: megabytes). So
    -- the least growth of two measured rounds must stay small.
    churn(); churn(); churn()
    local least = math.huge
    for _ = 1, 2 do
      h.full_gc()
      local base = collectgarbage("count")
      churn(); churn()
      h.full_gc()
      least = math.min(least, collectgarbage("count") - base)
    end
    assert.is_true(least < 512, ("heap grew by %.0f KB in each of two rounds"):format(least))
  end)

  it("cancels the leaf of a 100,000-deep chain (no stack overflow)", function()
    local root, cancel = context.with_cancel_cause(context.with_value(bg, "root", "r"))
    local leaf = root
    for _ = 1, 100000 do leaf = context.with_cancel(leaf) end
    assert.is_nil(leaf:err())
    assert.are.equal("r", leaf:value("root"))
    h.full_gc()
    cancel("deep")
    h.is(leaf:err(), context.canceled)
    h.is(leaf:cause(), "deep")
    h.is(context.origin(leaf), root)
  end)

  it("expires the leaf of a 100,000-deep chain under a timeout (no loop)", function()
    local root = context.with_timeout(bg, 0.05)
    local leaf = root
    for _ = 1, 100000 do leaf = context.with_cancel(leaf) end
    h.sleep(0.06)
    h.is(leaf:err(), context.deadline_exceeded)
    h.is(context.origin(leaf), root)
  end)

  it("collects a dropped 100,000-deep chain", function()
    local weak = h.weak()
    local function make()
      local leaf = bg
      for _ = 1, 100000 do leaf = context.with_cancel(leaf) end
      weak.leaf = leaf
    end
    make()
    collected(weak, "deep chain")
  end)

  it("cancels all 100,000 children of a root", function()
    local root, cancel = context.with_cancel(bg)
    local kids = {}
    for i = 1, 100000 do kids[i] = context.with_cancel(root) end
    cancel()
    for i = 1, 100000 do
      if kids[i]:err() ~= context.canceled then error("child " .. i .. " not cancelled") end
    end
  end)
end)
