local context = require "lcontext"
local h = require "spec.helpers"

-- README, "Deriving": context.merge(a, b, ...) -> ctx, cancel.

local bg = context.background()
local DE = context.deadline_exceeded

describe("context.merge", function()
  it("is running while all inputs run, in both call forms", function()
    local a, b = context.with_cancel(bg), context.with_cancel(bg)
    local m1, c1 = context.merge(a, b)
    local m2, c2 = a:merge(b)
    for _, m in ipairs { m1, m2 } do
      assert.is_nil(m:err())
      assert.is_false(m:is_done())
      assert.is_nil(m:cause())
      assert.is_nil(context.origin(m))
    end
    assert.is_not_nil(c1)
    assert.is_not_nil(c2)
  end)

  for _, n in ipairs { 2, 3, 8 } do
    for which = 1, n do
      it(("of %d inputs is done when input #%d is cancelled, with its err and cause"):format(n, which), function()
        local inputs, cancels = {}, {}
        for i = 1, n do inputs[i], cancels[i] = context.with_cancel_cause(bg) end
        local m = context.merge(table.unpack(inputs))
        local child = context.with_cancel(m)
        assert.is_nil(m:err())
        local cause = { "cause of input", which }
        cancels[which](cause)
        h.is(m:err(), context.canceled, "err()")
        assert.is_true(m:is_done())
        h.is(m:cause(), cause, "cause()")
        h.is(child:err(), context.canceled, "child err()")
        h.is(child:cause(), cause, "child cause()")
        h.is(context.origin(m), inputs[which], "origin()")
        -- the other inputs are untouched, and cancelling them changes nothing
        for i = 1, n do
          if i ~= which then
            assert.is_nil(inputs[i]:err())
            cancels[i]("other")
          end
        end
        h.is(m:cause(), cause, "cause() after the other inputs' cancels")
        h.is(context.origin(m), inputs[which], "origin() after the other inputs' cancels")
      end)
    end
  end

  it("is done when an ancestor of an input is cancelled", function()
    local root, rcancel = context.with_cancel_cause(bg)
    local a = context.with_value(context.with_cancel(root), "k", 1)
    local m = context.merge(bg, a)
    rcancel("root")
    h.is(m:err(), context.canceled)
    h.is(m:cause(), "root")
    h.is(context.origin(m), root, "origin()")
  end)

  it("is done when an input's deadline passes, with no loop running", function()
    local a = context.with_cancel(bg)
    local t = context.with_timeout(bg, 0.03, "too slow")
    local m = context.merge(a, t)
    local child = context.with_cancel(m)
    h.sleep(0.06)
    h.is(child:err(), DE, "child err()")
    h.is(m:err(), DE, "err()")
    h.is(m:cause(), "too slow", "cause()")
    h.is(context.origin(m), t, "origin()")
    assert.is_nil(a:err())
  end)

  it("made from an input that is already done is done at once", function()
    for pos = 1, 3 do
      local done, cancel = context.with_cancel_cause(bg)
      cancel("early")
      local inputs = { (context.with_cancel(bg)), (context.with_cancel(bg)), (context.with_cancel(bg)) }
      inputs[pos] = done
      local m = context.merge(table.unpack(inputs))
      h.is(m:err(), context.canceled, "err() with the done input at #" .. pos)
      h.is(m:cause(), "early", "cause() with the done input at #" .. pos)
      h.is(context.origin(m), done, "origin()")
      local expired = context.with_timeout(bg, 0)
      local m2 = context.merge(bg, expired)
      h.is(m2:err(), DE, "merge with an expired input")
    end
  end)

  it("its own cancel does not cancel the inputs", function()
    local a, b = context.with_cancel(bg), context.with_timeout(bg, 3600)
    local m, cancel = context.merge(a, b)
    local child = context.with_cancel(m)
    cancel()
    h.is(m:err(), context.canceled)
    h.is(m:cause(), context.canceled)
    h.is(context.origin(m), m, "origin()")
    h.is(child:err(), context.canceled)
    assert.is_nil(a:err())
    assert.is_nil(b:err())
    assert.has_no.errors(function() cancel() end)
  end)

  -- "supports <close> on its cancel": spec/close_54_spec.lua (Lua 5.4 only)

  it("keeps its err once done, whatever the inputs do later", function()
    local a, ca = context.with_cancel_cause(bg)
    local start = h.now()
    local t = context.with_timeout(bg, 0.05)
    local m, cancel = context.merge(a, t)
    cancel()
    if not h.within(start, 0.05) then return end -- stalled past the deadline: nothing to test
    h.sleep(0.07)
    ca("later")
    h.is(m:err(), context.canceled)
    h.is(m:cause(), context.canceled)
    h.is(context.origin(m), m)
  end)

  it("works when one input is the ancestor of another, or repeated", function()
    local a, ca = context.with_cancel(bg)
    local b = context.with_cancel(a)
    local m1 = context.merge(a, b)
    local m2 = context.merge(b, a)
    local m3 = context.merge(a, a)
    ca()
    for _, m in ipairs { m1, m2, m3 } do
      h.is(m:err(), context.canceled)
      h.is(context.origin(m), a)
    end
  end)

  it("is not ended through a without_cancel input", function()
    local p, cancel = context.with_cancel(bg)
    local m = context.merge(context.without_cancel(p), bg)
    cancel()
    assert.is_nil(m:err())
  end)

  it("of merges is done when a deep input is cancelled", function()
    local a, ca = context.with_cancel_cause(bg)
    local m = context.merge((context.merge(bg, (context.merge(context.todo(), a)))), bg)
    ca("deep")
    h.is(m:err(), context.canceled)
    h.is(m:cause(), "deep")
  end)

  describe("deadline()", function()
    it("is the earliest of the inputs'", function()
      local far = context.with_timeout(bg, 100)
      local near = context.with_timeout(bg, 10)
      for _, m in ipairs {
        (context.merge(far, near)), (context.merge(near, far)), (context.merge(bg, near)),
        (context.merge(near, bg)), (context.merge(bg, far, context.todo(), near)),
      } do
        h.near(m:deadline(), near:deadline(), 1e-6, "deadline()")
        local r = m:remaining()
        assert.is_true(r > 9 and r <= 10 + 1e-3, "remaining() = " .. tostring(r))
      end
      local d = os.time() + 50.5
      h.near(context.merge(context.with_deadline(bg, d), far):deadline(), d, 1e-6, "with_deadline input")
    end)

    it("is the earliest of the inputs' even when an input is already done", function()
      local done, cancel = context.with_cancel(bg)
      cancel()
      local timed = context.with_timeout(bg, 100)
      local d = timed:deadline()
      h.near(context.merge(timed, done):deadline(), d, 1e-6, "merge(timed, done)")
      h.near(context.merge(done, timed):deadline(), d, 1e-6, "merge(done, timed)")
      h.near(context.merge(bg, done, timed):deadline(), d, 1e-6, "merge(bg, done, timed)")
    end)

    it("is nil when no input has one", function()
      local m = context.merge(bg, context.todo(), (context.with_cancel(bg)),
        context.without_cancel((context.with_timeout(bg, 10))))
      assert.is_nil(m:deadline())
      assert.is_nil(m:remaining())
    end)
  end)

  describe("value()", function()
    local k = context.key("k")
    it("searches the inputs in order", function()
      local a = context.with_value(bg, k, "a")
      local b = context.with_value(bg, k, "b")
      local c = context.with_value(bg, "other", "c")
      assert.are.equal("a", context.merge(a, b):value(k))
      assert.are.equal("b", context.merge(b, a):value(k))
      assert.are.equal("a", context.merge(c, a, b):value(k))
      assert.are.equal("b", b:merge(c, a):value(k))
      assert.are.equal("c", context.merge(a, b, c):value("other"))
      assert.is_nil(context.merge(a, b, c):value("missing"))
      assert.is_nil(context.merge(bg, context.todo()):value(k))
    end)

    it("prefers values set on the merge's own descendants", function()
      local a = context.with_value(bg, k, "a")
      local m = context.merge(a, bg)
      local mv = context.with_value(m, k, "mine")
      assert.are.equal("mine", mv:value(k))
      assert.are.equal("a", context.with_cancel(m):value(k))
    end)

    it("searches each input's whole chain", function()
      local a = context.with_cancel(context.with_value(context.with_cancel(bg), "deep", 1))
      local b = context.with_value(bg, "shallow", 2)
      local m = context.merge(b, a)
      assert.are.equal(1, m:value("deep"))
      assert.are.equal(2, m:value("shallow"))
    end)
  end)
end)
