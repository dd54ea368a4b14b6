-- Regression: a group member whose coroutine is closed
-- (coroutine.close of a member parked in a wait) stayed counted as running
-- for ever, and with limit = 1 the next g:go spun in group.lua's limit loop
-- (select returned at once for the ended member, again and again). A closed
-- member is a finished, failed member: "task's coroutine was closed".
local context = require "lcontext"
local H = require "spec.sched_helpers"
local bg = context.background()

local function needs_close()
  if not coroutine.close then
    pending("coroutine.close exists from Lua 5.4 on: nothing closes a member's coroutine here")
    return true
  end
end

describe("regress: a closed group member", function()
  it("is counted as a finished, failed member", function()
    if needs_close() then return end
    local g, gctx = context.group(bg)
    local co
    g:go(function() co = coroutine.running(); bg:with_cancel():done() end)
    context.run("nowait")
    assert.is_true(coroutine.close(co))
    assert.are.equal(0, g:running())
    assert.matches("task's coroutine was closed", tostring(g:wait()))
    assert.matches("task's coroutine was closed", tostring(g:errors()[1]))
    assert.matches("task's coroutine was closed", tostring(gctx:cause()))
    context.run()
    H.idle("after the group")
  end)

  it("frees its slot: with limit = 1 the next g:go returns, never spins", function()
    if needs_close() then return end
    -- in a child: the old code spins for ever in g:go
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local g = context.group(bg, 1)
      local co
      g:go(function() co = coroutine.running(); bg:with_cancel():done() end)
      context.run("nowait")
      coroutine.close(co)
      local t0 = context.now()
      local started = g:go(function() return true end)
      -- the group failed (a closed member is a failure): go says so at once
      assert(started == false, "g:go started a task in a failed group")
      assert(context.now() - t0 < 2, "g:go took too long")
      assert(tostring(g:wait()):find("task's coroutine was closed", 1, true))
      print("OK")
    ]], { limit = 10 })
    H.child_ok(out, rc, "g:go after a closed member")
  end)

  it("a member closed while g:go waits for its slot ends the wait", function()
    if needs_close() then return end
    local out, rc = H.child([[
      local context = require "lcontext"
      local bg = context.background()
      local g = context.group(bg, 1)
      local co
      g:go(function() co = coroutine.running(); bg:with_cancel():done() end)
      -- a second task closes the member while the main thread waits in g:go
      context.go(function() context.sleep(bg, 0.05); coroutine.close(co) end)
      local t0 = context.now()
      local started = g:go(function() return true end)
      assert(started == false, "g:go started a task in a failed group")
      assert(context.now() - t0 < 2, "g:go took too long")
      assert(g:running() == 0, "running: " .. g:running())
      g:wait()
      print("OK")
    ]], { limit = 10 })
    H.child_ok(out, rc, "g:go waiting for a slot")
  end)
end)
