-- Regression: a signal context destroyed the process's
-- previous disposition of its signal: under `trap '' PIPE`,
-- context.signal(bg, "PIPE") then cancel() left SIGPIPE at SIG_DFL (libev
-- resets a signal to SIG_DFL when its last watcher stops), and the next
-- write to a closed pipe killed the process (exit 141). The same for HUP
-- under nohup. The disposition must be restored when the last watcher
-- stops. In child processes started with the signal ignored.
local H = require "spec.sched_helpers"

-- is signal `sig` ignored? (bit sig-1 of SigIgn in /proc/self/status, read
-- from its low 32 bits without the bitwise operators 5.1 lacks)
local IGNORED = [[
  local function ignored(sig)
    local f = io.open("/proc/self/status"); local s = f:read("*a"); f:close()
    local mask = tonumber(s:match("SigIgn:%s*%x*(%x%x%x%x%x%x%x%x)\n"), 16)
    return math.floor(mask / 2 ^ (sig - 1)) % 2 == 1
  end
]]

describe("regress: a signal context keeps the signal's disposition", function()
  it("SIGPIPE ignored before stays ignored: a write to a closed pipe survives", function()
    local out, rc = H.child(IGNORED .. [[
      local context = require "lcontext"
      local bg = context.background()
      assert(ignored(13), "SIGPIPE is not ignored in the child: the test is void")
      local _, cancel = context.signal(bg, "PIPE")
      cancel()
      context.run()
      print("ignored after cancel:", ignored(13))
      -- a pipe whose reader has gone: with SIGPIPE at SIG_DFL this kills us
      local p = io.popen("exit 0", "w")
      os.execute("sleep 0.2")
      p:write(string.rep("x", 200000))
      p:flush()
      p:close()
      assert(ignored(13), "SIGPIPE is no longer ignored")
      print("OK")
    ]], { sh = "trap '' PIPE;" })
    H.child_ok(out, rc, "write to a closed pipe after a PIPE signal context")
  end)

  it("two signal contexts: restored when the last one stops", function()
    local out, rc = H.child(IGNORED .. [[
      local context = require "lcontext"
      local bg = context.background()
      assert(ignored(1), "SIGHUP is not ignored in the child: the test is void")
      local _, cancel1 = context.signal(bg, "HUP")
      local _, cancel2 = context.signal(bg, "HUP", "TERM")
      cancel1()
      context.run()
      cancel2()
      context.run()
      assert(ignored(1), "SIGHUP is no longer ignored (as under nohup)")
      print("OK")
    ]], { wrap = "nohup" })
    H.child_ok(out, rc, "HUP under nohup")
  end)
end)
