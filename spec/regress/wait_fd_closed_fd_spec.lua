-- Regression: wait_fd on a descriptor that is not open
-- aborted the process inside libev ("epoll_modify: Assertion ... invalid fd").
-- It must return nil, err (an error that is not a context's) or raise a
-- clear error, at once; never abort, and never report the fd ready. Each
-- case runs in a child process: the bug aborts.
local H = require "spec.sched_helpers"

-- the child: make `call()` (a wait on a descriptor that is not open) under
-- a context with 5 s left; print what it gave
local function probe(setup, call)
  local out, rc = H.child([[
    local context = require "lcontext"
    local bg = context.background()
    local ctx = context.with_timeout(bg, 5)
]] .. setup .. [[
    local t0 = context.now()
    local r = { pcall(function() ]] .. call .. [[ end) }
    local took = context.now() - t0
    print("RESULT", tostring(r[1]), tostring(r[2]), tostring(r[3]))
    assert(took < 2, ("the wait took %.2f s: it waited on a closed fd"):format(took))
    if r[1] then
      assert(r[2] == nil, "a closed fd reported ready: " .. tostring(r[2]))
      assert(r[3] ~= nil and r[3] ~= context.deadline_exceeded and r[3] ~= context.canceled,
        "expected nil and an error about the fd, got nil, " .. tostring(r[3]))
    else
      local e = tostring(r[2])
      assert(e:find("fd") or e:find("descriptor"), "the error does not say what is wrong: " .. e)
    end
    print("OK")
  ]])
  return out, rc
end

-- fd 1000 is not open in the child (checked through /proc)
local FD1000 = [[
    assert(io.open("/proc/self/fd/1000") == nil, "fd 1000 is open in the child")
]]

describe("regress: waiting on a descriptor that is not open", function()
  it("wait_fd(ctx, 1000, 'r') on the main thread", function()
    H.child_ok(probe(FD1000, "return context.wait_fd(ctx, 1000, 'r')"))
  end)

  it("wait_fd in a task", function()
    H.child_ok(probe(FD1000, [[
      local t = context.go(function() return context.wait_fd(ctx, 1000, "w") end)
      return t:wait()]]))
  end)

  it("select on context.fd(1000)", function()
    H.child_ok(probe(FD1000, [[
      local i = context.select(ctx, context.fd(1000, "r"))
      if i == 2 then return true end -- "ready"
      return nil, "select returned " .. tostring(i)]]))
  end)

  it("a stale socket's fd", function()
    H.child_ok(probe([[
      local socket = require "socket"
      local s = assert(socket.bind("127.0.0.1", 0))
      local fd = s:getfd() -- (a float: LuaSocket's)
      assert(fd >= 0, "the socket has no fd")
      s:close()
      assert(io.open(("/proc/self/fd/%d"):format(fd)) == nil, "the socket's fd is still open")
    ]], "return context.wait_fd(ctx, fd, 'rw')"))
  end)
end)
