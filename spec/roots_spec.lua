local context = require "lcontext"
local h = require "spec.helpers"

-- README, "Roots": context.background() and context.todo().

describe("roots", function()
  local roots = {
    { name = "background", make = function() return context.background() end,
      str = "context.Background" },
    { name = "todo", make = function() return context.todo() end,
      str = "context.TODO" },
  }

  it("background() returns the same object on every call", function()
    local a, b = context.background(), context.background()
    assert.is_not_nil(a)
    h.is(b, a, "second background()")
    for _ = 1, 100 do context.with_cancel(context.background()) end
    collectgarbage()
    h.is(context.background(), a, "background() after children and a GC")
  end)

  it("todo() is a distinct root from background()", function()
    local t = context.todo()
    assert.is_not_nil(t)
    assert.is_false(rawequal(t, context.background()))
    -- "like background": also a singleton
    h.is(context.todo(), t, "second todo()")
  end)

  for _, r in ipairs(roots) do
    describe(r.name .. "()", function()
      it("prints as " .. r.str, function()
        assert.are.equal(r.str, tostring(r.make()))
      end)

      it("is never done", function()
        local ctx = r.make()
        assert.is_nil(ctx:err())
        assert.is_false(ctx:is_done())
        assert.is_nil(ctx:cause())
        assert.is_nil(context.cause(ctx))
        assert.is_nil(context.origin(ctx))
        h.is(ctx:check(), ctx, "check() on a root")
      end)

      it("has no deadline", function()
        local ctx = r.make()
        assert.is_nil(ctx:deadline())
        assert.is_nil(ctx:remaining())
      end)

      it("has no values", function()
        local ctx = r.make()
        for _, k in ipairs { "x", 1, 2.5, true, false, {}, context.key("x"), print } do
          assert.is_nil(ctx:value(k))
        end
      end)

      it("stays running when children are cancelled or expire", function()
        local ctx = r.make()
        local c1, cancel1 = context.with_cancel(ctx)
        local c2, cancel2 = context.with_cancel_cause(ctx)
        local c3 = context.with_timeout(ctx, 0)
        local c4 = context.with_deadline(ctx, os.time() - 100)
        cancel1()
        cancel2("why")
        assert.is_not_nil(c1:err())
        assert.is_not_nil(c2:err())
        assert.is_not_nil(c3:err())
        assert.is_not_nil(c4:err())
        assert.is_nil(ctx:err())
        assert.is_false(ctx:is_done())
        assert.is_nil(ctx:cause())
        assert.is_nil(r.make():err())
      end)
    end)
  end
end)
