-- Regression: a hedge attempt whose task's coroutine is
-- closed (coroutine.close while it waits) made context.hedge raise
-- "hedge.lua: attempt to index a nil value (local 'r')". A closed attempt is
-- a failed attempt: "task's coroutine was closed".
local context = require "lcontext"
local H = require "spec.sched_helpers"
local bg = context.background()

describe("regress: a closed hedge attempt", function()
  it("counts as a failed attempt", function()
    if not coroutine.close then
      pending("coroutine.close exists from Lua 5.4 on: nothing closes an attempt's coroutine here")
      return
    end
    local cos, tried = {}, 0
    -- once both attempts wait (for contexts nothing cancels), close them both
    context.go(function()
      context.sleep(bg, 0.05)
      for i = 1, 2 do assert(coroutine.close(cos[i])) end
    end)
    local ok, a, b = pcall(context.hedge, bg, function(actx, i)
      tried = tried + 1
      cos[i] = coroutine.running()
      actx:done()
      return "done"
    end, { delay = 0, attempts = 2 })
    assert.is_true(ok, tostring(a))  -- the old code raised here
    assert.is_nil(a)
    assert.matches("task's coroutine was closed", tostring(b))
    assert.are.equal(2, tried)
    context.run()
    H.idle("after the hedge")
  end)

  it("lets the next attempt win", function()
    if not coroutine.close then
      pending("coroutine.close exists from Lua 5.4 on: nothing closes an attempt's coroutine here")
      return
    end
    local cos = {}
    local go_ahead, release = context.with_cancel(bg)
    context.go(function()
      context.sleep(bg, 0.05)
      assert(coroutine.close(cos[1]))
    end)
    local ok, a = pcall(context.hedge, bg, function(actx, i)
      cos[i] = coroutine.running()
      if i == 1 then actx:done() return "first" end
      -- the second waits until the first has been seen to fail
      go_ahead:done()
      return "second"
    end, { delay = 0, attempts = 2, retryable = function()
      release() -- the first attempt's failure reached hedge
      return true
    end })
    assert.is_true(ok, tostring(a))
    assert.are.equal("second", a)
    context.run()
    H.idle("after the hedge")
  end)
end)
