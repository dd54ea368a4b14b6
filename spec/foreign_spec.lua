-- Foreign loops (README, "I/O", "Foreign loops"): a program whose main loop
-- is someone else's (luv, cqueues, a C host with poll(2)) drives lcontext
-- with context.pollfd(), context.timeout() and context.step(0):
--
--     while context.step(0) do
--       poll(context.pollfd(), context.timeout())   -- nil: no time limit
--     end
--
-- The fd is polled here with LuaSocket's socket.select, which takes any
-- object with :getfd(). libev only (pollfd is libev's epoll fd); not in the
-- shared suite of the nginx backend, where both raise (spec/ngx).
local context = require "lcontext"
local core = require "lcontext.core"
local socket = require "socket"

local H = require "spec.sched_helpers"
local h = require "spec.helpers"
local SLACK, EPS = H.SLACK, H.EPS
local TICK = 0.002 -- the wheel's 1 ms ticks round due times up (README, "API reference")

local bg = context.background()
local now = context.now

-- the lcontext fd as something socket.select accepts
local function pollable()
  local fd = context.pollfd()
  return { getfd = function() return fd end }
end

-- is the pollfd readable within secs?
local function readable(secs)
  local r = socket.select({ pollable() }, nil, secs)
  return #r > 0
end

-- a connected pair of TCP sockets on the loopback, closed after the test
local open_sockets
local function tcp_pair()
  local srv = assert(socket.bind("127.0.0.1", 0))
  local ip, port = srv:getsockname()
  local a = assert(socket.connect(ip, port))
  local b = assert(srv:accept())
  srv:close()
  open_sockets[#open_sockets + 1] = a
  open_sockets[#open_sockets + 1] = b
  return a, b
end

-- the host pattern: step(0), then poll the fd for at most timeout();
-- returns the number of polls (bounded by `limit` seconds of real time:
-- h.now, which a virtual clock does not move)
local function host_loop(limit)
  local polls, t_end = 0, h.now() + limit
  while context.step(0) do
    assert(h.now() < t_end, "the host loop did not end")
    local t = context.timeout()
    if t == nil or t > t_end - h.now() then t = t_end - h.now() end
    socket.select({ pollable() }, nil, t)
    polls = polls + 1
  end
  return polls
end

local guard_start, guard_check = H.task_guard(function()
  for _, s in ipairs(open_sockets) do s:close() end
end)
before_each(function()
  open_sockets = {}
  guard_start()
end)
after_each(guard_check)

describe("context.pollfd()", function()
  it("is the loop's epoll fd, the same every call, from the main thread or a task", function()
    local fd = context.pollfd()
    assert.are.equal("integer", h.math_type(fd))
    assert.is_true(fd >= 0)
    assert.are.equal(fd, context.pollfd())
    local link = io.popen("readlink /proc/" .. io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
      .. "/fd/" .. fd):read("*l")
    assert.matches("eventpoll", link)
    local t = context.go(function() return context.pollfd() end)
    assert.are.equal(fd, t:wait())
  end)

  it("becomes readable when an fd a task waits on becomes ready", function()
    local a, b = tcp_pair()
    local t = context.go(function() return context.wait_fd(bg, b, "r") end)
    assert.is_true(context.step(0))
    assert.are.equal("running", t:status())
    assert.is_false(readable(0), "readable before the peer wrote")
    a:send("x")
    assert.is_true(readable(2), "not readable after the peer wrote")
    context.step(0)
    assert.are.equal("ok", t:status())
    assert.is_true(t:wait())
    assert.is_false(readable(0), "still readable once the wait ended")
  end)

  it("a wait started inside step(0) is watched when step returns (libev applies fd changes lazily)", function()
    -- The task wakes from its first wait in step's own loop iteration and
    -- begins its second wait in the drain after it: step must leave that
    -- watcher in the epoll set before returning, or the host sleeps on the
    -- pollfd while the task waits on an fd nobody watches. No
    -- context.timeout() between step and the poll: step alone must do it.
    for _ = 1, 3 do
      local a1, b1 = tcp_pair()
      local a2, b2 = tcp_pair()
      local t = context.go(function()
        assert(context.wait_fd(bg, b1, "r"))
        assert(b1:receive(1) == "x")
        assert(context.wait_fd(bg, b2, "r"))
        return b2:receive(1)
      end)
      assert.is_true(context.step(0)) -- the task parks on b1
      a1:send("x")
      assert.is_true(readable(2), "b1 is not watched")
      assert.is_true(context.step(0)) -- b1 fires; the task parks on b2
      assert.are.equal("running", t:status())
      a2:send("y")
      assert.is_true(readable(2), "the fd the task waits on is not in the epoll set")
      assert.is_false(context.step(0))
      assert.are.equal("y", t:wait())
    end
  end)

  it("a signal reaches a signal context within ~50 ms: timeout() is at most 0.05 while one listens", function()
    -- libev's handler writes to its pipe only while libev blocks in its own
    -- poll, so the pollfd does not wake for a signal: timeout() bounds the
    -- host's sleep instead. In a fresh process: the pipe then joins the
    -- epoll set inside the step that made the context.
    local out, rc = H.child([[
      local context = require "lcontext"
      local socket = require "socket"
      local fd = context.pollfd()
      local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
      local ctx, stop
      context.go(function() ctx, stop = context.signal(context.background(), "USR1") end)
      context.step(0)
      print("timeout", context.timeout())
      os.execute("kill -USR1 " .. pid)
      local t0, polls = socket.gettime(), 0
      while not ctx:is_done() and socket.gettime() - t0 < 5 do
        socket.select({ { getfd = function() return fd end } }, nil, context.timeout())
        context.step(0)
        polls = polls + 1
      end
      print("cause", ctx:cause())
      print("polls", polls, "elapsed", socket.gettime() - t0)
      stop()
      print("after stop", context.timeout())
    ]])
    assert.are.equal(0, rc, out)
    assert.matches("timeout\t0.05\n", out)
    assert.matches("cause\tsignal SIGUSR1", out)
    local polls, elapsed = out:match("polls\t(%d+)\telapsed\t([%d.e-]+)")
    assert.is_true(tonumber(polls) >= 1 and tonumber(elapsed) < SLACK, out)
    assert.matches("after stop\tnil", out)
  end)

  it("is found when libev's default loop was made before (a second runtime in the process)", function()
    -- the loop's fd is known when lcontext makes the loop; a runtime that
    -- finds the loop made (here: lcontext loaded again in the same state,
    -- as busted's insulation does) finds its epoll fd by a probe
    local out, rc = H.child([[
      local c1 = require "lcontext"
      local fd1 = c1.pollfd()
      for k in pairs(package.loaded) do
        if k:match("^lcontext") then package.loaded[k] = nil end
      end
      local c2 = require "lcontext"
      local socket = require "socket"
      print("fds", c1 ~= c2, fd1, c2.pollfd())
      local srv = assert(socket.bind("127.0.0.1", 0))
      local ip, port = srv:getsockname()
      local a = assert(socket.connect(ip, port))
      local b = assert(srv:accept())
      local t = c2.go(function() return c2.wait_fd(c2.background(), b, "r") end)
      c2.step(0)
      a:send("x")
      local r = socket.select({ { getfd = function() return c2.pollfd() end } }, nil, 2)
      print("readable", #r)
      c2.step(0)
      print("status", t:status())
    ]])
    assert.are.equal(0, rc, out)
    local same, fd1, fd2 = out:match("fds\t(%a+)\t(%d+)\t(%d+)")
    assert.are.equal("true", same, out)
    assert.are.equal(fd1, fd2, out)
    assert.matches("readable\t1", out)
    assert.matches("status\tok", out)
  end)

  it("raises, saying why, when libev's backend is not epoll", function()
    local out, rc = H.child([[
      local context = require "lcontext"
      print(pcall(context.pollfd))
      print("timeout", context.timeout(), context.step(0)) -- the rest works
    ]], { sh = "LIBEV_FLAGS=2; export LIBEV_FLAGS;" }) -- 2: select
    assert.are.equal(0, rc, out)
    assert.matches("false\t[^\n]*context.pollfd: libev's loop has no pollable fd %(its backend is not epoll", out)
    assert.matches("timeout\tnil\tfalse", out)
  end)

  it("raises for arguments; in the C host's own loop it says why (examples/embed)", function()
    assert.has_error(function() context.pollfd(3) end, "bad argument #1 to 'pollfd' (no value expected)")
  end)
end)

describe("context.timeout()", function()
  it("is nil with nothing timed, 0 with work ready, ~d for a sleep of d", function()
    context.step(0)
    assert.is_nil(context.timeout())
    local t = context.go(function() return context.sleep(bg, 0.2) end)
    assert.are.equal(0, context.timeout()) -- the task is ready to start
    local t0 = now()
    context.step(0)
    local d = context.timeout()
    assert.is_number(d)
    assert.is_true(d > 0 and d <= 0.2 + TICK, "timeout " .. tostring(d))
    -- waking at each timeout() reaches the sleep's end, never before it
    host_loop(0.2 + SLACK)
    assert.is_true(now() - t0 >= 0.2 - EPS)
    assert.is_true(t:wait())
    assert.is_nil(context.timeout())
  end)

  it("follows a waited-on deadline, and an fd wait alone is untimed", function()
    local a, b = tcp_pair()
    local c, cancel = context.with_timeout(bg, 0.3)
    local t = context.go(function() return context.wait_fd(c, b, "r") end)
    context.step(0)
    local d = context.timeout()
    assert.is_true(d > 0 and d <= 0.3 + TICK, "timeout " .. tostring(d))
    cancel()
    context.step(0)
    assert.is_nil(context.timeout())
    assert.are.same({ nil, context.canceled }, { t:wait() })
    local t2 = context.go(function() return context.wait_fd(bg, b, "r") end)
    context.step(0)
    assert.is_nil(context.timeout(), "an fd wait has no time")
    a:send("x")
    host_loop(SLACK)
    assert.is_true(t2:wait())
  end)

  it("is 0 while a task that only yields keeps work ready after a drain round", function()
    local n = 0
    local t = context.go(function()
      for _ = 1, 3000 do n = n + 1; coroutine.yield() end
    end)
    context.step(0)
    assert.is_true(n > 0 and n < 3000, n .. " resumptions")
    assert.are.equal(0, context.timeout())
    host_loop(SLACK)
    assert.are.equal(3000, n)
    assert.are.equal("ok", t:status())
  end)

  it("raises for arguments (a mix-up with with_timeout)", function()
    assert.has_error(function() context.timeout(1) end,
      "bad argument #1 to 'timeout' (no value expected; context.with_timeout(parent, seconds) makes a context)")
  end)

  describe("under a virtual clock", function()
    local clock
    after_each(function() if clock then clock:uninstall(); clock = nil end end)

    it("is nil for virtual timers: only clock:advance moves them", function()
      clock = context.virtual_clock()
      local t = context.go(function() return context.sleep(bg, 5) end)
      context.step(0)
      assert.is_nil(context.timeout())
      clock:advance(5)
      assert.is_true(t:wait())
    end)

    it("with autojump: 0, and step(0) jumps to the next due time", function()
      clock = context.virtual_clock{ autojump = true }
      local woke = {}
      local t = context.go(function()
        context.sleep(bg, 5); woke[#woke + 1] = clock:now()
        context.sleep(bg, 2); woke[#woke + 1] = clock:now()
      end)
      context.step(0) -- the task parks on its first sleep
      assert.are.equal(0, context.timeout())
      local r0 = h.now()
      host_loop(SLACK)
      assert.are.same({ 5, 7 }, woke)
      assert.are.equal("ok", t:status())
      assert.is_true(h.now() - r0 < SLACK, "virtual time took real time")
    end)

    it("with autojump but an fd waited on: nil (no jump past a real wait)", function()
      local a, b = tcp_pair()
      clock = context.virtual_clock{ autojump = true }
      local c, cancel = context.with_timeout(bg, 10)
      local t = context.go(function() return context.wait_fd(c, b, "r") end)
      context.step(0)
      assert.is_nil(context.timeout())
      context.step(0)
      assert.are.equal(0, clock:now())
      a:send("x")
      host_loop(SLACK)
      assert.is_true(t:wait())
      assert.are.equal(0, clock:now())
      cancel()
    end)
  end)
end)

describe("the host loop pattern", function()
  it("runs tasks, deadlines, sleeps and fd waits until step returns false", function()
    local a, b = tcp_pair()
    local log = {}
    local t0 = now()
    local req, cancel = context.with_timeout(bg, 0.15)
    local slow = context.go(function()
      local ok, err = context.sleep(req, 5)
      log[#log + 1] = "slow"
      return ok, err
    end)
    local reader = context.go(function()
      local ok = context.wait_fd(bg, b, "r")
      log[#log + 1] = "reader"
      return ok and b:receive(1)
    end)
    context.go(function()
      context.sleep(bg, 0.05)
      log[#log + 1] = "writer"
      a:send("y")
    end)
    local polls = host_loop(2 + SLACK)
    cancel()
    local elapsed = now() - t0
    assert.are.same({ "writer", "reader", "slow" }, log)
    assert.are.same({ nil, context.deadline_exceeded }, { slow:wait() })
    assert.are.equal("y", reader:wait())
    assert.is_true(elapsed >= 0.15 - EPS and elapsed < 0.15 + SLACK, elapsed .. " s")
    assert.is_true(polls >= 2 and polls < 200, polls .. " polls") -- it slept, it did not spin
    assert.are.equal(0, core.sched_stats().fd_waits)
  end)

  it("step inside a task raises; pollfd and timeout answer there", function()
    local t = context.go(function()
      local ok, err = pcall(context.step, 0)
      return ok, err, context.timeout(), context.pollfd()
    end)
    local ok, err, to, fd = t:wait()
    assert.is_false(ok)
    assert.matches("context.step: cannot run the loop from inside a task", err)
    assert.is_true(to == nil or type(to) == "number", tostring(to))
    assert.are.equal(context.pollfd(), fd)
  end)
end)
