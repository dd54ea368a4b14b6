-- Regression: Ctrl-C during a wait on the main thread was
-- swallowed. lua.c's SIGINT handler (installed around every chunk it runs,
-- `lua script.lua` as well as the prompt) sets a hook that raises
-- "interrupted!" at the next Lua instruction; run inside the loop, that
-- error was reported as "lcontext: error in the loop: interrupted!" and the
-- wait went on (and with no Lua running in the loop, nothing happened until
-- the wait ended by itself). The second Ctrl-C then killed the session.
-- "interrupted!" must come out of the wait at once, as its error, with the
-- loop left usable. Each child sends itself SIGINT from a background shell
-- started by a task (so that the signal arrives while the main thread waits).
local H = require "spec.sched_helpers"

-- the child's prologue: interrupt() makes SIGINT arrive `after` seconds later
local PROLOGUE = [[
  local context = require "lcontext"
  local bg = context.background()
  local f = io.open("/proc/self/stat"); local pid = f:read("*l"):match("^%d+"); f:close()
  local function interrupt(after)
    context.go(function()
      os.execute(("(sleep %g; kill -INT %s) &"):format(after, pid))
    end)
  end
]]

-- the interrupted wait must end soon with "interrupted!", nothing else said
local function check(out, rc)
  H.child_ok(out, rc, "interrupted wait")
  local ok, err, took = out:match("RESULT (%S+) (.-) took ([%d.]+)\n")
  assert(ok == "false", "the wait was not interrupted:\n" .. out)
  assert(err:find("interrupted!", 1, true), "the wait raised something else:\n" .. out)
  assert(tonumber(took) < 2.5, "the interrupt took " .. took .. " s to reach the wait")
  assert(not out:find("error in the loop", 1, true),
    "the interrupt was reported as a loop error:\n" .. out)
end

describe("regress: SIGINT (Ctrl-C) during a wait on the main thread", function()
  it("ends context.sleep with \"interrupted!\"", function()
    check(H.child(PROLOGUE .. [[
      interrupt(0.2)
      local t0 = context.now()
      local ok, err = pcall(context.sleep, bg, 5)
      print(("RESULT %s %s took %.2f"):format(tostring(ok), tostring(err), context.now() - t0))
      assert(context.sleep(bg, 0.01) == true, "the loop is not usable after the interrupt")
      print("OK")
    ]]))
  end)

  it("ends context.run() while a task runs Lua in the loop", function()
    check(H.child(PROLOGUE .. [[
      local ctx, cancel = context.with_timeout(bg, 5)
      context.go(function()
        while not ctx:err() do context.sleep(ctx, 0.01) end
      end)
      interrupt(0.2)
      local t0 = context.now()
      local ok, err = pcall(context.run)
      print(("RESULT %s %s took %.2f"):format(tostring(ok), tostring(err), context.now() - t0))
      cancel()
      assert(pcall(context.run), "the loop is not usable after the interrupt")
      print("OK")
    ]]))
  end)

  it("ends ctx:done()", function()
    check(H.child(PROLOGUE .. [[
      local ctx = context.with_timeout(bg, 5)
      interrupt(0.2)
      local t0 = context.now()
      local ok, err = pcall(ctx.done, ctx)
      print(("RESULT %s %s took %.2f"):format(tostring(ok), tostring(err), context.now() - t0))
      print("OK")
    ]]))
  end)
end)
