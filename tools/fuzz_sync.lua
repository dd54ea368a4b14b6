--- tools/fuzz_sync.lua — the structured-concurrency ops both API fuzzers
-- share (tools/fuzz_api.lua on libev, tools/fuzz_ngx.lua on lcontext.ngx):
-- channels (send, recv, select over cases, close), semaphores, events,
-- spawned tasks cancelled mid-wait, shields, task:wait(ctx).
--
--   local FS = dofile("tools/fuzz_sync.lua")(context, E)
--   E.violate(fmt, ...)   report a violation
--   E.go(fn)              start fn as a task (in nginx: inside a request)
--   E.ctx()               a context that ends within ~30 ms (sometimes done)
--   FS.ops                { name, weight, fn } entries for the op table
--   FS.check(final)       invariants; final: every task of these ops has
--                         ended (the loop ran dry), so totals must add up
--
-- The model, per channel: each value sent is a fresh number; a send that
-- returned true put it in (to a receiver or the buffer), one that failed
-- did not. Then: no value is received twice, none that was never offered,
-- none whose send failed (and a send whose value was received did not
-- fail); a receive gets nil, false only once the channel is closed; a
-- failed send or receive ends with an err of its context, which is done.
-- At the end, what was sent is exactly what was received plus what is
-- still buffered. Per semaphore: units held never exceed its size, nor go
-- below what the model's holders hold; at the end none is held and nobody
-- waits. A spawned task cancelled while it waits on background() (sleep,
-- done, select, recv, acquire, event) ends with the task's err, and its
-- context is done; a shield's body runs to its end through the cancel.
return function(context, E)
  local R = math.random
  local bg = context.background()
  local CANCELED, DEADLINE = context.canceled, context.deadline_exceeded
  local violate = E.violate
  local show = function(v) return type(v) == "string" and ("%q"):format(v) or tostring(v) end

  local S = { chans = {}, sems = {}, spawned = {}, shields = {}, events = {}, vid = 0, tasks = {} }
  local FS = {}
  local pcall = require("lcontext.check").pcall -- (Lua 5.1: a pcall a task may wait in)
  -- every task these ops start, to know when they have all ended
  local function go(fn)
    local t = E.go(fn)
    if t then S.tasks[#S.tasks + 1] = t end
  end

  --- FS.running() -> how many tasks of these ops still run
  function FS.running()
    local keep, n = {}, 0
    for _, t in ipairs(S.tasks) do
      if t:status() == "running" then n = n + 1; keep[n] = t end
    end
    S.tasks = keep
    return n
  end

  local function is_err(e) return e == CANCELED or e == DEADLINE end
  -- an error the fuzzer injected (E.fault: fuzz_ngx's failing semaphore waits)
  local function fault(e) return E.fault ~= nil and E.fault(tostring(e)) end

  -- {=== channels ===
  local function new_chan()
    local c = { ch = context.channel(R(0, 3)), ok = {}, fail = {}, got = {}, offered = {},
                closed = false, id = #S.chans + 1 }
    S.chans[#S.chans + 1] = c
    return c
  end
  local function pick_chan()
    if #S.chans == 0 or (#S.chans < 8 and R(6) == 1) then return new_chan() end
    return S.chans[R(#S.chans)]
  end
  local function offer(c)
    S.vid = S.vid + 1
    c.offered[S.vid] = true
    return S.vid
  end
  local function received(c, v, how)
    if type(v) ~= "number" or not c.offered[v] then
      return violate("channel %d: %s got %s, never offered", c.id, how, show(v))
    end
    if c.got[v] then violate("channel %d: value %d received twice", c.id, v) end
    if c.fail[v] then violate("channel %d: value %d received, but its send failed", c.id, v) end
    c.got[v] = true
  end
  local function sent(c, v, ok, err, ctx, how)
    if ok == true then
      c.ok[v] = true
    elseif ok == nil then
      c.fail[v] = true
      if c.got[v] then violate("channel %d: %s of %d failed (%s), but it was received", c.id, how, v, show(err)) end
      if not is_err(err) or not ctx:is_done() then
        violate("channel %d: %s failed with %s, its context done: %s", c.id, how, show(err), tostring(ctx:is_done()))
      end
    else
      violate("channel %d: %s returned %s", c.id, how, show(ok))
    end
  end
  local CLOSED = "send on a closed channel"
  local function send_one(c)
    local ctx, v = E.ctx(), offer(c)
    local ok, r, err = pcall(c.ch.send, c.ch, ctx, v)
    if not ok then
      c.fail[v] = true
      if not fault(r) and (not tostring(r):find(CLOSED, 1, true) or not c.closed) then
        violate("channel %d: send raised %s", c.id, show(r))
      end
      if c.got[v] then violate("channel %d: send of %d raised, but it was received", c.id, v) end
      return
    end
    sent(c, v, r, err, ctx, "send")
  end
  local function recv_one(c)
    local ctx = E.ctx()
    local v, ok = c.ch:recv(ctx)
    if ok == true then received(c, v, "recv")
    elseif ok == false then
      if not c.closed then violate("channel %d: recv gave nil, false on an open channel", c.id) end
    elseif not is_err(ok) or not ctx:is_done() then
      violate("channel %d: recv failed with %s, its context done: %s", c.id, show(ok), tostring(ctx:is_done()))
    end
  end
  local function select_one()
    local ctx, cases, who = E.ctx(), {}, {}
    local n = R(1, 3)
    for k = 1, n do
      local c = pick_chan()
      if R(2) == 1 and not c.closed then
        local v = offer(c)
        cases[k], who[k] = c.ch:send_case(v), { c, v }
      else
        cases[k], who[k] = c.ch:recv_case(), { c }
      end
    end
    cases[n + 1] = ctx
    local ok, i, case, v, rok = pcall(context.select, (table.unpack or unpack)(cases, 1, n + 1))
    if not ok then
      local closed = tostring(i):find(CLOSED, 1, true)
      if not closed and not fault(i) then violate("select over cases raised %s", show(i)) end
      for k = 1, n do if who[k][2] then who[k][1].fail[who[k][2]] = true end end
      return
    end
    for k = 1, n do -- the losing send cases did not send
      local c, sv = who[k][1], who[k][2]
      if sv and k ~= i then
        c.fail[sv] = true
        if c.got[sv] then violate("channel %d: a losing send case's value %d was received", c.id, sv) end
      end
    end
    if i == n + 1 then
      if not ctx:is_done() then violate("select: the context won, but it is not done") end
    elseif type(i) ~= "number" or i < 1 or i > n then
      violate("select over cases returned %s", show(i))
    elseif who[i][2] then
      if case.kind ~= "send" then violate("select: case %d is a send, got %s", i, show(case.kind)) end
      who[i][1].ok[who[i][2]] = true
    elseif rok == true then received(who[i][1], v, "select")
    elseif rok == false then
      if not who[i][1].closed then violate("select: a receive case gave nil, false on an open channel") end
    else
      violate("select: receive case %d gave %s, %s", i, show(v), show(rok))
    end
  end
  local function close_one()
    local c = pick_chan()
    if c.closed then
      if pcall(c.ch.close, c.ch) then violate("channel %d: closed twice without an error", c.id) end
      return
    end
    c.closed = true
    c.ch:close()
  end
  -- ===}

  -- {=== semaphores ===
  local function pick_sem()
    if #S.sems == 0 or (#S.sems < 4 and R(5) == 1) then
      local size = R(1, 4)
      S.sems[#S.sems + 1] = { sem = context.semaphore(size), size = size, held = 0, id = #S.sems + 1 }
    end
    return S.sems[R(#S.sems)]
  end
  local function sem_one(s)
    local w = R(1, s.size)
    local ctx = E.ctx()
    local ok, err
    if R(4) == 1 then ok = s.sem:try_acquire(w) else ok, err = s.sem:acquire(ctx, w) end
    if ok == true then
      s.held = s.held + w
      if s.sem:held() > s.size then violate("semaphore %d: %d held of %d", s.id, s.sem:held(), s.size) end
      pcall(context.sleep, bg, R() * 0.004) -- (an injected fault may fail it)
      s.held = s.held - w
      s.sem:release(w)
    elseif ok == nil and (not is_err(err) or not ctx:is_done()) then
      violate("semaphore %d: acquire failed with %s, its context done: %s", s.id, show(err), tostring(ctx:is_done()))
    end
  end
  -- ===}

  -- {=== spawned tasks, shields ===
  local WAITS = {
    function() return context.sleep(bg, 5) end,
    function() return nil, bg:done() end,
    function() return context.select(bg, 5) end,
    function() return context.channel():recv(bg) end,
    function() local sem = context.semaphore(1); sem:acquire(bg); return sem:acquire(bg) end,
    function() return context.event():wait(bg) end,
    function() local t = context.go(function() context.sleep(bg, 0.05) end); return t:wait() end,
  }
  local function spawn_cancel()
    local k = R(#WAITS)
    local rec = { k = k, cause = R(2) == 1 and ("fuzz " .. R(99)) or nil }
    go(function()
      local parent = R(3) == 1 and E.ctx() or bg
      rec.t = context.spawn(parent, function(tctx)
        if context.current() ~= tctx then violate("spawn: current() is not the task's context") end
        return WAITS[k]()
      end)
      rec.parent = parent
      pcall(context.sleep, bg, R() * 0.01) -- (an injected fault may fail it)
      rec.t:cancel(rec.cause)
    end)
    S.spawned[#S.spawned + 1] = rec
  end
  local function shield_one()
    local rec = {}
    go(function()
      rec.t = context.spawn(bg, function()
        return context.shield(1, function(sctx)
          local ok = context.sleep(bg, 0.004)
          return ok and "kept" or ("cut: " .. tostring(sctx:err()))
        end)
      end)
      pcall(context.sleep, bg, R() * 0.004)
      rec.t:cancel()
    end)
    S.shields[#S.shields + 1] = rec
  end
  local function event_one()
    if #S.events == 0 or R(3) == 1 then S.events[#S.events + 1] = context.event() end
    local ev = S.events[R(#S.events)]
    if R(3) == 1 then ev:set() return end
    local ctx = E.ctx()
    local ok, err = ev:wait(ctx)
    if ok == true then
      if not ev:is_set() then violate("event: wait returned true, not set") end
    elseif not is_err(err) or not ctx:is_done() then
      violate("event: wait failed with %s", show(err))
    end
  end
  -- ===}

  -- tasks killed while they wait (E.kill, E.settle: nginx only) leave
  -- nothing behind: no waiter in the queue, no unit granted to the dead
  local function kill_waiters()
    if not (E.kill and E.settle) then return end
    local sem, ch = context.semaphore(1), context.channel()
    local blocked = 0
    local ts = {}
    go(function() -- the holder: takes the unit, then waits to be told
      assert(sem:acquire(bg))
      ts[1] = context.go(function() blocked = blocked + 1; return sem:acquire(bg) end)
      ts[2] = context.go(function() blocked = blocked + 1; return ch:recv(bg) end)
      ts[3] = context.go(function() blocked = blocked + 1; return ch:send(bg, "ghost") end)
      ts[4] = context.go(function()
        blocked = blocked + 1
        return context.select(ch:recv_case(), ch:send_case("ghost2"), bg)
      end)
    end)
    E.settle()
    if blocked < 4 then return end -- (not started yet: nothing to test this time)
    for _, t in ipairs(ts) do
      if t:status() == "running" then E.kill(t) end
    end
    collectgarbage(); collectgarbage()
    E.settle()
    collectgarbage(); collectgarbage()
    if sem:waiting() ~= 0 then violate("kill: a killed acquire is still waiting") end
    if sem:held() ~= 1 then violate("kill: %d units held, the holder's 1 expected", sem:held()) end
    sem:release()
    if not sem:try_acquire() then violate("kill: a killed waiter was granted the unit") end
    if ch:try_send("x") then violate("kill: a killed receiver still takes values") end
    local v, ok = ch:try_recv()
    if ok ~= nil then violate("kill: a killed sender still gives %s", show(v)) end
  end

  FS.ops = {
    { "chan_send", 4, function() local c = pick_chan(); go(function() send_one(c) end) end },
    { "chan_recv", 4, function() local c = pick_chan(); go(function() recv_one(c) end) end },
    { "chan_select", 3, function() go(select_one) end },
    { "chan_try", 2, function()
      local c = pick_chan()
      if R(2) == 1 and not c.closed then
        local v = offer(c)
        if c.ch:try_send(v) then c.ok[v] = true else c.fail[v] = true end
      else
        local v, ok = c.ch:try_recv()
        if ok == true then received(c, v, "try_recv")
        elseif ok == false and not c.closed then violate("channel %d: try_recv nil, false while open", c.id) end
      end
    end },
    { "chan_close", 0.4, close_one },
    { "sem", 4, function() local s = pick_sem(); go(function() sem_one(s) end) end },
    { "event", 2, function() go(event_one) end },
    { "spawn_cancel", 2, spawn_cancel },
    { "shield", 1, shield_one },
    { "kill_waiters", E.kill and 1 or 0, kill_waiters },
    { "dump", 0.5, function()
      local ok, text = pcall(context.dump)
      if not ok or type(text) ~= "string" or not text:find("^lcontext: %d+ live task") then
        violate("context.dump() gave %s", show(text))
      end
    end },
  }

  function FS.check(final)
    for _, s in ipairs(S.sems) do
      local h = s.sem:held()
      if h > s.size or h < s.held then violate("semaphore %d: held %d, size %d, model holders %d", s.id, h, s.size, s.held) end
      if final and (h ~= 0 or s.sem:waiting() ~= 0) then
        violate("semaphore %d at the end: held %d, waiting %d", s.id, h, s.sem:waiting())
      end
    end
    if not final then return end
    local left = FS.running()
    if left > 0 then violate("%d task(s) of the sync ops still running at the end", left) end
    for _, c in ipairs(S.chans) do
      while true do -- what is buffered counts as received
        local v, ok = c.ch:try_recv()
        if ok ~= true then break end
        received(c, v, "the final drain")
      end
      for v in pairs(c.ok) do
        if not c.got[v] then violate("channel %d: value %d was sent, never received nor buffered", c.id, v) end
      end
      for v in pairs(c.got) do
        if not c.ok[v] then violate("channel %d: value %d received, its send never returned true", c.id, v) end
      end
    end
    for _, rec in ipairs(S.spawned) do
      local t = rec.t
      if t and t:status() == "running" then
        violate("spawned task (wait %d) still running after its cancel (its context: %s)\n%s", rec.k,
          tostring(t:context():err()), context.dump())
      elseif t then
        local r = { t:wait() }
        if r[1] ~= nil or not (r[2] == CANCELED or (rec.parent ~= bg and is_err(r[2])) or fault(r[2])) then
          violate("spawned task (wait %d): ended with %s, %s", rec.k, show(r[1]), show(r[2]))
        end
        if not t:context():is_done() then violate("spawned task: its context is not done once it ended") end
      end
    end
    for _, rec in ipairs(S.shields) do
      if rec.t and rec.t:status() ~= "running" then
        local r, err = rec.t:wait()
        if r ~= "kept" and not fault(err) then violate("shield: the body gave %s, %s", show(r), show(err)) end
      elseif rec.t then
        violate("shield task still running at the end")
      end
    end
    S.spawned, S.shields = {}, {}
  end

  return FS
end
