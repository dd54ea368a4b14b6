-- mock_ngx.lua — a small stand-in for ngx_lua, enough to run lcontext.ngx
-- outside nginx (spec/ngx/backend_spec.lua): light threads on coroutines, an
-- event loop on the real monotonic clock, ngx.semaphore, ngx.timer.at,
-- ngx.sleep, ngx.on_abort, ngx.shared dicts, ngx.log. It keeps ngx_lua's
-- rules that matter here: a spawned thread runs at once until it yields (a
-- bare coroutine.yield() posts it: it goes on after the posted threads); a
-- semaphore post resumes its waiter later (a posted event), never inside
-- post; wait() truncates its timeout to whole milliseconds (0 ms: "timeout"
-- at once, without yielding); only some phases may yield; pending timers
-- run early with premature = true when the worker exits.
-- The real thing is tested in nginx by spec/ngx/run.sh.
local M = {}

local unpack = table.unpack or unpack
local function pack(...) return { n = select("#", ...), ... } end

local clock -- seconds, monotonic (lcontext.core.now)
local sleeper
do
  local ok, socket = pcall(require, "socket")
  if ok and socket.sleep then sleeper = socket.sleep end
end

local YIELD = {} -- what a suspended light thread yields to the loop

local S -- the state of the current mock

local YIELDABLE = { rewrite = true, access = true, content = true, timer = true }

local function phase() return S.current and S.current.phase or "init" end

local function check_yieldable(api)
  if not YIELDABLE[phase()] then
    error("API disabled in the context of " .. phase() .. " (" .. api .. ")", 3)
  end
end

local post_event, resume_posted -- (below)

