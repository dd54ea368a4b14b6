-- Acceptance tests of fd readiness (README, "Scheduler"): context.wait_fd(ctx, fd, mode)
-- with LuaSocket objects (:getfd()) and with integer fds, and context.fd()
-- waitables in context.select. Sockets are local TCP pairs on 127.0.0.1,
-- port 0. Assertions are made on the main thread.
local context = require "lcontext"
local core = require "lcontext.core"
local socket = require "socket"

local H = require "spec.sched_helpers"
local h = require "spec.helpers"
local SLACK, EPS, is, at_least, at_most, matches, idle = H.SLACK, H.EPS, H.is, H.at_least, H.at_most, H.matches, H.idle

local bg = context.background()
local canceled, deadline_exceeded = context.canceled, context.deadline_exceeded

local now = context.now

local function fd_waits() return core.sched_stats().fd_waits end

-- A connected pair of TCP sockets on the loopback; closed after the test.
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

local function intfd(sock)
  local n = h.tointeger(sock:getfd())
  assert(n and n >= 0, "no fd")
  return n
end

-- no task error goes unnoticed; every test closes its sockets and leaves
-- the scheduler idle
local guard_start, guard_check = H.task_guard(function()
  for _, s in ipairs(open_sockets) do s:close() end
end)
before_each(function()
  open_sockets = {}
  guard_start()
end)
after_each(guard_check)

