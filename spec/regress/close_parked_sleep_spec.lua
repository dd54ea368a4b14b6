-- Regression: after coroutine.close of a task parked in
-- sleep(bg, 3600), context.run() blocked for the whole hour: the sleep's
-- timer stayed armed, and the loop only looked for closed tasks when
-- nothing else could happen. Closing a task must release its waits at once
-- (or at the next loop iteration). In a child process: the bug hangs.
local H = require "spec.sched_helpers"

describe("regress: coroutine.close of a task parked on a sleep", function()
  it("context.run() returns at once, the task failed, nothing left armed", function()
    if not coroutine.close then
      pending("coroutine.close exists from Lua 5.4 on: nothing closes a task's coroutine here")
      return
    end
    local out, rc = H.child([[
      local context = require "lcontext"
      local core = require "lcontext.core"
      local bg = context.background()
      local co
      local t = context.go(function() co = coroutine.running(); context.sleep(bg, 3600) end)
      context.run("nowait")
      assert(coroutine.close(co))
      local t0 = context.now()
      context.run()
      local took = context.now() - t0
      assert(took < 2, ("run() took %.1f s after the close"):format(took))
      local ok, err = t:wait()
      assert(ok == nil and tostring(err):find("closed"), "t:wait(): " .. tostring(err))
      local s = core.sched_stats()
      assert(s.tasks == 0 and s.timers == 0, ("left: tasks=%d timers=%d"):format(s.tasks, s.timers))
      print("OK")
    ]], { limit = 8 })
    H.child_ok(out, rc, "run() after closing a sleeping task")
  end)

  it("while other work keeps the loop busy, the closed task's timer goes", function()
    if not coroutine.close then
      pending("coroutine.close exists from Lua 5.4 on: nothing closes a task's coroutine here")
      return
    end
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local co
      local t = context.go(function() co = coroutine.running(); context.sleep(bg, 3600) end)
      -- another task that keeps the loop busy for a while
      local other = context.go(function() for _ = 1, 20 do context.sleep(bg, 0.01) end end)
      context.run("nowait")
      assert(coroutine.close(co))
      local t0 = context.now()
      other:wait()
      -- by now the closed task has ended (released at the next iteration)
      assert(t:status() == "failed", "the closed task is still " .. t:status())
      context.run()
      assert(context.now() - t0 < 2, "run() waited for the closed task's sleep")
      print("OK")
    ]], { limit = 8 })
    H.child_ok(out, rc, "a closed task beside a busy one")
  end)

  -- found by the API fuzzer: a __close that raises while the coroutine is
  -- closed leaves the error on its stack, and the sweep took the coroutine
  -- for a live one
  it("also when one of the task's <close> handlers raises", function()
    if not coroutine.close then
      pending("coroutine.close exists from Lua 5.4 on: nothing closes a task's coroutine here")
      return
    end
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local co
      local t = context.go(function()
        co = coroutine.running()
        local _ <close> = setmetatable({}, { __close = function() error("boom in close") end })
        context.sleep(bg, 3600)
      end)
      context.run("nowait")
      local ok, err = coroutine.close(co)
      assert(ok == false and tostring(err):find("boom in close"), "close: " .. tostring(err))
      local t0 = context.now()
      context.run()
      assert(context.now() - t0 < 2, "run() waited for the closed task's sleep")
      assert(t:status() == "failed", "the closed task is " .. t:status())
      print("OK")
    ]], { limit = 8 })
    H.child_ok(out, rc, "a closed task whose __close raised")
  end)
end)
