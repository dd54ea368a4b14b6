-- Regression (found by the API fuzzer): a cancel called
-- from a __gc finaliser (the API allows it) when the context was otherwise
-- unreachable woke an after_func callback that nothing anchored (its
-- weak-table entry had been cleared during the resurrection): the next
-- collection freed it while it sat in the ready queue, and context.go then
-- wrote to the freed memory (heap-use-after-free in push_ready, under
-- ASan). On every build the callback was lost: it never ran. The library
-- reached the same state by itself: adaptive_timeout's with_timeout on a
-- done parent, then its cancel (a stop() of a callback already queued).
-- In child processes: the bug crashes.
local H = require "spec.sched_helpers"

describe("regress: cancel from a finaliser", function()
  it("wakes the after_func callback, which runs once", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local ran = 0
      -- a table's __gc (5.2+), or a newproxy userdata's (5.1, LuaJIT)
      local function on_gc(fn)
        if newproxy then
          local u = newproxy(true)
          getmetatable(u).__gc = fn
          return u
        end
        return setmetatable({}, { __gc = fn })
      end
      do
        local ctx, cancel = context.with_cancel(bg)
        context.after_func(ctx, function() ran = ran + 1 end)
        on_gc(function() cancel() end) -- holds the only reference
      end
      collectgarbage(); collectgarbage()
      context.go(function() end)
      context.run()
      collectgarbage(); collectgarbage()
      context.run()
      assert(ran == 1, "the callback ran " .. ran .. " times")
      print("OK")
    ]])
    H.child_ok(out, rc, "cancel from __gc")
  end)

  it("adaptive_timeout: with_timeout on a done parent, then cancel", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local at = context.adaptive_timeout{ base = 1 }
      local parent, cancel_parent = context.with_cancel(bg)
      cancel_parent()
      do
        local _, cancel = at:with_timeout(parent)
        cancel()
      end
      collectgarbage(); collectgarbage()
      context.run()
      assert(at:stats().abandoned == 1, "abandoned: " .. at:stats().abandoned)
      print("OK")
    ]])
    H.child_ok(out, rc, "adaptive_timeout on a done parent")
  end)
end)
