local context = require "lcontext"
local h = require "spec.helpers"

-- README, "Asking": tostring(ctx) in Go's style:
--   context.Background.WithCancel
--   context.Background.WithDeadline(<time> [<remaining>])
--   ….WithValue(<key>, <value>)

local bg, todo = context.background(), context.todo()

local function plain(s) return (s:gsub("%p", "%%%0")) end

-- "<prefix>.WithDeadline(<time> [<remaining>])" plus an optional tail
local function deadline_pattern(prefix, tail)
  return "^" .. plain(prefix) .. "%.WithDeadline%(([^%[%]]-%S) %[([^%[%]]+)%]%)" .. (tail and plain(tail) or "") .. "$"
end

describe("tostring(ctx)", function()
  it("of roots", function()
    assert.are.equal("context.Background", tostring(bg))
    assert.are.equal("context.TODO", tostring(todo))
  end)

  it("of with_cancel", function()
    assert.are.equal("context.Background.WithCancel", tostring((context.with_cancel(bg))))
    assert.are.equal("context.TODO.WithCancel", tostring((context.with_cancel(todo))))
    assert.are.equal("context.Background.WithCancel.WithCancel",
      tostring((context.with_cancel((context.with_cancel(bg))))))
    assert.are.equal("context.Background.WithCancel", tostring((bg:with_cancel())))
  end)

  it("of with_cancel_cause starts like Go's cancelCtx", function()
    local s = tostring((context.with_cancel_cause(bg)))
    assert.is_truthy(s:find("^context%.Background%.WithCancel"), s)
  end)

  it("does not change when the context is cancelled", function()
    local ctx, cancel = context.with_cancel(bg)
    cancel()
    assert.are.equal("context.Background.WithCancel", tostring(ctx))
  end)

  it("of with_timeout shows the deadline and the time remaining", function()
    local s = tostring((context.with_timeout(bg, 5)))
    local t, rem = s:match(deadline_pattern("context.Background"))
    assert.is_not_nil(t, s)
    assert.is_truthy(t:find("%d"), "time text: " .. s)
    assert.is_truthy(rem:find("%d"), "remaining text: " .. s)
    local s2 = tostring((context.with_timeout(todo, 5)))
    assert.is_truthy(s2:match(deadline_pattern("context.TODO")), s2)
  end)

  it("of with_deadline shows the deadline and the time remaining", function()
    local s = tostring((context.with_deadline(bg, os.time() + 3600)))
    assert.is_truthy(s:match(deadline_pattern("context.Background")), s)
    s = tostring((bg:with_deadline(os.time() + 60)))
    assert.is_truthy(s:match(deadline_pattern("context.Background")), s)
  end)

  it("of an expired deadline context keeps the form", function()
    local s = tostring((context.with_timeout(bg, 0)))
    assert.is_truthy(s:match(deadline_pattern("context.Background")), s)
    s = tostring((context.with_deadline(bg, os.time() - 3600)))
    assert.is_truthy(s:match(deadline_pattern("context.Background")), s)
  end)

  it("of with_value names the key and the value", function()
    local s = tostring(context.with_value(bg, "user_name", "alice"))
    assert.is_truthy(s:find("^context%.Background%.WithValue%("), s)
    assert.is_truthy(s:find("user_name", 1, true), s)
    assert.is_truthy(s:find("alice", 1, true), s)
    assert.is_truthy(s:find("%)$"), s)
    assert.is_truthy(s:find("user_name", 1, true) < s:find("alice", 1, true), s)
  end)

  it("of with_value with a key object shows the key's name", function()
    local s = tostring(context.with_value(bg, context.key("trace_id"), 12345))
    assert.is_truthy(s:find("^context%.Background%.WithValue%("), s)
    assert.is_truthy(s:find("trace_id", 1, true), s)
    assert.is_truthy(s:find("12345", 1, true), s)
  end)

  it("of chains", function()
    local c = context.with_cancel(bg)
    local v = context.with_value(c, "k", "v")
    local s = tostring(v)
    assert.is_truthy(s:find("^context%.Background%.WithCancel%.WithValue%("), s)
    local t = context.with_timeout(v, 5)
    local st = tostring(t)
    assert.is_truthy(st:find("^" .. plain(s) .. "%.WithDeadline%("), st)
    assert.is_truthy(st:match(deadline_pattern(s)), st)
    local cc = context.with_cancel(t)
    local sc = tostring(cc)
    assert.is_truthy(sc:match(deadline_pattern(s, ".WithCancel")), sc)
  end)

  it("never fails for unusual keys, values and kinds", function()
    local weird = setmetatable({}, { __tostring = function() return "weird" end })
    for _, ctx in ipairs {
      context.with_value(bg, {}, {}),
      context.with_value(bg, weird, weird),
      context.with_value(bg, 1.5, true),
      context.with_value(bg, print, coroutine.create(function() end)),
      context.with_value(bg, "k", string.rep("v", 10000)),
      context.with_value(bg, "k", bg),
      context.without_cancel(bg),
    } do
      local s = tostring(ctx)
      assert.is_string(s)
      assert.is_truthy(s:find("^context%.Background"), s)
    end
    -- merge has no Go counterpart: any non-empty text
    for _, ctx in ipairs {
      (context.merge(bg, todo)),
      (context.merge((context.with_timeout(bg, 1)), (context.with_cancel(bg)))),
    } do
      local s = tostring(ctx)
      assert.is_string(s)
      assert.is_true(#s > 0)
    end
  end)

  it("of cancel objects, keys and sentinels works", function()
    local _, cancel = context.with_cancel(bg)
    assert.is_string(tostring(cancel))
    assert.are.equal("k", tostring(context.key("k")))
    assert.are.equal("context canceled", tostring(context.canceled))
    h.is(type(tostring(context.deadline_exceeded)), "string")
  end)
end)
