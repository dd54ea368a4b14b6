-- Regressions found by the scheduler review (see the commit that adds this):
-- each test failed before its fix.
local context = require "lcontext"
local h = require "spec.helpers"
local bg = context.background()

describe("regress: scheduler review", function()
  it("after_func on contexts nothing can cancel does not keep them alive", function()
    if not require("spec.helpers").EPHEMERONS then
      pending("needs ephemeron tables (Lua 5.2+): on 5.1 and LuaJIT a callback "
        .. "lives until it runs or is stopped")
      return
    end
    local function round()
      for _ = 1, 20000 do context.after_func(bg, function() end) end
      for _ = 1, 20000 do
        local c = context.with_cancel(bg) -- its cancel is dropped at once
        context.after_func(c, function() end)
      end
      collectgarbage(); collectgarbage()
      return collectgarbage("count")
    end
    -- the first round may grow tables for good; a leak grows every round
    -- (by several MB: 40,000 callbacks and contexts)
    local first = round()
    local second = round()
    local third = round()
    assert.is_true(third - first < 1000,
      ("retained %.0f KB over two rounds"):format(third - first))
    assert.is_true(second > 0)
  end)

  it("after_func still runs when only an ancestor's cancel is kept", function()
    local root, cancel_root = context.with_cancel(bg)
    local fired = 0
    for i = 1, 200 do
      local c = context.with_value(root:with_cancel(), "i", i)
      context.merge(c, bg) -- a merge below it must not matter either
      context.after_func(c, function() fired = fired + 1 end)
    end
    collectgarbage(); collectgarbage()
    cancel_root()
    collectgarbage(); collectgarbage() -- woken callbacks are kept by the loop
    context.run()
    assert.are.equal(200, fired)
  end)

  it("a parked task whose coroutine is closed is released, not a deadlock", function()
    if not coroutine.close then
      pending("coroutine.close exists from Lua 5.4 on: nothing closes a task's coroutine from outside here")
      return
    end
    local co
    local t = context.go(function()
      co = coroutine.running()
      bg:with_cancel():done() -- nothing will ever cancel this
    end)
    context.run("nowait")
    assert.is_true(coroutine.close(co))
    assert.is_false(context.run())
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.matches("closed", err)
    assert.are.equal("failed", t:status())
  end)

  it("a bad fd mode in select is named by position", function()
    local ok, err = pcall(context.select, 1, { fd = 0, mode = "x" })
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'select' %(mode must be", err)
  end)

  it("errors of waiting functions point at the caller, not the library", function()
    local ok, err = pcall(function()
      local e = bg:with_cancel():done() -- deadlock on the main thread
      return e
    end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
    assert.not_matches("lcontext/init%.lua", err)
  end)
end)

describe("regress: libev's default loop is taken lazily", function()
  it("contexts alone do not install signal handlers (SIGCHLD)", function()
    -- (run by the interpreter running the suite, with its module paths;
    -- bit 16 of the mask (SIGCHLD is 17) read from its low 32 bits, without
    -- the bitwise operators Lua 5.1 and LuaJIT lack)
    local script = ("package.cpath = %q\npackage.path = %q\n"):format(package.cpath, package.path) .. [[
      local function caught()
        local f = io.open("/proc/self/status")
        local s = f:read("*a"); f:close()
        return tonumber(s:match("SigCgt:%s*%x*(%x%x%x%x%x%x%x%x)"), 16)
      end
      local function sigchld(mask) return math.floor(mask / 65536) % 2 * 65536 end
      local c = require "lcontext"
      local ctx, cancel = c.with_timeout(c.background(), 10)
      cancel()
      local before = caught()
      c.with_timeout(c.background(), 0.001):done() -- the loop, now
      print(sigchld(before), sigchld(caught()))
    ]]
    local p = io.popen(h.LUA .. " -e '" .. script:gsub("'", "'\\''") .. "' 2>&1")
    local out = p:read("*a")
    p:close()
    assert.are.equal("0\t65536", out:match("^(%d+\t%d+)"), out)
  end)
end)
