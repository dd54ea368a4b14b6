-- Regression found by `make stress`: context.step(timeout) waited its whole
-- timeout when the work it ran in its first pass left nothing behind (a
-- task that ended without waiting, or a sleep that a pause of the machine
-- let expire before step blocked). It now returns at once, false.
local context = require "lcontext"
local core = require "lcontext.core"

describe("regress: step with a timeout and nothing left", function()
  it("returns at once when the ready work ends without waiting", function()
    local ran = false
    context.go(function() ran = true end)
    local t0 = context.now()
    assert.is_false(context.step(5))
    assert.is_true(ran)
    assert.is_true(context.now() - t0 < 2.5, "step(5) waited for nothing")
  end)

  it("returns at once when there is no work at all", function()
    local t0 = context.now()
    assert.is_false(context.step(5))
    assert.is_true(context.now() - t0 < 2.5, "step(5) waited for nothing")
  end)

  it("still waits for work that is left, and returns when it ends", function()
    local t = context.go(function() context.sleep(context.background(), 0.05) end)
    local t0 = context.now()
    local more = context.step(5)
    while more and t:status() == "running" and context.now() - t0 < 5 do
      more = context.step(5)
    end
    assert.are.equal("ok", t:status())
    assert.is_true(context.now() - t0 >= 0.05 - 1e-6)
    assert.is_true(context.now() - t0 < 2.5)
    assert.are.equal(0, core.sched_stats().tasks)
  end)
end)
