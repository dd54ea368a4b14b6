-- Regression: stop() of an after_func callback that
-- cancel() had already queued (Go's `defer stop()` idiom) marked it stopped
-- and let it go while it was still in the ready queue: once collected, the
-- loop read freed memory (heap-use-after-free in pop_ready). The same for an
-- external watch (core._watch, the OpenResty backend's) unwatched while its
-- call is due. The use-after-free is seen under ASan (the asan suite); every
-- build checks what stop() and unwatch promise. In child processes: the bug
-- crashes.
local H = require "spec.sched_helpers"

describe("regress: stopping a callback that cancel() already queued", function()
  it("after_func: stop() prevents the run, and the loop survives", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      local ran = 0
      local ctx, cancel = context.with_cancel(context.background())
      local stopped
      do
        local stop = context.after_func(ctx, function() ran = ran + 1 end)
        cancel()          -- queues the callback
        stopped = stop()  -- before it started: prevented
      end
      collectgarbage(); collectgarbage()
      context.run()
      assert(stopped == true, "stop() returned " .. tostring(stopped))
      assert(ran == 0, "the stopped callback ran")
      print("OK")
    ]])
    H.child_ok(out, rc, "stop() after cancel()")
  end)

  it("an external watch unwatched while its call is due", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      local core = require "lcontext.core"
      local ctx, cancel = context.with_cancel(context.background())
      -- two watches; the first called unwatches the other (due in the same
      -- flush) and drops the only reference to it
      local hs, ran, res = {}, {}, nil
      for i = 1, 2 do
        hs[i] = core._watch(ctx, function()
          ran[#ran + 1] = i
          res = core._unwatch(hs[3 - i])
          hs = {}
          collectgarbage(); collectgarbage()
        end)
      end
      cancel()
      collectgarbage(); collectgarbage()
      context.run()
      assert(#ran == 1, "watches called: " .. #ran)
      assert(res == true, "unwatch returned " .. tostring(res))
      print("OK")
    ]])
    H.child_ok(out, rc, "_unwatch of a due watch")
  end)
end)
