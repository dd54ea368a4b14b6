-- tasks_spec.lua — tasks that own a context (lua/lcontext/tasks.lua):
-- context.spawn, task:cancel, task:context, context.current,
-- context.shield, and the bound rule: inside a spawned task every wait also
-- ends when the task's context ends.
--
-- Backend-neutral: runs under busted on libev and unchanged inside a real
-- nginx worker (spec/ngx/shared.sh). Every test leaves the scheduler idle.
local context = require "lcontext"
local h = require "spec.helpers"
local S = require "spec.sched_helpers"
local B = require "spec.backend"

local bg = context.background()

local guard_start, guard_check = S.task_guard()
before_each(guard_start)
after_each(guard_check)

-- spawn fn, let it start waiting, cancel it (with cause), return its results
local function cancelled(fn, cause)
  local t = context.spawn(bg, fn)
  context.sleep(bg, 0.01)
  assert.are.equal("running", t:status())
  t:cancel(cause)
  return t:wait()
end

describe("context.spawn", function()
  it("runs fn(task_ctx, ...) in a task; task_ctx is a child of ctx", function()
    local key = context.key("k")
    local parent = context.with_value(bg, key, "v")
    local seen
    local t = context.spawn(parent, function(tctx, a, b)
      seen = { tctx:value(key), a, b, context.current() == tctx }
      return a + b
    end, 1, 2)
    assert.are.equal(3, t:wait())
    assert.are.same({ "v", 1, 2, true }, seen)
    assert.are.equal(context.canceled, t:context():err()) -- cancelled once fn returned
  end)

  it("is a context method too: ctx:spawn(fn)", function()
    local t = bg:spawn(function() return "m" end)
    assert.are.equal("m", t:wait())
  end)

  it("task:cancel(cause) ends a sleep on another context, with the task's err", function()
    local ok, err, cause = cancelled(function(tctx)
      local r, e = context.sleep(bg, 5)
      return r, e, tctx:cause()
    end, "stop")
    assert.is_nil(ok)
    assert.are.equal(context.canceled, err)
    assert.are.equal("stop", cause)
  end)

  it("bounds ctx:done() on another context, select, task:wait and fd-free waits", function()
    local other = context.with_cancel(bg)
    assert.are.equal(context.canceled, (cancelled(function() return other:done() end)))
    assert.are.same({ nil, context.canceled },
      { cancelled(function() return context.select(other, 5) end) })
    local long = context.go(function() context.sleep(bg, 0.1) end)
    assert.are.same({ nil, context.canceled },
      { cancelled(function() return long:wait() end) })
    long:wait()
  end)

  B.it_libev("bounds wait_fd", "nginx has no fd waits (cosockets instead)", function()
    local socket = require "socket"
    local srv = assert(socket.bind("127.0.0.1", 0))
    finally(function() srv:close() end)
    -- nothing connects: the listening socket never becomes readable
    assert.are.same({ nil, context.canceled },
      { cancelled(function() return context.wait_fd(bg, srv, "r") end) })
  end)

  it("bounds channel, semaphore and event waits", function()
    local ch = context.channel()
    assert.are.same({ nil, context.canceled }, { cancelled(function() return ch:recv(bg) end) })
    assert.are.same({ nil, context.canceled }, { cancelled(function() return ch:send(bg, 1) end) })
    assert.is_false(ch:try_send(1)) -- the cancelled receiver left nothing
    local sem = context.semaphore(1)
    sem:acquire(bg)
    assert.are.same({ nil, context.canceled }, { cancelled(function() return sem:acquire(bg) end) })
    assert.are.equal(0, sem:waiting())
    sem:release()
    local ev = context.event()
    assert.are.same({ nil, context.canceled }, { cancelled(function() return ev:wait(bg) end) })
  end)

  it("bounds the helpers: a retry that knows nothing of the task stops", function()
    local calls = 0
    local r = { cancelled(function()
      return context.retry(bg, function()
        calls = calls + 1
        return nil, "flaky"
      end, { attempts = 100, base = 0.002, jitter = "none", max = 0.002 })
    end) }
    assert.is_nil(r[1])
    assert.is_true(calls < 100, "retry stopped early")
  end)

  it("a raise in fn is reported with its traceback, and cancels task_ctx with it as the cause", function()
    local reported
    context.on_error(function(err, tb) reported = { err, tb } end)
    local t = context.spawn(bg, function() error("boom") end)
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.matches("boom", err)
    assert.matches("boom", reported[1])
    assert.matches("traceback", reported[2])
    assert.are.equal(context.canceled, t:context():err())
    assert.matches("boom", tostring(t:context():cause()))
  end)

  it("a cancelled parent cancels the task's context", function()
    local parent, cancel = context.with_cancel(bg)
    local t = context.spawn(parent, function() return context.sleep(bg, 5) end)
    context.sleep(bg, 0.01)
    cancel()
    assert.are.same({ nil, context.canceled }, { t:wait() })
  end)

  it("a task started by go has no context of its own", function()
    local t = context.go(function() return context.current() end)
    assert.are.equal(bg, t:wait())
    local ok, err = pcall(t.cancel, t)
    assert.is_false(ok)
    assert.matches("started by context.go", err)
    assert.has_error(function() t:context() end)
  end)

  it("checks its arguments", function()
    h.argerr(1, "spawn", function() context.spawn(nil, function() end) end)
    h.argerr(2, "spawn", function() context.spawn(bg, 42) end)
    local ok, err = pcall(function() local t = context.spawn(bg, function() end); t.cancel({}) end)
    assert.is_false(ok)
    assert.matches("bad self", err)
    B.run()
  end)
end)

