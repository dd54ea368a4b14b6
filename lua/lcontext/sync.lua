--- lcontext.sync: channels, semaphores and events for tasks (README,
-- "Structured concurrency"; docs/concurrency.md). Written once, on the
-- backend's public waits, so it is the same on libev and in nginx.
--
--   local ch = context.channel([capacity])   -- Go's chan: 0 = unbuffered
--   ch:send(ctx, v)   -> true | nil, err     -- err: ctx:err()
--   ch:recv(ctx)      -> v, true | nil, false (closed and drained) | nil, err
--   ch:close(); ch:len(); ch:cap(); ch:is_closed()
--   context.select(ctx, ch:recv_case(), out:send_case(v), 1.5)
--                     -> i, case [, v, ok]   (a receive case adds v, ok)
--   local sem = context.semaphore(n)         -- Go's x/sync/semaphore
--   sem:acquire(ctx [, w]) -> true | nil, err; sem:try_acquire([w]); sem:release([w])
--   local ev = context.event()               -- set once
--   ev:set(); ev:is_set(); ev:wait(ctx) -> true | nil, err; select(ev, ...)
--
-- How a task waits here. A blocked operation is a record in the channel's
-- (or the semaphore's) queue, and the task parks on the backend's select
-- over its ctx and a signal: a cancel context of its own. The task that
-- completes the operation (the other side of the handoff, a release, a
-- close) does the whole transfer itself, marks the record done and cancels
-- the signal; the woken task only reads the outcome. So an operation that
-- was completed is never lost, even when ctx ended in the same instant:
-- done wins. A record whose wait ended otherwise is unlinked before its
-- task goes on: a case that loses leaves nothing behind.
--
-- The ctx is looked at first: an operation on a context that is done fails
-- with its err() even when the channel is ready (a cancelled task stops at
-- its next channel operation, as at any other wait).
return function(context)
  local check = require "lcontext.check"
  local background, with_cancel = context.background, context.with_cancel
  local tonumber, pairs = tonumber, pairs
  local running, co_status = coroutine.running, coroutine.status
  local type, error, tostring, getmetatable, setmetatable, select, rawget =
    type, error, tostring, getmetatable, setmetatable, select, rawget
  local floor = math.floor
  local pack, unpack, pcall = check.pack, check.unpack, check.pcall
  local check_ctx, argerr, tname = check.ctx, check.argerr, check.tname
  local backend_select = context.select
  local task_status = check.task_methods.status
  local native_pcall = _G.pcall -- (for what cannot wait: no proxy on 5.1)

  local M = {}

  -- what a blocked call's signal stands for, for context.dump: signal ->
  -- its records (held by the call's frame while it waits); an event's
  -- context -> the event. Weak both ways: the value refers to its key,
  -- which a weak-keyed table alone would keep forever on 5.1 and LuaJIT.
  local blocked_on = setmetatable({}, { __mode = "kv" })
  local event_of = setmetatable({}, { __mode = "kv" })
  check.blocked_on, check.event_of = blocked_on, event_of

  -- figures for metrics(): live objects are counted by the collector
  local stats = { channels = 0, semaphores = 0, sends = 0, recvs = 0,
                  blocked_send = 0, blocked_recv = 0, blocked_acquire = 0 }
  -- sends, receives, blocked sends, receives, acquires (the C objects
  -- count their own: counters is replaced below)
  local function counters()
    return stats.sends, stats.recvs, stats.blocked_send, stats.blocked_recv,
      stats.blocked_acquire
  end
  local live_ch = setmetatable({}, { __mode = "k" })
  local live_sem = setmetatable({}, { __mode = "k" })

  -- {=== wait queues: doubly linked lists of records ===
  -- a queue: { head = rec | nil, tail = rec | nil, n = count }
  local function q_new() return { n = 0 } end
  local function q_push(q, r)
    r.q = q
    r.prev = q.tail
    r.next = nil
    if q.tail then q.tail.next = r else q.head = r end
    q.tail = r
    q.n = q.n + 1
  end
  local function q_remove(r)
    local q = r.q
    if not q then return end
    if r.prev then r.prev.next = r.next else q.head = r.next end
    if r.next then r.next.prev = r.prev else q.tail = r.prev end
    r.q, r.prev, r.next = nil, nil, nil
    q.n = q.n - 1
  end
  -- the first record of q whose waiter is still waiting (records of a
  -- select that another case already won are dropped on the way)
  local on_dead -- (below: per kind of record)
  local function q_first(q)
    local r = q.head
    while r and (r.w.done or (r.co and co_status(r.co) == "dead")) do
      if r.w.done then q_remove(r) else on_dead(r, true) end -- (on_dead unlinks it)
      r = q.head
    end
    return r
  end
  -- ===}

  -- {=== guards: a blocked call whose coroutine dies ===
  -- A task killed mid-wait (ngx_lua kills a request's light threads; on
  -- libev, coroutine.close of a parked task) never returns to unlink its
  -- records. Each blocked call keeps a guard in its frame; once that frame
  -- is gone the guard is collected, and its finaliser unlinks the records
  -- and gives back what was granted to a call that never returned (a
  -- semaphore's units). Made by a factory, not in the waiting frame: a
  -- closure of a killed frame reads nil for its locals (ngx_lua resets a
  -- killed thread's stack without closing its upvalues).
  local newproxy = rawget(_G, "newproxy")
  -- (dead and all it calls that loops run in finalisers: interpreted only
  -- on LuaJIT, check.interp_only; so on_dead has its own grant loop)
  local dead = check.interp_only(function(recs)
    for k = 1, #recs do
      local r = recs[k]
      if not r.consumed then on_dead(r) end
    end
  end)
  local guard_of
  if newproxy then -- 5.1, LuaJIT: a userdata's finaliser (tables have none)
    -- (the records in the proxy's own metatable: no closure per guard)
    local function proxy_gc(p) dead(getmetatable(p).recs) end
    guard_of = function(recs)
      local p = newproxy(true)
      local mt = getmetatable(p)
      mt.recs, mt.__gc = recs, proxy_gc
      return p
    end
  else -- the list of records itself, with one shared metatable: no closure
    local GUARD = { __gc = function(recs) dead(recs) end }
    guard_of = function(recs) return setmetatable(recs, GUARD) end
  end
  -- ===}

  -- {=== waiters ===
  -- A waiter is one blocked call (a send, a recv, an acquire or a select):
  -- { done = false, fired = index of the record that completed, value, ok,
  --   sig = the context it parks on, fire = its cancel }.
  -- (a single call's record is its own waiter: r.w == r)
  local function new_waiter(r)
    local sig, fire = with_cancel(background())
    r = r or {}
    r.done, r.sig, r.fire = false, sig, fire
    r.co = running() -- (nil on the main thread of 5.1: it never dies)
    return r
  end
  -- complete: the waiter's operation r is done (r.w must not be done)
  local function complete(r, value, ok)
    local w = r.w
    w.done = true
    w.fired = r.index
    w.got, w.ok = value, ok -- (got: a record's own value is what it sends)
    w.fire()
  end
  -- park the running task until its waiter is done or ctx ends (then the
  -- caller unlinks its records). -> nil | err when ctx ended first
  local function park(w, ctx)
    local i, e = backend_select(ctx, w.sig)
    if w.done then return nil end -- completed, whatever else ended meanwhile
    w.fire() -- nothing refers to the signal any more
    if i == nil then return e end -- the spawned task's own context
    if i == 1 then return ctx:err() end
    return "lcontext.sync: woken with nothing done" -- (not reached)
  end

  -- block(r, q, ctx, stat): queue the blocked call's record r (its own
  -- waiter) in q and park until it is done or ctx ends; stats[stat] counts
  -- it meanwhile. -> the pcall of park: ok, err. The guard lives in this
  -- frame, the waiting one; the caller unlinks r (q_remove) afterwards.
  local function block(r, q, ctx, stat)
    new_waiter(r)
    r.w, r.q, r.prev, r.next = r, false, false, false -- (every field it will have)
    local recs = { r }
    local guard = guard_of(recs)
    blocked_on[r.sig] = recs -- (kept alive by the guard, which this frame keeps)
    q_push(q, r) -- armed last: everything above allocates (and may fail), this does not
    stats[stat] = stats[stat] + 1
    local ok, err = pcall(park, r, ctx)
    stats[stat] = stats[stat] - 1
    r.consumed = guard ~= nil
    return ok, err
  end
  -- ===}

  -- {=== channels ===
  local Channel = {}
  Channel.__index = Channel
  Channel.__name = "context.channel"

  local function check_ch(ch, fname)
    if getmetatable(ch) ~= Channel then
      error(("calling '%s' on bad self (context.channel expected, got %s)")
        :format(fname, tname(ch)), 3)
    end
  end

  --- context.channel([capacity]) -> ch (capacity 0, the default: unbuffered,
  -- each send waits for its receiver)
  local c_channel, c_semaphore -- (the C versions where they exist: below)
  function M.channel(capacity)
    if capacity == nil then
      capacity = 0
    elseif type(capacity) ~= "number" or capacity ~= floor(capacity) or capacity < 0
      or capacity > 2^53 then
      argerr("channel", 1, "capacity must be a non-negative integer, got " .. tostring(capacity))
    end
    local ch = c_channel and c_channel(capacity) or setmetatable({
      _cap = capacity, _buf = {}, _head = 1, _count = 0, _closed = false,
      _recvq = q_new(), _sendq = q_new(),
    }, Channel)
    live_ch[ch] = true
    stats.channels = stats.channels + 1
    return ch
  end

  function Channel:__tostring()
    return ("context.channel (%d/%d%s)"):format(self._count, self._cap,
      self._closed and ", closed" or "")
  end

  local function buf_push(ch, v)
    local cap = ch._cap
    local i = ch._head + ch._count
    if i > cap then i = i - cap end
    ch._buf[i] = v
    ch._count = ch._count + 1
  end
  local function buf_pop(ch)
    local h = ch._head
    local v = ch._buf[h]
    ch._buf[h] = nil
    h = h + 1
    if h > ch._cap then h = 1 end
    ch._head = h
    ch._count = ch._count - 1
    return v
  end

  -- the err of the running spawned task's context once it is done (the
  -- bound rule, lua/lcontext/tasks.lua: looked at first, as ctx is, so a
  -- loop on a channel that is always ready still stops), else nil
  local bound = check.bound
  local bound_ctx, MAIN = bound.ctx, bound.MAIN
  local function bound_err()
    if not bound.active then return nil end
    local b = bound_ctx[running() or MAIN]
    return b and b:err()
  end
  -- ctx:err(), or the bound's
  local function err_of(ctx)
    local e = ctx:err()
    if e == nil and bound.active then e = bound_err() end
    return e
  end

  local function closed_error(level)
    error("context.channel: send on a closed channel", level + 1)
  end

  -- try to send v now: true if done (to a waiting receiver or the buffer)
  local function try_send(ch, v)
    local r = q_first(ch._recvq)
    if r then
      q_remove(r)
      complete(r, v, true)
      stats.sends, stats.recvs = stats.sends + 1, stats.recvs + 1
      return true
    end
    if ch._count < ch._cap then
      buf_push(ch, v)
      stats.sends = stats.sends + 1
      return true
    end
    return false
  end

  -- try to receive now: true, v, ok if done (ok false: closed and drained)
  local function try_recv(ch)
    if ch._count > 0 then
      local v = buf_pop(ch)
      local s = q_first(ch._sendq) -- a sender waits for the room just made
      if s then
        q_remove(s)
        buf_push(ch, s.value)
        stats.sends = stats.sends + 1
        complete(s, nil, true)
      end
      stats.recvs = stats.recvs + 1
      return true, v, true
    end
    local s = q_first(ch._sendq)
    if s then -- unbuffered: straight from the sender
      q_remove(s)
      stats.sends, stats.recvs = stats.sends + 1, stats.recvs + 1
      complete(s, nil, true)
      return true, s.value, true
    end
    if ch._closed then return true, nil, false end
    return false
  end

  --- ch:send(ctx, v) -> true | nil, err (ctx ended first: v was not sent).
  -- Raises on a closed channel, as Go panics (close is the sender's call).
  function Channel.send(ch, ctx, v)
    check_ch(ch, "send")
    check_ctx(ctx, "send", 1)
    if ch._closed then closed_error(2) end
    local e = err_of(ctx)
    if e ~= nil then return nil, e end
    if try_send(ch, v) then return true end
    local w = { index = 1, value = v, kind = "send", ch = ch }
    local ok, err = block(w, ch._sendq, ctx, "blocked_send")
    q_remove(w)
    -- done wins: a completed operation stands, even if the wait then failed
    if not ok and not w.done then error(err, 0) end
    if w.done then
      if w.ok == false then -- woken by close: raises, unless ctx ended too
        local ce = err_of(ctx)
        if ce ~= nil then return nil, ce end
        closed_error(2)
      end
      return true
    end
    return nil, err
  end

  --- ch:recv(ctx) -> v, true | nil, false (closed and drained) | nil, err
  function Channel.recv(ch, ctx)
    check_ch(ch, "recv")
    check_ctx(ctx, "recv", 1)
    local e = err_of(ctx)
    if e ~= nil then return nil, e end
    local done, v, ok = try_recv(ch)
    if done then return v, ok end
    local w = { index = 1, kind = "recv", ch = ch }
    local pok, err = block(w, ch._recvq, ctx, "blocked_recv")
    q_remove(w)
    if w.done then -- done wins (even over a failed wait) ...
      if w.ok == false then -- ... but a close carries no value: ctx first
        local ce = err_of(ctx)
        if ce ~= nil then return nil, ce end
      end
      return w.got, w.ok
    end
    if not pok then error(err, 0) end
    return nil, err
  end

  --- ch:try_send(v) -> true | false (would wait); ch:try_recv() -> v, true |
  -- nil, false (closed and drained) | nil, nil (would wait)
  function Channel.try_send(ch, v)
    check_ch(ch, "try_send")
    if ch._closed then closed_error(2) end
    return try_send(ch, v)
  end
  function Channel.try_recv(ch)
    check_ch(ch, "try_recv")
    local done, v, ok = try_recv(ch)
    if done then return v, ok end
    return nil, nil
  end

  --- ch:close(): receivers get what is buffered, then nil, false; blocked
  -- senders raise. Closing twice raises.
  function Channel.close(ch)
    check_ch(ch, "close")
    if ch._closed then error("context.channel: close of a closed channel", 2) end
    ch._closed = true
    local r = q_first(ch._recvq)
    while r do -- (a receiver waits only while the buffer is empty)
      q_remove(r)
      complete(r, nil, false)
      r = q_first(ch._recvq)
    end
    r = q_first(ch._sendq)
    while r do
      q_remove(r)
      complete(r, nil, false)
      r = q_first(ch._sendq)
    end
  end

  --- <close>: `local out <close> = context.channel()` closes it on the way
  -- out (Go's `defer close(out)`), unless it is closed already
  function Channel.__close(ch)
    if getmetatable(ch) == Channel and not ch._closed then ch:close() end
  end

  function Channel.len(ch) check_ch(ch, "len"); return ch._count end
  function Channel.cap(ch) check_ch(ch, "cap"); return ch._cap end
  function Channel.is_closed(ch) check_ch(ch, "is_closed"); return ch._closed end

  -- cases for context.select
  local Case = { __lcontext_case = true, __name = "context.channel case" }
  Case.__index = Case
  function Case:__tostring()
    return ("context.channel %s case"):format(self.kind)
  end

  --- ch:recv_case() -> a select case that receives: select returns i, case,
  -- v, ok (ok false: closed and drained)
  function Channel.recv_case(ch)
    check_ch(ch, "recv_case")
    return setmetatable({ ch = ch, kind = "recv" }, Case)
  end
  --- ch:send_case(v) -> a select case that sends v
  function Channel.send_case(ch, v)
    check_ch(ch, "send_case")
    return setmetatable({ ch = ch, kind = "send", value = v }, Case)
  end
  -- ===}

  -- {=== events ===
  local Event = { __lcontext_case = true, __name = "context.event" }
  Event.__index = Event

  --- context.event() -> ev: set once; every wait ends when it is set
  function M.event()
    local c, set = with_cancel(background())
    local ev = setmetatable({ _ctx = c, _set = set }, Event)
    event_of[c] = ev
    return ev
  end
  local function check_ev(ev, fname)
    if getmetatable(ev) ~= Event then
      error(("calling '%s' on bad self (context.event expected, got %s)")
        :format(fname, tname(ev)), 3)
    end
  end
  function Event:__tostring()
    return "context.event (" .. (self._ctx:is_done() and "set" or "not set") .. ")"
  end
  --- ev:set() -> true the first time, false after
  function Event.set(ev)
    check_ev(ev, "set")
    if ev._ctx:is_done() then return false end
    ev._set()
    return true
  end
  function Event.is_set(ev)
    check_ev(ev, "is_set")
    return ev._ctx:is_done()
  end
  --- ev:wait(ctx) -> true | nil, ctx:err()
  function Event.wait(ev, ctx)
    check_ev(ev, "wait")
    check_ctx(ctx, "wait", 1)
    local e = err_of(ctx)
    if e ~= nil then return nil, e end
    if ev._ctx:is_done() then return true end
    local i, err = backend_select(ctx, ev._ctx)
    if i == 2 then return true end
    if i == nil then return nil, err end
    return nil, ctx:err()
  end
  --- ev:context() -> a context done once the event is set
  function Event.context(ev)
    check_ev(ev, "context")
    return ev._ctx
  end
  -- ===}

  -- {=== select with cases ===
  -- check.select_cases(backend_select, ...): the backends' select, when one
  -- of its arguments is a case or an event. The first ready, in argument
  -- order, wins (fds are asked only by the backend: after every case).
  local function select_cases(bsel, ...)
    local n = select("#", ...)
    local args = pack(...)
    local be = bound.active and bound_err()
    if be then return nil, be end -- the bound first, as every wait does
    -- check, and take the first ready in order
    for i = 1, n do
      local a = args[i]
      local mt = type(a) == "table" and getmetatable(a)
      if mt == Case then
        if a.kind == "send" and a.ch._closed then closed_error(3) end
      elseif mt == Event then
        args[i] = a._ctx
      elseif type(mt) == "table" and rawget(mt, "__lcontext_case") then
        error(("bad argument #%d to 'select' (%s is not a waitable)"):format(i, tname(a)), 3)
      end
    end
    for i = 1, n do
      local a = args[i]
      local mt = type(a) == "table" and getmetatable(a)
      if mt == Case then
        if a.kind == "send" then
          if try_send(a.ch, a.value) then return i, a end
        else
          local done, v, ok = try_recv(a.ch)
          if done then return i, a, v, ok end
        end
      elseif getmetatable(a) == "context" then
        if a:is_done() then return i, (select(i, ...)) end
      elseif type(a) == "number" then
        if a <= 0 and a == a then return i, a end
      elseif type(a) == "userdata" or type(a) == "table" then -- an ended task
        local ok, st = native_pcall(task_status, a)
        if ok and st ~= "running" then return i, a end
      end
    end
    -- nothing ready: the cases' records, and the backend waits for the rest
    local w = new_waiter()
    local recs, rest, map, m = {}, {}, {}, 0
    for i = 1, n do
      local a = args[i]
      if getmetatable(a) == Case then
        recs[#recs + 1] = { w = w, index = i, value = a.value, kind = a.kind, case = true,
          ch = a.ch, co = w.co, q = false, prev = false, next = false }
      else
        m = m + 1
        rest[m], map[m] = a, i
      end
    end
    m = m + 1
    rest[m] = w.sig
    local guard = guard_of(recs)
    blocked_on[w.sig] = recs
    -- armed last: everything above allocates (and may fail), q_push does not
    for k = 1, #recs do
      local r = recs[k]
      q_push(r.kind == "send" and r.ch._sendq or r.ch._recvq, r)
    end
    local ok, j, e = pcall(bsel, unpack(rest, 1, m))
    for k = 1, #recs do
      recs[k].consumed = guard ~= nil
      q_remove(recs[k])
    end
    if not w.done then w.fire() end
    if not ok and not w.done then -- name the caller's argument, not its place among the rest
      if type(j) == "string" then
        j = j:gsub("bad argument #(%d+) to 'select'", function(k)
          return ("bad argument #%d to 'select'"):format(map[tonumber(k)] or tonumber(k))
        end)
      end
      error(j, 0)
    end
    if w.done then
      local i = w.fired
      local a = args[i]
      if a.kind == "send" then
        if w.ok == false then closed_error(3) end
        return i, a
      end
      return i, a, w.got, w.ok
    end
    if j == nil then return nil, e end -- the spawned task's own context
    if j == m then return nil, "lcontext.sync: woken with nothing done" end -- (not reached)
    return map[j], (select(map[j], ...))
  end
  check.select_cases = select_cases
  -- ===}

  -- {=== semaphores ===
  local Semaphore = {}
  Semaphore.__index = Semaphore
  Semaphore.__name = "context.semaphore"

  local function check_sem(sem, fname)
    if getmetatable(sem) ~= Semaphore then
      error(("calling '%s' on bad self (context.semaphore expected, got %s)")
        :format(fname, tname(sem)), 3)
    end
  end
  local function check_weight(sem, w, fname)
    if w == nil then return 1 end
    if type(w) ~= "number" or w ~= floor(w) or w < 1 then
      argerr(fname, fname == "acquire" and 2 or 1,
        "weight must be a positive integer, got " .. tostring(w))
    end
    if w > sem._size then
      argerr(fname, fname == "acquire" and 2 or 1,
        ("weight %d exceeds the semaphore's size %d"):format(w, sem._size))
    end
    return w
  end

  --- context.semaphore(n) -> sem: n units; waiters are served in FIFO order
  function M.semaphore(n)
    if type(n) ~= "number" or n ~= floor(n) or n < 1 or n > 2^53 then
      argerr("semaphore", 1, "size must be a positive integer, got " .. tostring(n))
    end
    local sem = c_semaphore and c_semaphore(n)
      or setmetatable({ _size = n, _cur = 0, _q = q_new() }, Semaphore)
    live_sem[sem] = true
    stats.semaphores = stats.semaphores + 1
    return sem
  end

  function Semaphore:__tostring()
    return ("context.semaphore (%d/%d held, %d waiting)"):format(self._cur, self._size, self._q.n)
  end

  -- grant to the waiters at the head while their weight fits (FIFO: the
  -- head waits even if a later, smaller one would fit)
  local function grant(sem)
    local r = q_first(sem._q)
    while r and sem._size - sem._cur >= r.weight do
      q_remove(r)
      sem._cur = sem._cur + r.weight
      complete(r, nil, true)
      r = q_first(sem._q)
    end
  end

  -- grant, for finalisers: the same loop, interpreted only (see dead)
  local grant_gc = check.interp_only(function(sem)
    local q = sem._q
    local r = q.head
    while r do
      local nx = r.next
      if r.w.done or (r.co and co_status(r.co) == "dead") then
        q_remove(r) -- (a dead one's own guard gives back what it holds)
      elseif sem._size - sem._cur >= r.weight then
        q_remove(r)
        sem._cur = sem._cur + r.weight
        complete(r, nil, true)
      else
        break
      end
      r = nx
    end
  end)

  -- A blocked call whose coroutine died: from its guard's finaliser, or
  -- found dead in a queue (queued: the walk that found it goes on, so no
  -- grant from here: no recursion)
  function on_dead(r, queued)
    r.consumed = true
    local sem = r.sem
    if r.kind == "acquire" then
      stats.blocked_acquire = stats.blocked_acquire - 1
      local was_head = sem._q.head == r
      q_remove(r)
      if r.w.done then -- granted, never returned: give the units back
        sem._cur = sem._cur - r.weight
        if not queued then grant_gc(sem) end
      elseif was_head and not queued then
        grant_gc(sem)
      end
    else
      if r.case then -- (select's cases are not counted as blocked calls)
      elseif r.kind == "send" then stats.blocked_send = stats.blocked_send - 1
      else stats.blocked_recv = stats.blocked_recv - 1 end
      q_remove(r)
    end
  end

  --- sem:acquire(ctx [, w]) -> true | nil, err (nothing held then)
  -- ctx is looked at first, also when a unit is free (as Go's
  -- x/sync/semaphore does since golang/go#63615, and as Trio does).
  function Semaphore.acquire(sem, ctx, w)
    if w == nil and getmetatable(sem) == Semaphore and sem._cur < sem._size
      and sem._q.head == nil and getmetatable(ctx) == "context"
      and ctx:err() == nil and not bound.active then -- the fast path
      sem._cur = sem._cur + 1
      return true
    end
    check_sem(sem, "acquire")
    check_ctx(ctx, "acquire", 1)
    w = check_weight(sem, w, "acquire")
    local e = err_of(ctx)
    if e ~= nil then return nil, e end
    if sem._size - sem._cur >= w and q_first(sem._q) == nil then
      sem._cur = sem._cur + w
      return true
    end
    local r = { index = 1, weight = w, kind = "acquire", sem = sem }
    local wt = r
    local ok, err = block(r, sem._q, ctx, "blocked_acquire")
    local was_head = sem._q.head == r
    q_remove(r)
    if wt.done then return true end -- granted: done wins (even over a failed wait)
    -- it leaves the queue: those behind a head may fit now
    if was_head then grant(sem) end
    if not ok then error(err, 0) end
    return nil, err
  end

  --- sem:try_acquire([w]) -> true | false (never waits; false while others wait)
  function Semaphore.try_acquire(sem, w)
    check_sem(sem, "try_acquire")
    w = check_weight(sem, w, "try_acquire")
    if sem._size - sem._cur >= w and q_first(sem._q) == nil then
      sem._cur = sem._cur + w
      return true
    end
    return false
  end

  --- sem:release([w]): gives back w units (raises if more than are held)
  function Semaphore.release(sem, w)
    if w == nil and getmetatable(sem) == Semaphore and sem._cur >= 1 and sem._q.head == nil then
      sem._cur = sem._cur - 1 -- the fast path: one unit back, nobody waiting
      return
    end
    check_sem(sem, "release")
    w = check_weight(sem, w, "release")
    if w > sem._cur then
      error(("context.semaphore: released %d unit%s, but only %d %s held")
        :format(w, w == 1 and "" or "s", sem._cur, sem._cur == 1 and "is" or "are"), 2)
    end
    sem._cur = sem._cur - w
    grant(sem)
  end

  --- sem:held() -> units held now; sem:size(); sem:waiting() -> waiters
  function Semaphore.held(sem) check_sem(sem, "held"); return sem._cur end
  function Semaphore.size(sem) check_sem(sem, "size"); return sem._size end
  function Semaphore.waiting(sem)
    check_sem(sem, "waiting")
    local n, r = 0, q_first(sem._q)
    while r do
      local nx = r.next
      if r.co and co_status(r.co) == "dead" then on_dead(r, true) -- (its coroutine died)
      elseif not r.w.done then n = n + 1 end
      r = nx
    end
    return n
  end
  -- ===}

  -- {=== the C channels and semaphores (csrc/l_sync.c) ===
  -- Where lcontext.core has them (libev, Lua 5.3+), the public API is put
  -- on them: the same rules, the same errors, and no Lua frame nor
  -- allocation in a blocked send, receive or acquire. The Lua versions
  -- above serve Lua 5.1, LuaJIT and nginx. Events stay in Lua (a cancel
  -- context each), mapped to their context when select gets them.
  local csync = check.core_sync
  if csync and not context.backend then
    local cselect = csync.select
    c_channel, c_semaphore = csync.channel, csync.semaphore -- (for M.channel, M.semaphore)
    csync.init(Case)

    -- select with cases: events become their contexts, the core does the
    -- rest; its errors are raised here, at select's caller
    check.select_cases = function(_, ...)
      local n = select("#", ...)
      local args = pack(...)
      for i = 1, n do
        local a = args[i]
        local mt = type(a) == "table" and getmetatable(a)
        if mt == Event then
          args[i] = a._ctx
        elseif mt ~= Case and type(mt) == "table" and rawget(mt, "__lcontext_case") then
          error(("bad argument #%d to 'select' (%s is not a waitable)"):format(i, tname(a)), 3)
        end
      end
      local ok, i, v, got = pcall(cselect, "select", unpack(args, 1, n))
      if not ok then error(i, 3) end
      if i == nil then return nil, v end -- the spawned task's own context
      if i == false then closed_error(3) end
      if i < 0 then
        error(("bad argument #%d to 'select' (fd %d is not open)"):format(-i, args[-i].fd), 3)
      end
      local a = (select(i, ...))
      if getmetatable(a) == Case and a.kind == "recv" then return i, a, v, got end
      return i, a
    end

    local cstats = csync.stats
    counters = function()
      local sends, recvs, bs, br, ba = cstats()
      return sends, recvs, bs, br, ba
    end
  end
  -- ===}

  -- {=== metrics ===
  --- context.sync_stats() -> the figures of this module
  function M.sync_stats()
    local ch_live, buffered, sem_live, held = 0, 0, 0, 0
    for ch in pairs(live_ch) do
      ch_live, buffered = ch_live + 1, buffered + ch:len()
    end
    for sem in pairs(live_sem) do
      sem_live, held = sem_live + 1, held + sem:held()
    end
    local sends, recvs, bs, br, ba = counters()
    return {
      channels_created = stats.channels, channels_live = ch_live,
      channel_buffered = buffered, channel_sends = sends,
      channel_recvs = recvs, channel_blocked_send = bs,
      channel_blocked_recv = br,
      semaphores_created = stats.semaphores, semaphores_live = sem_live,
      semaphore_held = held, semaphore_waiting = ba,
    }
  end
  if context.metrics_source then
    context.metrics_source("sync", function()
      local s = M.sync_stats()
      return {
        { name = "lcontext_channel_blocked", help = "Tasks blocked in a channel operation.",
          type = "gauge", samples = { { value = s.channel_blocked_send + s.channel_blocked_recv } } },
        { name = "lcontext_channel_buffered", help = "Values buffered in live channels.",
          type = "gauge", samples = { { value = s.channel_buffered } } },
        { name = "lcontext_channel_transfers_total", help = "Values passed through channels.",
          type = "counter", samples = { { value = s.channel_recvs } } },
        { name = "lcontext_semaphore_held", help = "Units held of live semaphores.",
          type = "gauge", samples = { { value = s.semaphore_held } } },
        { name = "lcontext_semaphore_waiting", help = "Tasks waiting to acquire a semaphore.",
          type = "gauge", samples = { { value = s.semaphore_waiting } } },
      }
    end)
  end
  -- ===}

  return M
end