local function resume(rec, ...)
  if rec.dead then return end
  local prev = S.current
  S.current = rec
  local r = pack(coroutine.resume(rec.co, ...))
  -- a bare coroutine.yield() of a light thread (its values dropped): ngx_lua
  -- posts it after the threads already posted (a parent that is spawning,
  -- other yielders) if there are any, else resumes it at once
  while r[1] and r[2] ~= YIELD and S.posted == 0 and coroutine.status(rec.co) == "suspended" do
    r = pack(coroutine.resume(rec.co))
  end
  S.current = prev
  if coroutine.status(rec.co) == "dead" then
    rec.dead = true
    S.live[rec] = nil
    S.anchored[rec] = nil
    if not r[1] then
      S.logs[#S.logs + 1] = { level = "error", msg = "lua user thread aborted: " .. tostring(r[2]) }
    end
  elseif r[2] ~= YIELD then
    S.posted = S.posted + 1
    post_event(resume_posted, rec)
  end
end

function resume_posted(rec)
  S.posted = S.posted - 1
  resume(rec)
end

-- run fn(...) "later": at the end of the run queue (a posted event)
function post_event(fn, ...)
  S.runq[#S.runq + 1] = pack(fn, ...)
end

local function add_timer(at, fn, ...)
  local ev = { at = at, fn = fn, args = pack(...) }
  S.events[#S.events + 1] = ev
  return ev
end

local function new_thread(fn, ph)
  S.nthreads = S.nthreads + 1
  local rec = { co = coroutine.create(fn), phase = ph, id = S.nthreads }
  if ph ~= "timer" then S.live[rec] = true end
  -- ngx_lua refs every light thread's coroutine (timers' too) until it
  -- ends or is killed: a suspended one is never collected
  S.anchored[rec] = true
  return rec
end

-- {=== semaphores ===}
local Sema = {}
Sema.__index = Sema

local function sema_new(n)
  if S.current == nil and phase() == "init" and S.in_init then
    error("no semaphores in init", 2)
  end
  return setmetatable({ res = n or 0, q = {} }, Sema)
end

function Sema:wait(secs)
  if S.current == nil then error("no request found") end
  check_yieldable("semaphore wait")
  if S.sema_hook then -- a test's stand-in for a wait that returns at once
    local r = pack(S.sema_hook(self, secs, S.current))
    if r.n > 0 then return unpack(r, 1, r.n) end
  end
  if self.res > 0 then
    self.res = self.res - 1
    return true
  end
  local ms = math.floor(secs * 1000) -- as the C int of the real one
  if ms <= 0 then return nil, "timeout" end
  local w = { rec = S.current, done = false }
  self.q[#self.q + 1] = w
  local sem = self
  local function unqueue()
    w.done = true
    for i, x in ipairs(sem.q) do
      if x == w then table.remove(sem.q, i) break end
    end
  end
  w.ev = add_timer(clock() + ms / 1000, function()
    if w.done then return end
    unqueue()
    w.rec.cleanup = nil
    resume(w.rec, nil, "timeout")
  end)
  -- a killed thread leaves the queue and its timer (ngx_lua's cleanup)
  w.rec.cleanup = function()
    unqueue()
    w.ev.cancelled = true
  end
  S.waiting = S.waiting + 1
  local a, b = coroutine.yield(YIELD)
  S.waiting = S.waiting - 1
  return a, b
end

function Sema:count() return self.res - #self.q end

function Sema:post(n)
  n = n or 1
  self.res = self.res + n
  while self.res > 0 and #self.q > 0 do
    local w = table.remove(self.q, 1)
    self.res = self.res - 1
    w.done = true
    if w.ev then w.ev.cancelled = true end
    w.rec.cleanup = nil
    post_event(resume, w.rec, true)
  end
  return true
end


-- {=== shared dicts (with ttls on the mock clock) ===}
local Dict = {}
Dict.__index = Dict

local function dict_live(d, k)
  local e = d.exp[k]
  if e and clock() >= e then d.data[k], d.exp[k] = nil, nil end
  return d.data[k]
end

function Dict:get(k) return dict_live(self, k) end
function Dict:set(k, v, ttl)
  self.data[k] = v
  self.exp[k] = (ttl and ttl > 0) and clock() + ttl or nil
  return true
end
function Dict:add(k, v, ttl)
  if dict_live(self, k) ~= nil then return false, "exists" end
  return self:set(k, v, ttl)
end
function Dict:incr(k, d, init)
  local v = dict_live(self, k)
  if v == nil then
    if init == nil then return nil, "not found" end
    v = init
  end
  self.data[k] = v + d
  return v + d
end
function Dict:delete(k) self.data[k], self.exp[k] = nil, nil end

--- mock.install(now) -> the mock (state + helpers); sets the global ngx
-- and package.preload["ngx.semaphore"].
function M.install(now)
  clock = now
  S = {
    current = nil, runq = {}, events = {}, logs = {}, nthreads = 0, waiting = 0, posted = 0,
    exiting = false, timers_made = 0, timers_pending = 0, headers = {}, ctx = {},
    abort_fn = nil, check_abort = true, in_init = false, live = {}, anchored = {}, max_pending = 0,
  }
  local ngx = {
    OK = 0, ERR = "error", WARN = "warn", NOTICE = "notice", INFO = "info",
    shared = {},
    worker = { exiting = function() return S.exiting end },
    thread = {},
    timer = {},
    req = {},
  }
  function ngx.get_phase() return phase() end
  function ngx.now() return clock() end
  function ngx.log(level, ...)
    local parts = {}
    for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
    S.logs[#S.logs + 1] = { level = level, msg = table.concat(parts) }
  end
  function ngx.sleep(s)
    check_yieldable("ngx.sleep")
    local rec = S.current
    if s <= 0 then
      post_event(resume, rec)
    else
      add_timer(clock() + s, resume, rec)
    end
    coroutine.yield(YIELD)
  end
  function ngx.thread.spawn(fn, ...)
    check_yieldable("ngx.thread.spawn")
    local rec = new_thread(fn, phase())
    S.posted = S.posted + 1 -- the parent, while the new thread runs
    resume(rec, ...)
    S.posted = S.posted - 1
    return rec
  end
  function ngx.thread.kill(rec)
    rec.dead = true
    S.live[rec] = nil
    S.anchored[rec] = nil
    -- ngx_lua resets a killed thread (lua_resetthread): its stack slots
    -- are cleared, and closures made in its frames whose upvalues were
    -- still open read nil from then on (seen in nginx: a watch made in a
    -- wait read its record as nil). Do the same to the locals of every frame.
    -- (the mock's own frames are left alone: they stand for ngx_lua's C)
    if rec.cleanup then rec.cleanup() rec.cleanup = nil end
    -- (not on LuaJIT: 2.1's debug.getlocal on a suspended coroutine's
    -- frames crashes it now and then — seen with tools/fuzz_ngx.lua; the
    -- Lua 5.4 runs of the mock and the fuzzer do the clearing)
    local co = rec.co
    if co and not rawget(_G, "jit") and coroutine.status(co) == "suspended" then
      local level = 1
      local info = debug.getinfo(co, level, "S")
      while info do
        if not info.short_src:find("mock_ngx", 1, true) then
          local i = 1
          while debug.getlocal(co, level, i) do
            debug.setlocal(co, level, i, nil)
            i = i + 1
          end
        end
        level = level + 1
        info = debug.getinfo(co, level, "S")
      end
    end
    rec.co = nil -- dropped: its frames can be collected
    return true
  end
  function ngx.timer.at(delay, fn, ...)
    if S.exiting then return nil, "process exiting" end
    S.timers_made = S.timers_made + 1
    S.timers_pending = S.timers_pending + 1
    if S.timers_pending > S.max_pending then S.max_pending = S.timers_pending end
    local args = pack(...)
    local ev
    ev = add_timer(clock() + delay, function(premature)
      S.timers_pending = S.timers_pending - 1
      local rec = new_thread(fn, "timer")
      resume(rec, premature or false, unpack(args, 1, args.n))
    end)
    ev.is_timer = true
    return true
  end
  ngx.ctx = S.ctx
  function ngx.req.get_headers() return S.headers end
  function ngx.on_abort(fn)
    if not S.check_abort then return nil, "lua_check_client_abort is off" end
    if S.abort_fn then return nil, "duplicate call" end
    S.abort_fn = fn
    return true
  end
  _G.ngx = ngx
  package.loaded["ngx.semaphore"] = nil
  package.preload["ngx.semaphore"] = function() return { new = sema_new } end

  local mock = { state = S, ngx = ngx }

  --- mock.dict(name): a lua_shared_dict
  function mock.dict(name)
    local d = setmetatable({ data = {}, exp = {} }, Dict)
    ngx.shared[name] = d
    return d
  end

  -- one turn: the run queue, then the due events; false if nothing is left
  local function turn(wait_ok, limit_at)
    if #S.runq > 0 then
      local q = S.runq
      S.runq = {}
      for _, e in ipairs(q) do e[1](unpack(e, 2, e.n)) end
      return true
    end
    local first
    for _, ev in ipairs(S.events) do
      if not ev.cancelled and (not first or ev.at < first.at) then first = ev end
    end
    if not first then return false end
    local t = clock()
    if first.at > t then
      if not wait_ok then return false end
      local until_ = first.at
      if limit_at and limit_at < until_ then until_ = limit_at end
      if sleeper then sleeper(until_ - t) else while clock() < until_ do end end
      if clock() < first.at then return true end
    end
    for i, ev in ipairs(S.events) do
      if ev == first then table.remove(S.events, i) break end
    end
    first.fn(unpack(first.args, 1, first.args.n))
    return true
  end

  -- is there work left: light threads of requests, timers not yet run?
  local function busy()
    if #S.runq > 0 or next(S.live) then return true end
    for _, ev in ipairs(S.events) do
      if ev.is_timer and not ev.cancelled then return true end
    end
    return false
  end

  --- mock.run(fn [, max_seconds [, phase]]): run fn in an entry thread
  -- (phase "content") and the loop until the request's light threads have
  -- ended and no timer is pending (a running timer, such as lcontext's
  -- driver, may go on), or until max_seconds (5) passed. Returns fn's
  -- results (raises its error).
  function mock.run(fn, max_seconds, ph)
    local res
    local rec = new_thread(function() res = pack(pcall(fn)) end, ph or "content")
    resume(rec)
    local stop_at = clock() + (max_seconds or 5)
    while clock() < stop_at and busy() do
      if not turn(true, stop_at) then break end
    end
    if not res then error("mock.run: the entry thread did not finish in time", 2) end
    if not res[1] then error(res[2], 0) end
    return unpack(res, 2, res.n)
  end

  --- mock.spin(seconds): run the loop for that long (no entry thread)
  function mock.spin(seconds)
    local stop_at = clock() + seconds
    while clock() < stop_at do
      if not turn(true, stop_at) then
        if sleeper then sleeper(math.min(0.001, stop_at - clock())) end
      end
    end
  end

  --- mock.abort(): the client goes away: run the on_abort function
  function mock.abort()
    local fn = S.abort_fn
    if fn then
      local rec = new_thread(fn, S.current and S.current.phase or "content")
      post_event(resume, rec)
    end
  end

  --- mock.quit(): the worker exits: pending timers run now, premature
  function mock.quit()
    S.exiting = true
    local evs = S.events
    for i = #evs, 1, -1 do
      local ev = evs[i]
      if ev.is_timer and not ev.cancelled then
        table.remove(evs, i)
        ev.fn(true)
      end
    end
  end

  --- mock.new_request(headers): a fresh ngx.ctx, headers and on_abort
  function mock.new_request(headers)
    S.ctx = {}
    ngx.ctx = S.ctx
    S.headers = headers or {}
    S.abort_fn = nil
  end

  --- mock.in_phase(ph, fn): call fn as if in phase ph (no thread)
  function mock.in_phase(ph, fn)
    local prev = S.current
    S.current = { phase = ph, co = coroutine.running() }
    local r = pack(pcall(fn))
    S.current = prev
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end

  function mock.errors()
    local out = {}
    for _, l in ipairs(S.logs) do
      if l.level == "error" then out[#out + 1] = l.msg end
    end
    return out
  end

  return mock
end

return M