describe("context.current", function()
  it("is background outside a spawned task", function()
    assert.are.equal(bg, context.current())
  end)
end)

describe("context.shield", function()
  it("runs cleanup that the task's cancel cannot interrupt, and keeps its values", function()
    local key = context.key("req")
    local log = {}
    local t = context.spawn(context.with_value(bg, key, "r1"), function(tctx)
      context.sleep(bg, 5) -- cancelled here
      local a, b = context.shield(1, function(sctx)
        local ok = context.sleep(bg, 0.02) -- not cut short by the task's cancel
        log[#log + 1] = sctx:value(key)
        return ok, tctx:err()
      end)
      log[#log + 1] = context.current() == tctx
      return a, b
    end)
    context.sleep(bg, 0.01)
    t:cancel()
    assert.are.same({ true, context.canceled }, { t:wait() })
    assert.are.same({ "r1", true }, log)
  end)

  it("is bounded by its own timeout", function()
    local t0 = context.now()
    local ok, err = context.shield(0.02, function() return context.sleep(bg, 5) end)
    assert.is_nil(ok)
    assert.are.equal(context.deadline_exceeded, err)
    S.at_least(context.now() - t0, 0.02, "shield")
    assert.are.equal(bg, context.current()) -- gone once it returned
  end)

  it("re-raises fn's error once the shield is gone", function()
    local ok, err = pcall(context.shield, 1, function() error("inside") end)
    assert.is_false(ok)
    assert.matches("inside", err)
    assert.are.equal(bg, context.current())
  end)

  it("checks its arguments", function()
    h.argerr(1, "shield", function() context.shield("1", function() end) end)
    h.argerr(1, "shield", function() context.shield(0 / 0, function() end) end)
    h.argerr(2, "shield", function() context.shield(1, nil) end)
  end)
end)

describe("context.dump", function()
  it("lists every live task: where its function is, what it waits on, spawned ones under their parent", function()
    local ch, sem = context.channel(), context.semaphore(1)
    sem:acquire(bg)
    local parent = context.spawn(bg, function(tctx)
      context.spawn(tctx, function() local v = ch:recv(bg); return v end)
      local ok = context.sleep(tctx, 5)
      return ok
    end)
    local waiter = context.go(function() local ok = sem:acquire(bg, 1); return ok end)
    finally(function() -- (a failed assertion must not leave them waiting)
      parent:cancel()
      if sem:held() > 0 then sem:release() end
      if not ch:is_closed() then ch:close() end
    end)
    context.sleep(bg, 0.02)
    local text = context.dump()
    assert.matches("^lcontext: 3 live tasks", text)
    assert.matches("task %d %(function at [^)]*tasks_spec%.lua:%d+%): parked for", text)
    assert.matches("waits on: channel recv %(context%.channel %(0/0%)%)", text)
    assert.matches("waits on: semaphore acquire of 1", text)
    assert.matches("waits on: a sleep, due in", text)
    assert.matches("context: context%.Background%.WithCancel", text)
    assert.matches("at: [^\n]*tasks_spec%.lua:%d+", text)
    -- the child is indented under the task that spawned it
    local lines = {}
    for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
    local child
    for i, l in ipairs(lines) do
      if l:find("^  task %d") then child = i end
    end
    assert.is_truthy(child, text)
    -- a file gets the same text
    local got = {}
    local file = { write = function(_, s) got[#got + 1] = s end }
    assert.are.equal(context.dump(file), table.concat(got))
    h.argerr(1, "dump", function() context.dump(42) end)
    parent:cancel()
    sem:release()
    ch:close()
    parent:wait(); waiter:wait()
    sem:release()
    B.run()
    assert.matches("^lcontext: 0 live tasks", context.dump())
  end)
end)

describe("the bound is looked at first", function()
  it("in a cancelled task, ready operations fail too: a loop on a ready channel stops", function()
    local ch = context.channel(1)
    local t = context.spawn(bg, function(tctx)
      local n = 0
      while true do
        if not ch:send(bg, n) then break end -- always room: the receive below makes it
        local v = ch:recv(bg)
        if v == nil then break end
        n = n + 1
        if n % 50 == 0 then coroutine.yield() end -- (lets the canceller run)
      end
      return n, tctx:err()
    end)
    -- the canceller yields too
    context.go(function()
      for _ = 1, 5 do coroutine.yield() end
      t:cancel()
    end)
    local n, err = t:wait()
    assert.is_true(n > 0)
    assert.are.equal(context.canceled, err)
    local sem = context.semaphore(1)
    local ev = context.event()
    ev:set()
    local r = { cancelled = context.spawn(bg, function()
      context.sleep(bg, 5) -- cancelled here; then every ready op fails
      return { sem:acquire(bg) }, { ev:wait(bg) }, { context.sleep(bg, 0) }, { context.select(1 - 1) }
    end) }
    context.sleep(bg, 0.01)
    r.cancelled:cancel()
    local a, b, c2, d = r.cancelled:wait()
    assert.are.same({ nil, context.canceled }, a)
    assert.are.same({ nil, context.canceled }, b)
    assert.are.same({ nil, context.canceled }, c2)
    assert.are.same({ nil, context.canceled }, d)
    assert.are.equal(0, sem:held())
  end)
end)