describe("context.wait_fd", function()
  it("a LuaSocket becomes readable after the peer writes", function()
    local a, b = tcp_pair()
    local line
    local t = context.go(function()
      local r = table.pack(context.wait_fd(bg, b, "r"))
      line = b:receive("*l")
      return r
    end)
    assert.is_true(context.step(0.02))
    assert.are.equal("running", t:status(), "readable before the peer wrote")
    assert.are.equal(1, fd_waits())
    assert(a:send("hello\n"))
    assert.is_false(context.run())
    assert.are.same({ n = 1, true }, t:wait())
    assert.are.equal("hello", line)
  end)

  it("works with an integer fd", function()
    local a, b = tcp_pair()
    local fd = intfd(b)
    local t = context.go(function() return context.wait_fd(bg, fd, "r") end)
    assert.is_true(context.step(0.02))
    assert.are.equal("running", t:status(), "readable before the peer wrote")
    context.go(function() context.sleep(bg, 0.01); a:send("x\n") end)
    assert.is_true(t:wait())
    assert.are.equal("x", b:receive("*l"))
  end)

  it("wakes only once the peer wrote, never before", function()
    local a, b = tcp_pair()
    local t0 = now()
    local woke
    local t = context.go(function()
      local ok = context.wait_fd(bg, b, "r")
      woke = now()
      return ok
    end)
    context.go(function() context.sleep(bg, 0.03); a:send("late\n") end)
    assert.is_true(t:wait())
    at_least(woke - t0, 0.03, "wait_fd")
    at_most(woke - t0, 0.03 + SLACK, "wait_fd")
    assert.are.equal("late", b:receive("*l"))
  end)

  it("a connected socket is writable at once (\"w\" and \"rw\")", function()
    local a = tcp_pair()
    local t0 = now()
    assert.is_true(context.wait_fd(bg, a, "w"))           -- main thread
    assert.is_true(context.wait_fd(bg, intfd(a), "rw"))
    local t = context.go(function()
      return context.wait_fd(bg, a, "w"), context.wait_fd(bg, a, "rw")
    end)
    assert.are.same({ n = 2, true, true }, table.pack(t:wait()))
    at_most(now() - t0, SLACK, "writable")
  end)

  it("\"w\" suspends while the send buffer is full, until the peer reads", function()
    local a, b = tcp_pair()
    a:settimeout(0)
    b:settimeout(0)
    local chunk = ("x"):rep(65536)
    local sent = 0
    for _ = 1, 2000 do -- fill the socket buffers
      local n, err, partial = a:send(chunk)
      if not n then sent = sent + (partial or 0); assert.are.equal("timeout", err); break end
      sent = sent + n
    end
    assert.is_true(sent > 0)
    local t = context.go(function() return context.wait_fd(bg, a, "w") end)
    assert.is_true(context.step(0.02))
    assert.are.equal("running", t:status(), "writable with a full buffer")
    local drained = 0
    local reader = context.go(function()
      while t:status() == "running" do
        -- wait for data, or for the writer to be done
        if context.select(context.fd(b, "r"), t) == 2 then break end
        local data, err, partial = b:receive(65536)
        drained = drained + #(data or partial or "")
        assert(data or err == "timeout", err)
      end
    end)
    assert.is_true(t:wait())
    reader:wait()
    assert.is_true(drained > 0)
  end)

  it("\"rw\" returns for a writable socket that has no data", function()
    local _, b = tcp_pair()
    local t = context.go(function() return context.wait_fd(bg, b, "rw") end)
    assert.is_true(t:wait())
  end)

  it("returns nil, canceled when the context is cancelled while waiting", function()
    local a, b = tcp_pair()
    local c, cancel = context.with_cancel(bg)
    local t0 = now()
    local t = context.go(function() return context.wait_fd(c, b, "r") end)
    context.go(function() context.sleep(bg, 0.01); cancel() end)
    local r = table.pack(t:wait())
    assert.are.equal(2, r.n)
    assert.is_nil(r[1])
    is(r[2], canceled, "err")
    at_most(now() - t0, 0.01 + SLACK, "cancelled wait_fd")
    assert.are.equal(0, fd_waits(), "the fd wait was left behind")
    -- data arriving later wakes nothing
    assert(a:send("later\n"))
    assert.is_false(context.run())
    assert.are.equal("later", b:receive("*l"))
  end)

  it("returns nil, deadline_exceeded after the context's deadline", function()
    local _, b = tcp_pair()
    local t0 = now()
    local c = context.with_timeout(bg, 0.03)
    local t = context.go(function() return context.wait_fd(c, intfd(b), "r") end)
    local v, err = t:wait()
    assert.is_nil(v)
    is(err, deadline_exceeded, "err")
    at_least(now() - t0, 0.03, "deadline")
    at_most(now() - t0, 0.03 + SLACK, "deadline")
  end)

  it("returns nil, err at once for a context already done, arming nothing", function()
    local a, b = tcp_pair()
    assert(a:send("ready\n")) -- even a ready fd loses to a done context
    context.step(0.01)
    local c, cancel = context.with_cancel(bg)
    cancel()
    assert.are.same({ n = 2, nil, canceled }, table.pack(context.wait_fd(c, b, "r")))
    assert.are.equal(0, fd_waits())
    local t = context.go(function() return context.wait_fd(c, b, "r") end)
    local v, err = t:wait()
    assert.is_nil(v)
    is(err, canceled, "err")
  end)

  it("from the main thread runs the loop until the fd is ready", function()
    local a, b = tcp_pair()
    context.go(function() context.sleep(bg, 0.02); a:send("main\n") end)
    local t0 = now()
    assert.is_true(context.wait_fd(bg, b, "r"))
    at_least(now() - t0, 0.02, "main-thread wait_fd")
    assert.are.equal("main", b:receive("*l"))
  end)

  it("wakes every task waiting on the same fd", function()
    local a, b = tcp_pair()
    local woke = 0
    for _ = 1, 5 do
      context.go(function() if context.wait_fd(bg, b, "r") then woke = woke + 1 end end)
    end
    context.step()
    assert.are.equal(5, fd_waits())
    a:send("all\n")
    context.run()
    assert.are.equal(5, woke)
    assert.are.equal("all", b:receive("*l"))
  end)

  it("a peer that closes makes the socket readable (EOF)", function()
    local a, b = tcp_pair()
    local t = context.go(function()
      assert(context.wait_fd(bg, b, "r"))
      return b:receive("*l")
    end)
    context.go(function() context.sleep(bg, 0.01); a:close() end)
    local v, err = t:wait()
    assert.is_nil(v)
    assert.are.equal("closed", err)
  end)

  it("a listening socket becomes readable when a client connects", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    open_sockets[#open_sockets + 1] = srv
    local ip, port = srv:getsockname()
    local t = context.go(function()
      assert(context.wait_fd(bg, srv, "r"))
      local c = assert(srv:accept())
      open_sockets[#open_sockets + 1] = c
      assert(context.wait_fd(bg, c, "r"))
      return c:receive("*l")
    end)
    context.step(0.01)
    assert.are.equal("running", t:status())
    local cl = assert(socket.connect(ip, port))
    open_sockets[#open_sockets + 1] = cl
    cl:send("hi server\n")
    assert.are.equal("hi server", t:wait())
  end)

  it("an fd wait keeps run() going, without a deadlock error, until another process writes", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    open_sockets[#open_sockets + 1] = srv
    local _, port = srv:getsockname()
    local t = context.go(function()
      assert(context.wait_fd(bg, srv, "r")) -- nothing but the fd can end this
      local c = assert(srv:accept())
      open_sockets[#open_sockets + 1] = c
      assert(context.wait_fd(bg, c, "r"))
      return c:receive("*l")
    end)
    assert.is_true(context.run("nowait"))
    -- the child: the interpreter running the suite (LuaSocket is installed
    -- for every runtime the suite runs on)
    assert(h.execute(h.LUA .. " -e \"require 'socket'\" >/dev/null 2>&1"),
      "cannot start " .. h.LUA .. " with LuaSocket")
    local child = (h.LUA .. " -e \"local s = require 'socket'; s.sleep(0.05); " ..
      "local c = assert(s.connect('127.0.0.1', %d)); c:send('from child\\n'); " ..
      "s.sleep(0.5); c:close()\" >/dev/null 2>&1 &"):format(port)
    os.execute(child)
    local t0 = now()
    assert.is_false(context.run())
    at_most(now() - t0, 5, "run()")
    assert.are.equal("from child", t:wait())
  end)

  it("serves several clients at once (echo)", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    srv:settimeout(0)
    open_sockets[#open_sockets + 1] = srv
    local ip, port = srv:getsockname()
    local N = 20
    local replies = {}
    local server = context.go(function()
      for _ = 1, N do
        context.wait_fd(bg, srv, "r")
        local c = assert(srv:accept())
        open_sockets[#open_sockets + 1] = c
        context.go(function()
          context.wait_fd(bg, c, "r")
          local line = assert(c:receive("*l"))
          context.wait_fd(bg, c, "w")
          c:send("echo " .. line .. "\n")
        end)
      end
    end)
    for i = 1, N do
      context.go(function()
        context.sleep(bg, (i % 5) * 0.002)
        local c = assert(socket.connect(ip, port))
        open_sockets[#open_sockets + 1] = c
        c:send(i .. "\n")
        context.wait_fd(bg, c, "r")
        replies[i] = c:receive("*l")
      end)
    end
    assert.is_false(context.run())
    assert.are.equal("ok", server:status())
    for i = 1, N do assert.are.equal("echo " .. i, replies[i]) end
  end)

  it("rejects bad arguments", function()
    local _, b = tcp_pair()
    local function raises(pat, ...)
      local ok, msg = pcall(context.wait_fd, ...)
      assert.is_false(ok, "no error for " .. pat)
      matches(tostring(msg), pat)
    end
    raises("bad argument #1 to '[^']*wait_fd'", nil, b, "r")
    raises("bad argument #2 to '[^']*wait_fd'", bg, "not an fd", "r")
    raises("bad argument #2 to '[^']*wait_fd'", bg, -1, "r")
    raises("bad argument #2 to '[^']*wait_fd'", bg, 1.5, "r")
    raises("bad argument #3 to '[^']*wait_fd'", bg, b, "x")
    local closed = socket.tcp()
    closed:close()
    raises("bad argument #2 to '[^']*wait_fd'", bg, closed, "r")
    assert.is_false((pcall(context.fd, b, "x")))
    assert.is_false((pcall(context.fd, "nope", "r")))
    assert.are.equal(0, fd_waits())
  end)
end)

describe("context.select's waitables", function()
  it("a table that is no context.fd(...) is not a waitable; a bad fd in one is a bad fd", function()
    local ok, msg = pcall(context.select, {})
    assert.is_false(ok)
    assert.is_truthy(tostring(msg):find("bad argument #1 to 'select' (waitable expected (a context, "
      .. "a task, a number of seconds or context.fd(fd, mode)), got table)", 1, true), msg)
    ok, msg = pcall(context.select, 0.01, { mode = "r" })
    assert.is_false(ok)
    assert.is_truthy(tostring(msg):find("bad argument #2 to 'select' (waitable expected", 1, true), msg)
    ok, msg = pcall(context.select, { fd = -1 })
    assert.is_false(ok)
    assert.is_truthy(tostring(msg):find("bad argument #1 to 'select' (bad file descriptor)", 1, true), msg)
    ok, msg = pcall(context.select, { fd = "x" })
    assert.is_false(ok)
    assert.is_truthy(tostring(msg):find("(bad file descriptor)", 1, true), msg)
  end)
end)

describe("context.fd in context.select", function()
  it("the fd fires when the peer writes", function()
    local a, b = tcp_pair()
    local w = context.fd(b, "r")
    local t = context.go(function() return context.select(10, w) end)
    context.go(function() context.sleep(bg, 0.01); a:send("sel\n") end)
    local i, got = t:wait()
    assert.are.equal(2, i)
    is(got, w, "waitable")
    assert.are.equal("sel", b:receive("*l"))
  end)

  it("works with an integer fd, from the main thread", function()
    local a, b = tcp_pair()
    context.go(function() context.sleep(bg, 0.01); a:send("int\n") end)
    local c = context.with_cancel(bg)
    assert.are.equal(2, (context.select(c, context.fd(intfd(b), "r"), 10)))
    assert.are.equal("int", b:receive("*l"))
  end)

  it("a sleep wins when nothing is written, and the fd wait is gone", function()
    local a, b = tcp_pair()
    local t0 = now()
    assert.are.equal(2, (context.select(context.fd(b, "r"), 0.02)))
    at_least(now() - t0, 0.02, "select")
    assert.are.equal(0, fd_waits(), "the losing fd wait was left behind")
    -- a later write wakes nothing
    a:send("after\n")
    assert.is_false(context.run())
    assert.are.equal("after", b:receive("*l"))
  end)

  it("a cancelled context wins over an idle fd; nothing is left behind", function()
    local _, b = tcp_pair()
    local c, cancel = context.with_cancel(bg)
    local t = context.go(function() return context.select(context.fd(b, "r"), c, 10) end)
    context.go(function() context.sleep(bg, 0.01); cancel() end)
    assert.are.equal(2, (t:wait()))
    idle("after select")
  end)

  it("a ready fd and a done context at call time: the lowest index wins", function()
    local a, b = tcp_pair()
    a:send("ready\n")
    context.step(0.01)
    local c, cancel = context.with_cancel(bg)
    cancel()
    assert.are.equal(1, (context.select(c, context.fd(b, "r"))))
    local i = context.select(context.fd(a, "w"), c)
    -- the fd is ready, but readiness of an fd is only known by polling: the
    -- done context at index 2 may win; either way nothing stays armed
    assert.is_true(i == 1 or i == 2)
    assert.are.equal(0, fd_waits())
  end)
end)
