local context = require "lcontext"
local h = require "spec.helpers"

-- README, "Deriving": deriving contexts, cancellation and the Go rules.

local bg = context.background()

-- Every kind of context that comes with its own cancel.
local kinds = {
  { name = "with_cancel",
    fn = function(p) return context.with_cancel(p) end,
    method = function(p) return p:with_cancel() end },
  { name = "with_cancel_cause",
    fn = function(p) return context.with_cancel_cause(p) end,
    method = function(p) return p:with_cancel_cause() end },
  { name = "with_timeout",
    fn = function(p) return context.with_timeout(p, 3600) end,
    method = function(p) return p:with_timeout(3600) end },
  { name = "with_deadline",
    fn = function(p) return context.with_deadline(p, os.time() + 3600) end,
    method = function(p) return p:with_deadline(os.time() + 3600) end },
  { name = "merge",
    fn = function(p) return context.merge(p, context.todo()) end,
    method = function(p) return p:merge(context.todo()) end },
}

-- Every way of making a child, for "descendant" checks. Returns the child;
-- `cancellable` says whether it inherits cancellation.
local children = {
  { name = "with_cancel", cancellable = true,
    make = function(p) return (context.with_cancel(p)) end },
  { name = "with_cancel_cause", cancellable = true,
    make = function(p) return (context.with_cancel_cause(p)) end },
  { name = "with_timeout", cancellable = true,
    make = function(p) return (context.with_timeout(p, 3600)) end },
  { name = "with_deadline", cancellable = true,
    make = function(p) return (context.with_deadline(p, os.time() + 3600)) end },
  { name = "with_value", cancellable = true,
    make = function(p) return (context.with_value(p, "k", "v")) end },
  { name = "merge (first input)", cancellable = true,
    make = function(p) return (context.merge(p, bg)) end },
  { name = "merge (second input)", cancellable = true,
    make = function(p) return (context.merge(bg, p)) end },
  { name = "without_cancel", cancellable = false,
    make = function(p) return (context.without_cancel(p)) end },
}

local function running(ctx, what)
  assert(ctx ~= nil, (what or "ctx") .. " is nil")
  if ctx:err() ~= nil then
    error((what or "ctx") .. " should be running, err() = " .. tostring(ctx:err()), 2)
  end
  assert(ctx:is_done() == false, (what or "ctx") .. ": is_done() should be false")
  assert(ctx:cause() == nil, (what or "ctx") .. ": cause() should be nil")
end

local function done_with(ctx, err, cause, what)
  what = what or "ctx"
  h.is(ctx:err(), err, what .. " err()")
  assert(ctx:is_done() == true, what .. ": is_done() should be true")
  h.is(ctx:cause(), cause, what .. " cause()")
  h.is(context.cause(ctx), cause, what .. " context.cause()")
end

