-- sync_spec.lua — context.channel, context.semaphore, context.event and
-- their select cases (lua/lcontext/sync.lua), and task:wait(ctx).
--
-- Backend-neutral: runs under busted on libev and unchanged inside a real
-- nginx worker (spec/ngx/shared.sh). Assertions run on the main thread (in
-- nginx: the request's light thread); every test leaves the scheduler idle.
local context = require "lcontext"
local h = require "spec.helpers"
local S = require "spec.sched_helpers"
local B = require "spec.backend"

local bg = context.background()

local guard_start, guard_check = S.task_guard()
before_each(guard_start)
after_each(guard_check)

-- a context that ends after s seconds, and its cancel (called by the test)
local function timeout(s) return context.with_timeout(bg, s) end

describe("context.channel", function()
  it("unbuffered: a send waits for its receiver, and hands the value over", function()
    local ch = context.channel()
    local log = {}
    local sender = context.go(function()
      log[#log + 1] = "send"
      local ok = ch:send(bg, "v1")
      log[#log + 1] = "sent"
      return ok
    end)
    context.sleep(bg, 0.02)
    assert.are.same({ "send" }, log) -- no receiver yet: still waiting
    assert.are.equal(0, ch:len())
    local v, ok = ch:recv(bg)
    assert.are.equal("v1", v)
    assert.is_true(ok)
    assert.is_true(sender:wait())
    assert.are.same({ "send", "sent" }, log)
  end)

  it("unbuffered: a receiver waits for its sender", function()
    local ch = context.channel()
    local r = context.go(function() return ch:recv(bg) end)
    context.sleep(bg, 0.01)
    assert.are.equal("running", r:status())
    assert.is_true(ch:send(bg, 42))
    local v, ok = r:wait()
    assert.are.equal(42, v)
    assert.is_true(ok)
  end)

  it("buffered: sends do not wait until the buffer is full; FIFO; len and cap", function()
    local ch = context.channel(3)
    assert.are.equal(3, ch:cap())
    for i = 1, 3 do assert.is_true(ch:send(bg, i)) end
    assert.are.equal(3, ch:len())
    assert.is_false(ch:try_send(4))
    local fourth = context.go(function() return ch:send(bg, 4) end)
    context.sleep(bg, 0.01)
    assert.are.equal("running", fourth:status())
    assert.are.equal(1, (ch:recv(bg))) -- makes room: the waiting sender's value enters
    assert.is_true(fourth:wait())
    local got = {}
    for _ = 1, 3 do got[#got + 1] = (ch:recv(bg)) end
    assert.are.same({ 2, 3, 4 }, got)
    assert.are.equal(0, ch:len())
  end)

  it("carries nil and false as values", function()
    local ch = context.channel(2)
    ch:send(bg, nil)
    ch:send(bg, false)
    local v1, ok1 = ch:recv(bg)
    local v2, ok2 = ch:recv(bg)
    assert.is_nil(v1); assert.is_true(ok1)
    assert.is_false(v2); assert.is_true(ok2)
  end)

  it("keeps the order of many senders and receivers (FIFO queues)", function()
    local ch = context.channel()
    local got = {}
    for i = 1, 5 do context.go(function() ch:send(bg, i) end) end
    context.sleep(bg, 0.01) -- all five wait, in order
    local rs = {}
    for i = 1, 5 do rs[i] = context.go(function() got[#got + 1] = (ch:recv(bg)) end) end
    for i = 1, 5 do rs[i]:wait() end
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
  end)

  it("close: receivers drain the buffer, then get nil, false; waiting receivers wake", function()
    local ch = context.channel(2)
    ch:send(bg, "a")
    ch:close()
    assert.is_true(ch:is_closed())
    assert.are.same({ "a", true }, { ch:recv(bg) })
    assert.are.same({ nil, false }, { ch:recv(bg) })
    assert.are.same({ nil, false }, { ch:try_recv() })
    local ch2 = context.channel()
    local r = context.go(function() return ch2:recv(bg) end)
    context.sleep(bg, 0.01)
    ch2:close()
    assert.are.same({ nil, false }, { r:wait() })
  end)

  it("close: sending on a closed channel raises, in a waiting sender too; closing twice raises", function()
    local ch = context.channel()
    local s = context.go(function() return ch:send(bg, 1) end)
    context.sleep(bg, 0.01)
    context.on_error(function() end) -- the sender's raise is expected
    ch:close()
    local ok, err = s:wait()
    assert.is_nil(ok)
    assert.matches("send on a closed channel", tostring(err))
    assert.has_error(function() ch:send(bg, 2) end)
    local ok2, e2 = pcall(ch.close, ch)
    assert.is_false(ok2)
    assert.matches("close of a closed channel", e2)
  end)

  it("a send or recv whose ctx ends first returns nil, err and leaves nothing behind", function()
    local ch = context.channel()
    local ctx = timeout(0.02)
    local t0 = context.now()
    local ok, err = ch:send(ctx, "lost")
    assert.is_nil(ok)
    assert.are.equal(context.deadline_exceeded, err)
    S.at_least(context.now() - t0, 0.02, "send")
    -- the value was not left in the channel: a receiver finds nothing
    assert.are.same({ nil, nil }, { ch:try_recv() })
    local v, e = ch:recv(timeout(0.01))
    assert.is_nil(v)
    assert.are.equal(context.deadline_exceeded, e)
    -- and no receiver was left behind: a send finds nobody
    assert.is_false(ch:try_send("x"))
    local cctx, cancel = context.with_cancel(bg)
    cancel()
    assert.are.same({ nil, context.canceled }, { ch:recv(cctx) })
  end)

  it("a done ctx wins over a ready channel (the ctx is looked at first)", function()
    local ch = context.channel(1)
    ch:send(bg, 1)
    local c, cancel = context.with_cancel(bg)
    cancel()
    assert.are.same({ nil, context.canceled }, { ch:recv(c) })
    assert.are.equal(1, ch:len())
  end)

  it("checks its arguments", function()
    h.argerr(1, "channel", function() context.channel(-1) end)
    h.argerr(1, "channel", function() context.channel(1.5) end)
    h.argerr(1, "channel", function() context.channel("x") end)
    local ch = context.channel()
    h.argerr(1, "send", function() ch:send(nil, 1) end)
    h.argerr(1, "recv", function() ch:recv("ctx") end)
    h.argerr(0, "send", function() ch.send({}, bg, 1) end)
    h.argerr(0, "len", function() ch.len(nil) end)
  end)

  it("has a tostring", function()
    local ch = context.channel(2)
    ch:send(bg, 1)
    assert.are.equal("context.channel (1/2)", tostring(ch))
  end)
end)

describe("context.select with channel cases", function()
  it("takes the first ready case in argument order, with the value", function()
    local a, b = context.channel(1), context.channel(1)
    b:send(bg, "B")
    a:send(bg, "A")
    local i, case, v, ok = context.select(b:recv_case(), a:recv_case())
    assert.are.equal(1, i)
    assert.are.equal("recv", case.kind)
    assert.are.equal("B", v)
    assert.is_true(ok)
    local j, _, w = context.select(b:recv_case(), a:recv_case())
    assert.are.equal(2, j)
    assert.are.equal("A", w)
  end)

  it("waits for a case, a context or a sleep; the losers leave nothing behind", function()
    local a, out = context.channel(), context.channel()
    context.go(function() context.sleep(bg, 0.02); a:send(bg, "late") end)
    local i, case, v = context.select(bg, a:recv_case(), out:send_case("x"), 5)
    assert.are.equal(2, i)
    assert.are.equal("late", v)
    assert.are.equal(a, case.ch)
    -- out's send case lost: nothing waits to send on out
    assert.are.same({ nil, nil }, { out:try_recv() })
    -- a sleep wins: both cases leave
    local t0 = context.now()
    local j = context.select(a:recv_case(), out:send_case("y"), 0.02)
    assert.are.equal(3, j)
    S.at_least(context.now() - t0, 0.02, "select's sleep")
    assert.is_false(a:try_send("z"))
    assert.are.same({ nil, nil }, { out:try_recv() })
  end)

  it("a send case completes when a receiver comes", function()
    local out = context.channel()
    local r = context.go(function() context.sleep(bg, 0.01); return out:recv(bg) end)
    local i, case, v = context.select(out:send_case("sent"), 5)
    assert.are.equal(1, i)
    assert.are.equal("send", case.kind)
    assert.is_nil(v)
    assert.are.same({ "sent", true }, { r:wait() })
  end)

  it("a receive case sees a close as nil, false", function()
    local ch = context.channel()
    context.go(function() context.sleep(bg, 0.01); ch:close() end)
    local i, _, v, ok = context.select(ch:recv_case(), 5)
    assert.are.equal(1, i)
    assert.is_nil(v)
    assert.is_false(ok)
  end)

  it("a context that is done wins in its place", function()
    local c, cancel = context.with_cancel(bg)
    cancel()
    local ch = context.channel(1)
    ch:send(bg, 1)
    assert.are.equal(1, (context.select(c, ch:recv_case())))
    local i, _, v = context.select(ch:recv_case(), c) -- the case, ready, comes first
    assert.are.equal(1, i)
    assert.are.equal(1, v)
  end)

  it("the multiplexer: one loop over many channels with a deadline", function()
    local chans, got = {}, {}
    for i = 1, 4 do
      chans[i] = context.channel()
      context.go(function()
        for k = 1, 3 do chans[i]:send(bg, i * 10 + k) end
        chans[i]:close()
      end)
    end
    local ctx, cancel = timeout(5)
    local open = 4
    while open > 0 do
      local cases = {}
      for i = 1, 4 do cases[i] = chans[i]:recv_case() end
      cases[5] = ctx
      local i, _, v, ok = context.select((table.unpack or unpack)(cases))
      assert.is_true(i <= 4, "the deadline did not end it")
      if ok then got[#got + 1] = v else open = open - 1 end
      if not ok then chans[i] = context.channel() end -- a closed one stays ready
    end
    cancel()
    table.sort(got)
    assert.are.same({ 11, 12, 13, 21, 22, 23, 31, 32, 33, 41, 42, 43 }, got)
  end)

  it("sending in a case on a closed channel raises; a bad case argument is named", function()
    local ch = context.channel()
    ch:close()
    assert.has_error(function() context.select(ch:send_case(1), 1) end)
    local ok, err = pcall(context.select, context.channel():recv_case(), "nope")
    assert.is_false(ok)
    assert.is_true(h.names_arg(err, 2, "select"), err)
  end)
end)

describe("context.semaphore", function()
  it("acquire and release, weighted; try_acquire never waits", function()
    local sem = context.semaphore(3)
    assert.is_true(sem:acquire(bg, 2))
    assert.is_true(sem:try_acquire())
    assert.is_false(sem:try_acquire())
    assert.are.equal(3, sem:held())
    sem:release(3)
    assert.are.equal(0, sem:held())
    assert.are.equal(3, sem:size())
  end)

  it("bounds how many tasks run at once", function()
    local sem = context.semaphore(2)
    local running, peak = 0, 0
    local ts = {}
    for i = 1, 6 do
      ts[i] = context.go(function()
        assert(sem:acquire(bg))
        running = running + 1
        if running > peak then peak = running end
        context.sleep(bg, 0.005)
        running = running - 1
        sem:release()
      end)
    end
    for i = 1, 6 do ts[i]:wait() end
    assert.are.equal(2, peak)
    assert.are.equal(0, sem:held())
  end)

  it("is FIFO: a large waiter is not starved by smaller ones", function()
    local sem = context.semaphore(3)
    assert.is_true(sem:acquire(bg, 2))
    local order = {}
    local big = context.go(function()
      assert(sem:acquire(bg, 3)); order[#order + 1] = "big"; sem:release(3)
    end)
    context.sleep(bg, 0.01)
    -- one unit is free, but the big one waits first: a small one queues
    assert.is_false(sem:try_acquire(1))
    local small = context.go(function()
      assert(sem:acquire(bg, 1)); order[#order + 1] = "small"; sem:release(1)
    end)
    context.sleep(bg, 0.01)
    assert.are.same({}, order)
    assert.are.equal(2, sem:waiting())
    sem:release(2)
    big:wait(); small:wait()
    assert.are.same({ "big", "small" }, order)
  end)

  it("a waiter whose ctx ends holds nothing, and lets those behind it go", function()
    local sem = context.semaphore(2)
    assert.is_true(sem:acquire(bg, 1))
    local got
    local big = context.go(function() return sem:acquire(timeout(0.02), 2) end)
    context.sleep(bg, 0.005)
    local small = context.go(function() got = sem:acquire(bg, 1); return got end)
    context.sleep(bg, 0.005)
    assert.is_nil(got) -- queued behind big
    assert.are.same({ nil, context.deadline_exceeded }, { big:wait() })
    assert.is_true(small:wait())
    assert.are.equal(2, sem:held())
    sem:release(2)
    assert.are.equal(0, sem:waiting())
  end)

  it("checks its arguments", function()
    h.argerr(1, "semaphore", function() context.semaphore(0) end)
    h.argerr(1, "semaphore", function() context.semaphore(2.5) end)
    local sem = context.semaphore(2)
    h.argerr(2, "acquire", function() sem:acquire(bg, 3) end)
    h.argerr(2, "acquire", function() sem:acquire(bg, 0) end)
    h.argerr(1, "acquire", function() sem:acquire(nil) end)
    h.argerr(1, "try_acquire", function() sem:try_acquire(-1) end)
    local ok, err = pcall(sem.release, sem, 1)
    assert.is_false(ok)
    assert.matches("released 1 unit, but only 0 are held", err)
  end)
end)

describe("context.event", function()
  it("set once wakes every waiter; later waits return at once", function()
    local ev = context.event()
    local ts = {}
    for i = 1, 3 do ts[i] = context.go(function() return ev:wait(bg) end) end
    context.sleep(bg, 0.01)
    assert.is_false(ev:is_set())
    assert.is_true(ev:set())
    assert.is_false(ev:set())
    for i = 1, 3 do assert.is_true(ts[i]:wait()) end
    assert.is_true(ev:wait(bg))
    assert.are.equal("context.event (set)", tostring(ev))
  end)

  it("a wait bounded by ctx; usable in select", function()
    local ev = context.event()
    assert.are.same({ nil, context.deadline_exceeded }, { ev:wait(timeout(0.01)) })
    context.go(function() context.sleep(bg, 0.01); ev:set() end)
    local i, w = context.select(5, ev)
    assert.are.equal(2, i)
    assert.are.equal(ev, w)
    assert.is_true(ev:context():is_done())
  end)
end)

describe("task:wait(ctx)", function()
  it("returns nil, ctx:err() when ctx ends first; the task goes on", function()
    local t = context.go(function() context.sleep(bg, 0.05); return "done" end)
    local t0 = context.now()
    assert.are.same({ nil, context.deadline_exceeded }, { t:wait(timeout(0.01)) })
    assert.is_true(context.now() - t0 < 0.05)
    assert.are.equal("running", t:status())
    assert.are.equal("done", t:wait(bg))
    assert.are.equal("done", t:wait())
    h.argerr(1, "wait", function() t:wait("x") end)
  end)
end)

describe("sync metrics", function()
  it("counts blocked operations and what is buffered, and adds them to metrics_text", function()
    local ch = context.channel(2)
    ch:send(bg, 1)
    local r = context.go(function() return context.channel():recv(timeout(0.03)) end)
    context.sleep(bg, 0.01)
    local s = context.sync_stats()
    assert.is_true(s.channel_blocked_recv >= 1)
    assert.is_true(s.channel_buffered >= 1)
    r:wait()
    assert.are.equal(0, context.sync_stats().channel_blocked_recv)
    if context.metrics_text then
      assert.matches("lcontext_channel_blocked", context.metrics_text())
      assert.matches("lcontext_semaphore_waiting", context.metrics_text())
    end
  end)
end)

-- (B is required so that the ngx runner loads this file's backend view)
assert(B.name)

describe("a blocked call whose coroutine dies", function()
  B.it_libev("leaves nothing behind: no record in the queue, no unit held",
    "the test closes a parked task's coroutine (coroutine.close, Lua 5.4); nginx kills light threads, which spec/ngx's abort checks cover",
    function()
      if not coroutine.close then return end
      local sem = context.semaphore(1)
      sem:acquire(bg)
      local ch = context.channel()
      local cos = {}
      local t1 = context.go(function() cos[1] = coroutine.running(); return sem:acquire(bg) end)
      local t2 = context.go(function() cos[2] = coroutine.running(); return ch:send(bg, "ghost") end)
      context.sleep(bg, 0.01)
      assert.are.equal(1, sem:waiting())
      coroutine.close(cos[1]); coroutine.close(cos[2])
      context.on_error(function() end)
      t1:wait(); t2:wait()
      h.full_gc(); h.full_gc()
      assert.are.equal(0, sem:waiting())
      sem:release()
      assert.is_true(sem:try_acquire()) -- the dead waiter was granted nothing
      sem:release()
      assert.are.same({ nil, nil }, { ch:try_recv() }) -- no ghost sender
      assert.are.equal(0, context.sync_stats().channel_blocked_send)
    end)
end)

describe("a blocked call at the scheduler's edges", function()
  B.it_libev("units granted to a task closed before it ran again go back to the semaphore",
    "closes a parked task's coroutine (coroutine.close, Lua 5.4); nginx kills light threads, which spec/ngx's abort checks cover",
    function()
      if not coroutine.close then return end
      local sem = context.semaphore(2)
      assert.is_true(sem:acquire(bg, 2))
      local co
      local t = context.go(function() co = coroutine.running(); return sem:acquire(bg, 2) end)
      local later = context.go(function() return sem:acquire(bg, 1) end)
      context.sleep(bg, 0.01)
      assert.are.equal(2, sem:waiting())
      sem:release(2) -- granted to t, which has not run since ...
      coroutine.close(co) -- ... and never will
      context.on_error(function() end)
      t:wait()
      assert.is_true(later:wait()) -- the units went back, and on to the next
      assert.are.equal(1, sem:held())
      sem:release()
      assert.are.equal(0, sem:held())
    end)

  B.it_libev("a select closed from outside while it waits leaves none of its cases behind",
    "closes a parked task's coroutine (coroutine.close, Lua 5.4)",
    function()
      if not coroutine.close then return end
      local a, b = context.channel(), context.channel()
      local co
      local t = context.go(function()
        co = coroutine.running()
        return context.select(a:recv_case(), b:send_case("x"), 60)
      end)
      context.sleep(bg, 0.01)
      coroutine.close(co)
      context.on_error(function() end)
      t:wait()
      assert.is_false(a:try_send("lost?"))
      assert.are.same({ nil, nil }, { b:try_recv() })
    end)

  B.it_libev("cannot wait where a C function is on the stack: a clear error, nothing armed",
    "a comparator of table.sort cannot yield: the error names the call on libev",
    function()
      local ch = context.channel()
      local t = context.go(function()
        return pcall(table.sort, { 3, 1, 2 }, function(x, y)
          ch:recv(bg)
          return x < y
        end)
      end)
      local ok, err = t:wait()
      assert.is_false(ok)
      assert.matches("cannot wait here", err)
      assert.is_true(ch:try_send(1) == false) -- no receiver was left queued
      assert.are.equal(0, context.sync_stats().channel_blocked_recv)
    end)

  B.it_libev("a task resumed from outside lcontext while it waits in a call: the call raises, nothing is left behind",
    "resumes a task's coroutine with coroutine.resume, which nginx's light threads do not allow",
    function()
      -- (the C calls of Lua 5.3+; on 5.1 and LuaJIT the Lua version parks
      -- as every other wait does, and a foreign resume is not noticed)
      if not require("lcontext.check").core_sync then return end
      local ch = context.channel()
      local sem = context.semaphore(1)
      sem:acquire(bg)
      local co1, co2
      local t1 = context.go(function() co1 = coroutine.running(); return pcall(ch.recv, ch, bg) end)
      local t2 = context.go(function() co2 = coroutine.running(); return pcall(sem.acquire, sem, bg) end)
      context.sleep(bg, 0.01)
      local ok, a, b = coroutine.resume(co1)
      assert.is_true(ok)
      assert.is_false(a)
      assert.matches("context.recv: the task was resumed from outside lcontext", b)
      sem:release() -- granted to t2, which is then resumed by another
      ok, a, b = coroutine.resume(co2)
      assert.is_true(ok)
      assert.is_false(a)
      assert.matches("context.acquire: the task was resumed from outside lcontext", b)
      assert.is_false(ch:try_send(1)) -- no receiver left queued
      assert.are.equal(0, sem:held()) -- the units granted went back
      assert.are.equal(0, sem:waiting())
      t1:wait(); t2:wait() -- the loop finds them ended
    end)

  B.it_libev("the main thread waiting on a channel nothing can fill gets a deadlock error",
    "nginx has no main thread that runs the loop",
    function()
      local ch = context.channel()
      local ok, err = pcall(ch.recv, ch, bg)
      assert.is_false(ok)
      assert.matches("deadlock", err)
      assert.are.same({ nil, nil }, { ch:try_recv() })
      assert.is_true(context.go(function() return ch:send(bg, 1) end) ~= nil)
      assert.are.same({ 1, true }, { ch:recv(bg) })
    end)

  it("a task blocked in a call shows what it waits on, and the wait ends when its task is cancelled", function()
    local ch = context.channel()
    local sem = context.semaphore(1)
    sem:acquire(bg)
    local t1 = context.spawn(bg, function() return ch:send(bg, "v") end)
    local t2 = context.spawn(bg, function() return sem:acquire(bg, 1) end)
    context.sleep(bg, 0.01)
    local text = context.dump()
    assert.matches("waits on: channel send", text)
    assert.matches("waits on: semaphore acquire of 1", text)
    t1:cancel(); t2:cancel()
    assert.are.same({ nil, context.canceled }, { t1:wait() })
    assert.are.same({ nil, context.canceled }, { t2:wait() })
    assert.are.equal(0, sem:waiting())
    sem:release()
    assert.are.same({ nil, nil }, { ch:try_recv() })
  end)
end)

describe("the rules, at their edges", function()
  it("a close does not win over the context: a receiver woken by it with ctx done gets ctx:err()", function()
    local ch = context.channel()
    local c, cancel = context.with_cancel(bg)
    local r = context.go(function() return ch:recv(c) end)
    context.sleep(bg, 0.01)
    cancel()
    ch:close() -- before r runs again
    assert.are.same({ nil, context.canceled }, { r:wait() })
  end)

  it("the semaphore looks at ctx first, also when a unit is free", function()
    local sem = context.semaphore(1)
    local c, cancel = context.with_cancel(bg)
    cancel()
    assert.are.same({ nil, context.canceled }, { sem:acquire(c) })
    assert.are.equal(0, sem:held())
  end)

  it("select sees an ended task in its place, before a ready case", function()
    local t = context.go(function() return 1 end)
    t:wait()
    local ch = context.channel(1)
    ch:send(bg, "v")
    local i, w = context.select(t, ch:recv_case())
    assert.are.equal(1, i)
    assert.are.equal(t, w)
    assert.are.equal(1, ch:len())
  end)

  it("a dead receiver is never handed a value, even before any collection", function()
    if not coroutine.close then return end -- (coroutine.close: Lua 5.4)
    local ch = context.channel()
    local co
    local r = context.go(function() co = coroutine.running(); return ch:recv(bg) end)
    context.sleep(bg, 0.01)
    collectgarbage("stop")
    finally(function() collectgarbage("restart") end)
    coroutine.close(co)
    context.on_error(function() end)
    r:wait()
    assert.is_false(ch:try_send("lost?"))
    collectgarbage("restart")
  end)
end)
