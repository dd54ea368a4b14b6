-- Regression: g:wait() and g:go in a task of context.spawn that was
-- cancelled spun for ever. The bound rule ends every wait of such a task at
-- once (task:wait, select return nil, task_ctx:err() without suspending),
-- and group.lua's wait loop asked again for the same member, and g:go's
-- slot loop indexed its members with select's nil: neither yielded, so the
-- members never ran to end. Now wait cancels the group with the task's
-- cause and waits for the members with the bound lifted; g:go returns
-- false, err. In children: the old code spins.
local H = require "spec.sched_helpers"

describe("regress: a group in a cancelled spawned task", function()
  it("g:wait() cancels the group and waits for its members, never spins", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local member_done = false
      local t = context.spawn(bg, function()
        local g, gctx = context.group(bg)
        g:go(function(ctx) ctx:done(); context.sleep(bg, 0.01); member_done = true end)
        g:wait()
        return member_done, gctx:cause()
      end)
      context.go(function() context.sleep(bg, 0.01); t:cancel("stop") end)
      local t0 = context.now()
      local done, cause = t:wait()
      assert(done == true, "g:wait returned before its member ended")
      assert(cause == "stop", "gctx's cause: " .. tostring(cause))
      assert(context.now() - t0 < 5, "too long")
      print("OK")
    ]], { limit = 10 })
    H.child_ok(out, rc, "g:wait in a cancelled spawned task")
  end)

  it("g:go waiting for a slot returns false, never spins", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local t = context.spawn(bg, function()
        local g = context.group(bg, 1)
        g:go(function(ctx) context.sleep(ctx, 5) end)
        local ok, err = g:go(function() end)
        g:cancel()
        g:wait()
        return ok, err
      end)
      context.go(function() context.sleep(bg, 0.01); t:cancel() end)
      local ok, err = t:wait()
      assert(ok == false, "g:go: " .. tostring(ok))
      assert(err == context.canceled, "g:go's err: " .. tostring(err))
      print("OK")
    ]], { limit = 10 })
    H.child_ok(out, rc, "g:go in a cancelled spawned task")
  end)
end)
