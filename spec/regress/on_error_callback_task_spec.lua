-- Regression: on_error's third argument, for an error
-- raised in an after_func callback, was a userdata with no metatable (the
-- task metatable was looked up from a C function with no upvalues): not a
-- task, nothing one can call. It must be a task (README: the handler is
-- called as fn(err, traceback, task)), or nil with the callback named in the
-- traceback.
local context = require "lcontext"
local H = require "spec.sched_helpers"
local bg = context.background()

describe("regress: on_error for an error in an after_func callback", function()
  after_each(function() context.on_error(nil) end)

  it("gets a task, or nil and a traceback naming the callback", function()
    local got
    context.on_error(function(err, tb, task)
      got = { err = err, tb = tb, task = task, n = select("#", err, tb, task) }
    end)
    local ctx, cancel = context.with_cancel(bg)
    context.after_func(ctx, function() error("boom") end)
    cancel()
    context.run()
    assert.is_table(got, "the handler was not called")
    assert.matches("boom", tostring(got.err))
    if got.task ~= nil then
      local real = context.go(function() end)
      context.run()
      assert.are.equal(getmetatable(real), getmetatable(got.task),
        "the third argument is not a task: " .. tostring(got.task))
      assert.are.equal("failed", got.task:status())
      local ok, err = got.task:wait()
      assert.is_nil(ok)
      assert.matches("boom", tostring(err))
    else
      assert.matches("after_func", tostring(got.tb))
    end
    H.idle("after the callback")
  end)
end)
