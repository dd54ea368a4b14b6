-- Regression: fd numbers were truncated to C int:
-- wait_fd(ctx, 2^32, ...) waited on fd 0 and 2^32 + 1 on fd 1; fd 2^31 - 1
-- crashed (a segfault) and fd 65536 aborted in libev. An fd out of the
-- range of descriptors is a bad argument; one in range but not open is
-- nil, err or a clear error (as in wait_fd_closed_fd_spec). Never a wait on
-- another fd. In child processes, whose fd 0 is readable and fd 1 writable
-- (so that a wait truncated to either would report "ready" at once).
local H = require "spec.sched_helpers"

local function probe(fd, how)
  local out, rc = H.child(([[
    local context = require "lcontext"
    local fd = %s
    assert(io.open("/proc/self/fd/" .. string.format("%%d", fd)) == nil, "fd is open")
    local ctx = context.with_timeout(context.background(), 5)
    local t0 = context.now()
    local r = { pcall(function() %s end) }
    local took = context.now() - t0
    print("RESULT", tostring(r[1]), tostring(r[2]), tostring(r[3]))
    assert(took < 2, ("the wait took %%.2f s"):format(took))
    if r[1] then
      assert(r[2] == nil, "fd " .. string.format("%%d", fd) .. " reported ready: a wait on another fd")
      assert(r[3] ~= nil and r[3] ~= context.deadline_exceeded and r[3] ~= context.canceled,
        "expected nil and an error about the fd, got nil, " .. tostring(r[3]))
    else
      assert(tostring(r[2]):find("bad argument #2 to 'wait_fd'", 1, true) or
        tostring(r[2]):find("fd") or tostring(r[2]):find("descriptor"),
        "the error does not say what is wrong: " .. tostring(r[2]))
    end
    print("OK")
  ]]):format(fd, how or "return context.wait_fd(ctx, fd, 'rw')"), { sh = "echo ready |" })
  return out, rc
end

-- out of range: must be a bad argument
local function bad_argument(out, rc)
  H.child_ok(out, rc)
  assert(out:find("RESULT\tfalse\tbad argument #2 to 'wait_fd'", 1, true),
    "an fd out of range must be a bad argument:\n" .. out)
end

describe("regress: fd numbers out of range", function()
  it("2^32 (was fd 0) is a bad argument", function()
    bad_argument(probe("2^32"))
  end)

  it("2^32 + 1 (was fd 1) is a bad argument", function()
    bad_argument(probe("2^32 + 1"))
  end)

  it("2^31 is a bad argument", function()
    bad_argument(probe("2^31"))
  end)

  it("2^53 is a bad argument", function()
    bad_argument(probe("2^53"))
  end)

  it("2^31 - 1 (was a segfault) is nil, err or an error", function()
    H.child_ok(probe("2^31 - 1"))
  end)

  it("65536 (was an abort) is nil, err or an error", function()
    H.child_ok(probe("65536"))
  end)

  it("the same through select and context.fd", function()
    local out, rc = probe("2^32 + 1", [[
      local i = context.select(ctx, context.fd(fd, "rw"))
      if i == 2 then return true end -- "ready": it waited on fd 1
      return nil, "select returned " .. tostring(i)]])
    H.child_ok(out, rc)
    assert(out:find("RESULT\tfalse\t[^\n]*bad argument #1 to 'fd'")
      or out:find("RESULT\tfalse\t[^\n]*bad argument #2 to 'select'"),
      "an fd out of range must be a bad argument:\n" .. out)
  end)
end)