describe("deriving", function()
  for _, kind in ipairs(kinds) do
    for _, form in ipairs { "fn", "method" } do
      describe(kind.name .. " (" .. (form == "fn" and "context." .. kind.name .. "(parent)"
          or "parent:" .. kind.name .. "()") .. ")", function()
        local make = kind[form]

        it("returns a running context and a cancel", function()
          local ctx, cancel = make(bg)
          running(ctx)
          assert.is_not_nil(cancel)
          assert.is_false(rawequal(ctx, bg))
          assert.is_nil(context.origin(ctx))
        end)

        it("cancel() makes it done with canceled, before it returns", function()
          local ctx, cancel = make(bg)
          cancel()
          done_with(ctx, context.canceled, context.canceled)
          h.is(context.origin(ctx), ctx, "origin")
        end)

        it("cancel is idempotent", function()
          local ctx, cancel = make(bg)
          cancel()
          assert.has_no.errors(function() cancel() end)
          assert.has_no.errors(function() cancel() end)
          done_with(ctx, context.canceled, context.canceled)
        end)

        it("cancelling it cancels every descendant at once, and nothing else", function()
          local parent, pcancel = context.with_cancel(bg)
          local ctx, cancel = make(parent)
          local sibling = context.with_cancel(parent)
          local kids, grandkids = {}, {}
          for i, c in ipairs(children) do
            kids[i] = c.make(ctx)
            grandkids[i] = context.with_cancel(kids[i])
          end
          local deep = ctx
          for _ = 1, 50 do deep = context.with_value(context.with_cancel(deep), "d", 1) end
          cancel()
          done_with(ctx, context.canceled, context.canceled)
          for i, c in ipairs(children) do
            if c.cancellable then
              done_with(kids[i], context.canceled, context.canceled, c.name .. " child")
              done_with(grandkids[i], context.canceled, context.canceled, c.name .. " grandchild")
              h.is(context.origin(kids[i]), ctx, c.name .. " child origin")
              h.is(context.origin(grandkids[i]), ctx, c.name .. " grandchild origin")
            else
              running(kids[i], c.name .. " child")
              running(grandkids[i], c.name .. " grandchild")
            end
          end
          done_with(deep, context.canceled, context.canceled, "depth-100 descendant")
          running(parent, "parent")
          running(sibling, "sibling")
          pcancel()
        end)

        it("is cancelled with its parent", function()
          local parent, pcancel = context.with_cancel_cause(bg)
          local ctx = make(parent)
          local cause = {}
          pcancel(cause)
          done_with(ctx, context.canceled, cause)
          h.is(context.origin(ctx), parent, "origin")
        end)

        it("made from a parent that is already done is done at once with its err and cause", function()
          local parent, pcancel = context.with_cancel_cause(bg)
          pcancel("parent's cause")
          local ctx, cancel = make(parent)
          done_with(ctx, context.canceled, "parent's cause")
          h.is(context.origin(ctx), parent, "origin")
          cancel()
          done_with(ctx, context.canceled, "parent's cause", "after its own cancel")
        end)

        it("stays done: a later cancel of the parent changes nothing", function()
          local parent, pcancel = context.with_cancel_cause(bg)
          local ctx, cancel = make(parent)
          cancel()
          pcancel("late")
          done_with(ctx, context.canceled, context.canceled)
          h.is(context.origin(ctx), ctx, "origin")
          done_with(parent, context.canceled, "late", "parent")
        end)

        it("cancel cannot be reached from ctx", function()
          local ctx, cancel = make(bg)
          assert.is_nil(ctx.cancel)
          assert.is_nil(ctx.Cancel)
          local mt = getmetatable(ctx)
          if type(mt) == "table" then
            assert.is_nil(rawget(mt, "__close"))
          end
          assert.is_false(rawequal(cancel, ctx))
          running(ctx)
          cancel()
        end)

        -- cancel as a <close> variable: spec/derive_54_spec.lua (Lua 5.4 only)

        it("cancel works from a coroutine", function()
          local ctx, cancel = make(bg)
          local co = coroutine.wrap(function() cancel(); coroutine.yield(ctx:err()) end)
          h.is(co(), context.canceled, "err() seen inside the coroutine")
          h.is(ctx:err(), context.canceled, "err()")
        end)

        it("cancel works from a __gc finaliser", function()
          local ctx, cancel = make(bg)
          local child = context.with_cancel(ctx)
          local ran = false
          local function arm()
            h.gc_object(function() cancel(); ran = true end)
          end
          arm()
          h.full_gc()
          assert.is_true(ran)
          done_with(ctx, context.canceled, context.canceled)
          done_with(child, context.canceled, context.canceled, "child")
        end)
      end)
    end
  end

  describe("with_value (context.with_value / parent:with_value)", function()
    it("returns a running context carrying the value", function()
      local a = context.with_value(bg, "k", 1)
      local b = bg:with_value("k", 2)
      running(a); running(b)
      assert.are.equal(1, a:value("k"))
      assert.are.equal(2, b:value("k"))
      assert.is_nil(bg:value("k"))
    end)

    it("is done with its parent, and carries the parent's err and cause", function()
      local p, cancel = context.with_cancel_cause(bg)
      local v = p:with_value("k", 1)
      local vv = context.with_value(v, "k2", 2)
      running(v)
      cancel("why")
      done_with(v, context.canceled, "why")
      done_with(vv, context.canceled, "why")
      h.is(context.origin(vv), p, "origin")
      assert.are.equal(1, vv:value("k"))
    end)

    it("made from a done parent is done at once", function()
      local p, cancel = context.with_cancel_cause(bg)
      cancel("why")
      done_with(context.with_value(p, "k", 1), context.canceled, "why")
      done_with(p:with_value("k", 1), context.canceled, "why")
    end)

    it("shares its parent's deadline", function()
      local p = context.with_deadline(bg, os.time() + 100.5)
      local v = p:with_value("k", 1)
      h.near(v:deadline(), p:deadline(), 1e-6, "deadline()")
    end)
  end)

  describe("without_cancel (context.without_cancel / parent:without_cancel)", function()
    it("keeps the parent's values but is never done and has no deadline", function()
      local p, cancel = context.with_cancel_cause(
        context.with_value(context.with_timeout(bg, 3600), "k", "v"))
      local a = context.without_cancel(p)
      local b = p:without_cancel()
      for _, w in ipairs { a, b } do
        assert.are.equal("v", w:value("k"))
        assert.is_nil(w:deadline())
        assert.is_nil(w:remaining())
      end
      cancel("gone")
      done_with(p, context.canceled, "gone", "parent")
      for _, w in ipairs { a, b } do
        running(w, "without_cancel")
        assert.is_nil(context.origin(w))
        assert.are.equal("v", w:value("k"))
      end
    end)

    it("is not ended by the parent's deadline", function()
      local p = context.with_timeout(bg, 0.02)
      local w = p:without_cancel()
      local c = context.with_cancel(w)
      h.sleep(0.04)
      h.is(p:err(), context.deadline_exceeded, "parent err()")
      running(w, "without_cancel")
      running(c, "its child")
      assert.is_nil(w:deadline())
      assert.is_nil(c:deadline())
    end)

    it("made from a done parent is running", function()
      local p, cancel = context.with_cancel(bg)
      cancel()
      local w = context.without_cancel(p)
      running(w)
      h.is(w:check(), w, "check()")
      -- and its own children can be cancelled independently
      local c, ccancel = context.with_cancel(w)
      running(c)
      ccancel()
      done_with(c, context.canceled, context.canceled)
    end)

    it("children made under it are not cancelled by its parent", function()
      local p, cancel = context.with_cancel(bg)
      local c = context.with_cancel(context.without_cancel(p))
      cancel()
      running(c)
    end)
  end)

  describe("a timeout of zero or less, or a deadline in the past", function()
    local cases = {
      { "with_timeout(bg, 0)", function() return context.with_timeout(bg, 0) end },
      { "with_timeout(bg, -1)", function() return context.with_timeout(bg, -1) end },
      { "with_timeout(bg, -1e-9)", function() return context.with_timeout(bg, -1e-9) end },
      { "bg:with_timeout(0)", function() return bg:with_timeout(0) end },
      { "with_deadline(bg, os.time() - 10)", function() return context.with_deadline(bg, os.time() - 10) end },
      { "with_deadline(bg, 2000-01-01)", function() return context.with_deadline(bg, 946684800) end },
      { "with_deadline(bg, now - 1ms)", function() return context.with_deadline(bg, h.now() - 0.001) end },
      { "bg:with_deadline(os.time() - 1)", function() return bg:with_deadline(os.time() - 1) end },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " is already done with deadline_exceeded", function()
        local ctx, cancel = c[2]()
        done_with(ctx, context.deadline_exceeded, context.deadline_exceeded)
        h.is(context.origin(ctx), ctx, "origin")
        assert.is_true(ctx:remaining() <= 0)
        local child = context.with_cancel(ctx)
        done_with(child, context.deadline_exceeded, context.deadline_exceeded, "child")
        cancel()
        done_with(ctx, context.deadline_exceeded, context.deadline_exceeded, "after cancel()")
      end)
    end

    it("under a parent that is already done, the parent's err wins", function()
      local p, cancel = context.with_cancel_cause(bg)
      cancel("parent")
      local a = context.with_timeout(p, 0, "own")
      local b = context.with_deadline(p, os.time() - 10, "own")
      done_with(a, context.canceled, "parent")
      done_with(b, context.canceled, "parent")
      h.is(context.origin(a), p, "origin")
    end)
  end)

  describe("the cancel object", function()
    it("only cancels its own context", function()
      local a, ca = context.with_cancel(bg)
      local b, cb = context.with_cancel(bg)
      ca()
      running(b)
      cb()
      h.is(a:err(), context.canceled)
      h.is(b:err(), context.canceled)
    end)

    it("of a child does not cancel the parent", function()
      local p, pc = context.with_cancel(bg)
      local c, cc = context.with_cancel(p)
      cc()
      running(p, "parent")
      h.is(c:err(), context.canceled)
      pc()
    end)

    it("keeps working after its context is unreachable", function()
      local cancel
      do
        local _
        _, cancel = context.with_cancel(bg)
      end
      h.full_gc()
      assert.has_no.errors(function() cancel(); cancel() end)
    end)
  end)

  describe("a cancel cascade", function()
    it("covers a wide and deep mixed tree with the same err and cause", function()
      local root, cancel = context.with_cancel_cause(bg)
      local all, frontier = {}, { root }
      for _ = 1, 4 do
        local next_frontier = {}
        for _, p in ipairs(frontier) do
          for _, c in ipairs(children) do
            if c.cancellable then
              local x = c.make(p)
              all[#all + 1] = x
              next_frontier[#next_frontier + 1] = x
            end
          end
        end
        frontier = next_frontier
        if #frontier > 500 then break end
      end
      for i, x in ipairs(all) do running(x, "node " .. i) end
      local cause = setmetatable({}, { __tostring = function() return "cause" end })
      cancel(cause)
      for i, x in ipairs(all) do
        done_with(x, context.canceled, cause, "node " .. i)
        h.is(context.origin(x), root, "node " .. i .. " origin")
      end
    end)
  end)
end)
