-- vclock_spec.lua — the virtual clock (context.virtual_clock,
-- csrc/l_clock.c, lua/lcontext/vclock.lua) and context.random_seed:
-- exact, instant runs of everything that waits. docs/testing.md.
local context = require "lcontext"
local S = require "spec.sched_helpers"
local B = require "spec.backend"

local bg = context.background()

local guard_start, guard_check = S.task_guard()
local clock
before_each(guard_start)
after_each(function()
  if clock then clock:uninstall(); clock = nil end
  guard_check()
end)

describe("context.virtual_clock", function()
  it("autojump: sleeps end at exact virtual times, in order, at once", function()
    clock = context.virtual_clock{ autojump = true }
    local log = {}
    local function at(name) log[#log + 1] = { name, clock:now() } end
    context.go(function() context.sleep(bg, 30); at("a") end)
    context.go(function()
      context.sleep(bg, 1); at("b1")
      context.sleep(bg, 1); at("b2")
    end)
    local t0 = os.clock()
    B.run()
    assert.are.same({ { "b1", 1 }, { "b2", 2 }, { "a", 30 } }, log)
    assert.is_true(os.clock() - t0 < 1, "30 virtual seconds took real ones")
    assert.are.equal(30, clock:now())
  end)

  it("advance fires what is due in order, and runs what it woke before the next due time", function()
    clock = context.virtual_clock()
    local log = {}
    context.go(function()
      context.sleep(bg, 1); log[#log + 1] = clock:now()
      context.sleep(bg, 1); log[#log + 1] = clock:now() -- causality: within the same advance
    end)
    context.go(function() context.sleep(bg, 1.5); log[#log + 1] = clock:now() end)
    assert.are.equal(0.5, clock:advance(0.5))
    assert.are.same({}, log)
    assert.are.equal(3, clock:advance(2.5))
    assert.are.same({ 1, 1.5, 2 }, log)
  end)

  it("deadlines, remaining(), deadline() and time() read it", function()
    clock = context.virtual_clock{ epoch = 1800000000 }
    assert.are.equal(1800000000, context.time())
    local c, cancel = context.with_timeout(bg, 5)
    assert.are.equal(5, c:remaining())
    assert.are.equal(1800000005, c:deadline())
    local t = context.go(function() return c:done(), clock:now() end)
    clock:advance(4.999)
    assert.is_nil(c:err())
    clock:advance(0.001)
    assert.are.equal(context.deadline_exceeded, c:err())
    assert.are.same({ context.deadline_exceeded, 5 }, { t:wait() })
    assert.are.equal(1800000005, context.time())
    cancel()
  end)

  it("a wait of whole milliseconds ends exactly then, whatever the float noise of its seconds", function()
    clock = context.virtual_clock()
    local got = {}
    for i, d in ipairs({ 2.136, 2.119, 0.001, 1.7 }) do -- (2.136 * 1e9 is 2136000000.0000002)
      context.go(function() context.sleep(bg, d); got[i] = clock:now() end)
    end
    clock:advance(3)
    assert.are.same({ 2.136, 2.119, 0.001, 1.7 }, got)
  end)

  it("a cancel walk reads the runtime's clock: virtual, then shifted ahead after uninstall", function()
    clock = context.virtual_clock()
    local r, rcancel = context.with_cancel_cause(bg)
    local t = context.with_timeout(r, 1)
    local c = context.with_cancel(t)
    clock:advance(2) -- t's expiry goes unobserved: nothing waits on it
    rcancel("root")
    assert.are.equal(context.deadline_exceeded, t:err())
    assert.are.equal(context.deadline_exceeded, c:err())
    clock:uninstall()
    clock = nil
    -- the runtime's clock now runs 2 s ahead of the system's
    local r2, rcancel2 = context.with_cancel_cause(bg)
    local t2 = context.with_timeout(r2, 0.02)
    require("spec.helpers").sleep(0.04) -- (blocking: no loop runs)
    rcancel2("root")
    assert.are.equal(context.deadline_exceeded, t2:err())
  end)

  it("start sets what clock:now() and context.now() read at install", function()
    clock = context.virtual_clock(100)
    assert.are.equal(100, clock:now())
    assert.are.equal(100, context.now())
    clock:advance(2)
    assert.are.equal(102, clock:now())
    assert.are.equal(102, context.now())
  end)

  it("a wait of now() + d - now() (hedge's delays) is d exactly: readings carry no float noise", function()
    clock = context.virtual_clock{ autojump = true }
    local t = context.go(function()
      context.select(bg, context.now() + 0.005 - context.now())
      return clock:now()
    end)
    assert.are.equal(0.005, t:wait())
    local c, cancel = context.with_timeout(bg, 0.3)
    assert.are.equal(0.3, c:remaining())
    cancel()
  end)

  B.it_libev("without autojump, what only virtual time can end is a deadlock that says so",
    "nginx has no deadlock detection (lcontext.ngx cannot know that nothing else will run)",
    function()
    clock = context.virtual_clock()
    local t = context.go(function() return context.sleep(bg, 2) end)
    local ok, err = pcall(context.run)
    assert.is_false(ok)
    assert.matches("only virtual time can wake it", err)
    ok, err = pcall(context.sleep, bg, 1)
    assert.is_false(ok)
    assert.matches("clock:advance", err)
    clock:advance(2)
    assert.is_true(t:wait())
    end)

  it("uninstall: real time goes on from where virtual time is; what is pending keeps its time left", function()
    clock = context.virtual_clock()
    local c, cancel = context.with_timeout(bg, 3600)
    clock:advance(3000)
    local before = context.now()
    clock:uninstall()
    assert.is_false(clock:installed())
    assert.is_true(context.now() >= before)
    local left = c:remaining()
    assert.is_true(left <= 600 and left > 590, "remaining " .. left)
    assert.has_error(function() clock:advance(1) end, "clock:advance: this virtual clock is not installed (uninstalled)")
    clock = nil
    cancel()
  end)

  B.it_libev("autojump does not jump past a real wait, unless given seconds of real idleness",
    "fd waits (context.wait_fd) and context.step are libev's",
    function()
    local socket = require "socket"
    local srv = assert(socket.bind("127.0.0.1", 0))
    finally(function() srv:close() end)
    clock = context.virtual_clock{ autojump = true }
    local c, cancel = context.with_timeout(bg, 10)
    local t = context.go(function() return context.wait_fd(c, srv, "r") end) -- nobody connects
    context.step(0.02) -- real time passes; the fd is waited on: no jump
    assert.are.equal(0, clock:now())
    clock:autojump(0.01) -- now: jump once 10 ms of real time pass with nothing
    assert.are.same({ nil, context.deadline_exceeded }, { t:wait() })
    assert.are.equal(10, clock:now())
    cancel()
    end)

  B.it_libev("a signal context does not hold autojump back (a signal may come at any virtual time)",
    "context.signal is libev's",
    function()
      local sc, stop = context.signal(bg, "USR2")
      finally(function() stop() end)
      clock = context.virtual_clock{ autojump = true }
      local t = context.go(function() return context.select(sc, 5) end)
      assert.are.equal(2, t:wait())
      assert.are.equal(5, clock:now())
    end)

  it("the helpers read it: a 5-attempt exponential retry and a 30 s breaker cooldown, exact", function()
    clock = context.virtual_clock{ autojump = true }
    local at = {}
    local v, err, attempts = context.retry(bg, function()
      at[#at + 1] = clock:now()
      return nil, "down"
    end, { attempts = 5, base = 1, factor = 2, jitter = "none", max = 60 })
    assert.is_nil(v)
    assert.are.equal("down", err)
    assert.are.equal(5, attempts)
    assert.are.same({ 0, 1, 3, 7, 15 }, at)

    local br = context.breaker{ threshold = 2, cooldown = 30 }
    local function fail() return nil, "boom" end
    br:call(bg, fail); br:call(bg, fail)
    assert.are.equal("open", br:state())
    clock:advance(29.999)
    assert.are.equal("open", br:state())
    clock:advance(0.001)
    assert.are.equal("half_open", br:state())
  end)

  it("checks its arguments, and installs one clock at a time", function()
    assert.has_error(function() context.virtual_clock("x") end,
      "bad argument #1 to 'virtual_clock' (number or table expected, got string)")
    assert.has_error(function() context.virtual_clock{ jump = true } end,
      "bad argument #1 to 'virtual_clock' (unknown option 'jump' (start, epoch, autojump))")
    clock = context.virtual_clock()
    assert.matches("installed already", select(2, pcall(context.virtual_clock)))
    assert.matches("must not be negative", select(2, pcall(clock.advance, clock, -1)))
    assert.matches("autojump", select(2, pcall(clock.autojump, clock, "yes")))
    assert.matches("context.virtual_clock %(now 0", tostring(clock))
    assert.matches("bad argument #1 to 'random_seed' %(finite number expected",
      select(2, pcall(context.random_seed, math.huge)))
  end)

  B.it_libev("advance is the main thread's: a task gets a clear error",
    "in nginx any light thread may advance the clock",
    function()
      clock = context.virtual_clock()
      local t = context.go(function() return pcall(clock.advance, clock, 1) end)
      clock:advance(0)
      local ok, err = t:wait()
      assert.is_false(ok)
      assert.matches("context.advance: cannot run the loop from inside a task", err)
    end)
end)

describe("determinism", function()
  -- retry with full jitter, a breaker and a hedge, under the virtual clock:
  -- the log of what happened when
  local function scenario()
    context.random_seed(42)
    clock = context.virtual_clock{ autojump = true }
    local log = {}
    local function say(fmt, ...) log[#log + 1] = ("%.6f " .. fmt):format(clock:now(), ...) end
    local br = context.breaker{ threshold = 3, cooldown = 5 }
    local n = 0
    local t = context.go(function()
      for round = 1, 3 do
        local v, err, attempts = context.retry(bg, function(_, attempt)
          return br:call(bg, function()
            n = n + 1
            say("round %d attempt %d call %d", round, attempt, n)
            if n % 4 ~= 0 then return nil, "flaky" end
            return "ok"
          end)
        end, { attempts = 6, base = 0.5, factor = 2, jitter = "full", max = 8 })
        say("round %d: %s %s after %s, breaker %s", round, tostring(v), tostring(err),
          tostring(attempts), br:state())
        local h = context.hedge(bg, function(hctx, i)
          local ok = context.sleep(hctx, i == 1 and 2 or 0.25)
          if not ok then return nil, "lost" end
          return "attempt " .. i
        end, { delay = 0.5 })
        say("hedge: %s", tostring(h))
      end
    end)
    B.run()
    t:wait()
    clock:uninstall()
    clock = nil
    return table.concat(log, "\n")
  end

  it("the same seed gives the same run, byte for byte", function()
    local a = scenario()
    local b = scenario()
    assert.are.equal(a, b)
    assert.matches("breaker", a)
    assert.matches("hedge: attempt 2", a)
  end)
end)
