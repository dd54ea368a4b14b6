-- Regression: a wait inside a frame that cannot yield (a
-- table.sort comparator, a string.gsub callback, a __tostring called by
-- tostring; on Lua 5.1 a plain pcall in a task) armed its waits and marked
-- the task parked, then the yield failed: the task ended with its waits
-- still linked, and the loop later used the freed memory (heap-use-after-
-- free under ASan in on_done). The wait must raise a clear error there
-- ("cannot wait here: ... (a C function is on the stack)") and leave
-- nothing armed. Each case runs in a child process: the bug crashes.
local h = require "spec.helpers"
local H = require "spec.sched_helpers"

-- the child: run `body` (which defines `wait_there()`, a function making a
-- wait inside a C frame) in a task; report the error the wait raised, then
-- check that nothing is left armed and that the loop survives collection
local function probe(body, may_yield)
  return H.child([[
    local MAY_YIELD = ]] .. tostring(may_yield == true) .. [[
    local context = require "lcontext"
    local core = require "lcontext.core"
    local bg = context.background()
    local ctx, cancel = context.with_timeout(bg, 0.05)
]] .. body .. [[
    local t = context.go(function()
      local ok, err = pcall(wait_there)
      return ok, err
    end)
    context.run()
    local ok, err = t:wait()
    print("ERR: " .. tostring(err))
    assert(ok == false or (MAY_YIELD and ok == true and err == "obj"),
      "the wait raised no error: " .. tostring(ok) .. " " .. tostring(err))
    collectgarbage(); collectgarbage()
    local s, m = core.sched_stats(), context.metrics()
    assert(s.tasks == 0 and s.timers == 0 and s.fd_waits == 0,
      ("armed after the failed wait: tasks=%d timers=%d fd_waits=%d"):format(s.tasks, s.timers, s.fd_waits))
    assert(m.tasks_waiting == 0, "tasks_waiting = " .. m.tasks_waiting)
    cancel()
    collectgarbage(); collectgarbage()
    context.run()
    context.sleep(bg, 0.06) -- past the deadline: the wheel has nothing of it
    print("OK")
  ]])
end

local function check(out, rc, may_yield)
  local err = out:match("ERR: ([^\n]*)")
  if may_yield and err == "obj" then -- the runtime could yield there: it waited
    return H.child_ok(out, rc, "after the wait")
  end
  assert(err and err:find("cannot wait here", 1, true) and err:lower():find("c function", 1, true),
    "expected a \"cannot wait here ... (a C function is on the stack)\" error:\n" .. out)
  H.child_ok(out, rc, "after the wait")
end

describe("regress: a wait where the task cannot yield", function()
  it("in a table.sort comparator (a sleep)", function()
    check(probe([[
      function wait_there()
        table.sort({ 3, 2, 1 }, function(a, b) context.sleep(ctx, 0.001) return a < b end)
      end
    ]]))
  end)

  it("in a string.gsub callback (ctx:done() on a deadline)", function()
    check(probe([[
      function wait_there()
        string.gsub("abc", "%w", function(c) ctx:done() return c end)
      end
    ]]))
  end)

  it("in a __tostring metamethod (select)", function()
    -- LuaJIT can yield across a metamethod that tostring calls: there the
    -- wait works, and must leave nothing behind either
    local may_yield = h.RUNTIME == "luajit"
    local out, rc = probe([[
      local obj = setmetatable({}, { __tostring = function()
        context.select(ctx, 0.001)
        return "obj"
      end })
      function wait_there() return tostring(obj) end
    ]], may_yield)
    check(out, rc, may_yield)
  end)

  it("in a plain pcall on Lua 5.1", function()
    if h.RUNTIME ~= "5.1" then
      pending("only Lua 5.1's pcall cannot be yielded across (this is " .. h.RUNTIME .. ")")
      return
    end
    check(probe([[
      function wait_there()
        local ok, err = pcall(context.sleep, ctx, 0.001)
        if not ok then error(err, 0) end
      end
    ]]))
  end)
end)
