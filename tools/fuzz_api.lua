--- tools/fuzz_api.lua — the Lua-level API fuzzer (README, "Tests").
--
--   lua5.4 tools/fuzz_api.lua [--seed N] [--ops N] [--seeds K] [--verbose]
--                             [--avoid-known[=1,2,...]]
--   env: FUZZ_SEED, FUZZ_OPS, FUZZ_SEEDS, FUZZ_VERBOSE=1, FUZZ_AVOID_KNOWN=all|1,2,...
--
-- Random sequences of operations over the public surface (one table of op
-- generators, OPS), checked after every step against a small model (M):
-- a done context stays done with the same err, cause and origin; a context
-- ends with the err and cause of its origin, which is itself or an ancestor
-- that was cancelled (with that cause) or whose deadline passed (never
-- early, zero slack); values; after_func runs at most once and never after a
-- stop() that returned true; metrics().tasks_waiting equals the tasks really
-- parked (counted by wrapping coroutine.yield before lcontext is loaded);
-- bad arguments raise and never crash. Every wait is bounded, and a count hook
-- raises in anything that spins past the op's time budget.
-- --avoid-known skips the op kinds that reach the known bugs, numbered as
-- below (all fixed since; each has its spec in spec/regress/):
--   1 a wait in a frame that cannot yield (wait_in_c_frame_spec)
--   2 stop() of a queued after_func callback (stop_after_cancel_spec)
--   3 wait_fd on an fd that is not open (wait_fd_closed_fd_spec)
--   4, 10 fd numbers out of the C int range (wait_fd_range_spec)
--   5 a signal context lost the signal's disposition (signal_disposition_spec)
--   6 a closed task's sleep kept run() waiting (close_parked_sleep_spec)
--   7 a cause referring to its context leaked it on 5.1 (cause_self_ref_spec)
--   9 a cancel from a __gc finaliser with callbacks (cancel_from_gc_spec)
--   11 a closed group member stayed running (group_closed_member_spec)
--   12 a closed hedge attempt (hedge_closed_attempt_spec)
--   13 on_error's task argument for a callback (on_error_callback_task_spec) Exit status 0 when clean, 1 on a violation (the seed,
-- the op index and a replay command are printed). Timing makes a replay
-- approximate: the op sequence is the same, deadlines may fall differently.
-- Runs on Lua 5.4 (everything), 5.3 (no <close>/coroutine.close ops) and,
-- with a module built for them, 5.1/LuaJIT (no tasks_waiting check).
local unpack = table.unpack or unpack
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local R, fmt = math.random, string.format
local INF, NAN = math.huge, 0 / 0

-------------------------------------------------------------------------------
-- Options and paths
-------------------------------------------------------------------------------
local FC = dofile("tools/fuzz_common.lua")
local AV = {} -- AV[n]: skip what reaches known bug n (numbered at the top)
local function set_avoid(s)
  if s == nil or s == "" then return end
  if s == "all" then s = "1,2,3,4,5,6,7,9,10,11,12,13" end
  for n in s:gmatch("%d+") do AV[tonumber(n)] = true end
end
set_avoid(os.getenv("FUZZ_AVOID_KNOWN"))
local opt = FC.options("fuzz_api", 2000, function(a)
  if a == "--avoid-known" then set_avoid("all") return true end
  if a:match("^%-%-avoid%-known=") then set_avoid(a:match("=(.*)")) return true end
end, " [--avoid-known[=1,2,..]]")
FC.paths()

-- Count real parks: init.lua captures coroutine.yield when it loads, so a
-- wrapper installed first sees every yield of the park token.
local real_yield, running, costatus = coroutine.yield, coroutine.running, coroutine.status
local isyieldable = coroutine.isyieldable
local parked = setmetatable({}, { __mode = "k" }) -- coroutine -> true while parked
-- the watchdog: a count hook raises once an op has run past its budget. A
-- Lua hook is per coroutine, so every coroutine that parks gets it too.
local hooked = setmetatable({}, { __mode = "k" })
local watchdog = FC.watchdog
local function hook(co)
  if co and not hooked[co] then hooked[co] = true; debug.sethook(co, watchdog, "", 10000) end
end
local TOKEN
coroutine.yield = function(...)
  if TOKEN ~= nil and rawequal((...), TOKEN) and isyieldable and isyieldable() then
    local co = running()
    hook(co)
    parked[co] = true
    local r = pack(real_yield(...))
    parked[co] = nil
    return unpack(r, 1, r.n)
  end
  return real_yield(...)
end
local context = require "lcontext"
local core = require "lcontext.core"
TOKEN = core._token()
local socket_ok, socket = pcall(require, "socket")
local wpcall = require("lcontext.check").pcall -- Lua 5.1: a pcall a task may wait in

local now, bg, todo = context.now, context.background(), context.todo()
local CANCELED, DEADLINE = context.canceled, context.deadline_exceeded
local HAS_CLOSE = coroutine.close ~= nil and load("local x <close> = nil") ~= nil

-------------------------------------------------------------------------------
-- The model
-------------------------------------------------------------------------------
local M -- the state of one seed's run
local MAXN, MAXTASKS = 120, 60

local function violate(f, ...)
  local msg = fmt(f, ...)
  if not M.viol then M.viol = msg end
  if opt.verbose then io.stderr:write("VIOLATION: ", msg, "\n") end
end
local pick, chance, show = FC.pick, FC.chance, FC.show

-- node: { id, kind, ctx, parents, cancel (wrapped), raw, dl_lo, eff, tcause,
--         key, val, fc = {cause} (first cancel call), sig, done = {err, cause, origin}, cbs }
local function add(kind, ctx, raw, parents, n)
  n = n or {}
  M.nid = M.nid + 1
  n.id, n.kind, n.ctx, n.parents, n.raw, n.cbs = M.nid, kind, ctx, parents or {}, raw, {}
  n.eff = n.dl_lo or INF
  if kind ~= "wc" then
    for _, p in ipairs(n.parents) do if p.eff < n.eff then n.eff = p.eff end end
  else n.eff = INF end
  if raw then
    n.cancel = function(cause)
      if not n.fc then n.fc = { cause = cause } end
      return raw(cause)
    end
  end
  M.node_of[ctx] = n
  M.nodes[#M.nodes + 1] = n
  return n
end

-- does a cancel (or deadline) of `target` reach n?
local function reaches(n, target, seen)
  if n == target then return true end
  if n.kind == "wc" then return false end
  seen = seen or {}
  if seen[n] then return false end
  seen[n] = true
  for _, p in ipairs(n.parents) do if reaches(p, target, seen) then return true end end
  return false
end

local function observe(n)
  local ctx = n.ctx
  local e = ctx:err()
  local t = now()
  if e == nil then
    if n.eff == INF and (ctx:is_done() or ctx:cause() ~= nil) then violate("#%d %s: err() nil, is_done() or cause() not", n.id, n.kind) end
    if n.done then violate("#%d %s: was done (%s), err() is nil now", n.id, n.kind, show(n.done[1])) end
    if n.kind ~= "wc" then
      for _, p in ipairs(n.parents) do
        if p.done then violate("#%d %s: parent #%d is done, it is not", n.id, n.kind, p.id) end
      end
    end
    return
  end
  local c, o = ctx:cause(), context.origin(ctx)
  local okc, ce = pcall(ctx.check, ctx)
  if okc or not rawequal(ce, e) then violate("#%d %s: check() on a done context gave %s, %s", n.id, n.kind, show(okc), show(ce)) end
  if not ctx:is_done() then violate("#%d %s: err() %s but is_done() false", n.id, n.kind, show(e)) end
  if n.done then
    local d = n.done
    if not (rawequal(e, d[1]) and rawequal(c, d[2]) and rawequal(o, d[3])) then
      violate("#%d %s: done context changed: err %s->%s cause %s->%s", n.id, n.kind,
        show(d[1]), show(e), show(d[2]), show(c))
    end
    return
  end
  n.done = { e, c, o }
  if e ~= CANCELED and e ~= DEADLINE then return violate("#%d: err() is %s", n.id, show(e)) end
  -- the sentinels concatenate as their messages, on either side
  if "<" .. e .. ">" ~= "<" .. tostring(e) .. ">" then violate("#%d: %s does not concatenate", n.id, show(e)) end
  if n.kind == "root" or n.kind == "wc" then return violate("#%d %s is done", n.id, n.kind) end
  if o == nil then return violate("#%d %s: done but origin is nil", n.id, n.kind) end
  if not rawequal(o:err(), e) or not rawequal(o:cause(), c) then
    violate("#%d %s: err/cause %s/%s differ from its origin's %s/%s", n.id, n.kind,
      show(e), show(c), show(o:err()), show(o:cause()))
  end
  local on = M.node_of[o]
  if not on then return end -- ended by a context the model does not track
  if not reaches(n, on) then violate("#%d %s: origin #%d is not an ancestor", n.id, n.kind, on.id) end
  local want
  if e == CANCELED then
    if on.sig and type(c) == "string" and c:match("^signal SIG") then -- a signal
    elseif on.fc then
      want = on.fc.cause
      if want == nil then want = CANCELED end
    else
      violate("#%d %s: canceled by #%d %s, which nothing cancelled", n.id, n.kind, on.id, on.kind)
    end
  else
    if on.eff == INF then violate("#%d: deadline_exceeded from #%d, which has no deadline", n.id, on.id)
    elseif t < on.eff then violate("#%d: deadline of #%d fired %.6f s early", n.id, on.id, on.eff - t) end
    if on.dl_lo and on.dl_lo == on.eff then want = on.tcause; if want == nil then want = DEADLINE end end
  end
  if want ~= nil and not rawequal(c, want) then
    violate("#%d %s: cause %s, expected %s (origin #%d)", n.id, n.kind, show(c), show(want), on.id)
  end
end

local function mvalue(n, k)
  if n.kind == "value" and n.key == k then return n.val end
  for _, p in ipairs(n.parents) do
    local v = mvalue(p, k)
    if v ~= nil then return v end
  end
  return nil
end

local function check_tasks()
  local keep = {}
  for _, T in ipairs(M.tasks) do
    local st = T.t:status()
    if st == "running" then
      if T.final then violate("task %d: status went back from %s to running", T.id, T.final) end
      keep[#keep + 1] = T
    else
      local r = pack(T.t:wait()) -- ended: returns at once
      if T.closed then
        if st ~= "failed" then violate("task %d: closed coroutine, status %s", T.id, st) end
      elseif T.fail then
        if st ~= "failed" or type(r[2]) ~= "table" or r[2].fuzz ~= T.id then
          violate("task %d: expected its own failure, got %s %s %s", T.id, st, show(r[1]), show(r[2]))
        elseif M.errs[T.id] ~= 1 then
          violate("task %d: failure reported to on_error %s times", T.id, tostring(M.errs[T.id]))
        end
      elseif st ~= "ok" or r[1] ~= "ok" or r[2] ~= T.id then
        violate("task %d: expected ok, got %s %s %s", T.id, st, show(r[1]), show(r[2]))
      end
    end
  end
  M.tasks = keep
end

-- drained: the loop has just run (nothing ready), so every task parked by
-- the yield wrapper is parked in C; otherwise some may be queued (woken)
local core_stats = require("lcontext.core").sched_stats
-- the coroutines parked in a C channel/semaphore call (csrc/l_sync.c):
-- they yield from C, past the wrapper; the core lists them
local core_m = require "lcontext.core"
local function c_parked()
  local set, n = {}, 0
  if not core_m._channel then return set, n end
  for _, t in ipairs(core_m._tasks()) do
    local st, _, waits = core_m._task_waits(t)
    if st == "parked" and waits then
      for _, w in ipairs(waits) do
        if w.kind == "sync" then
          local co = core_m._task_thread(t)
          if not parked[co] then set[co] = true; n = n + 1 end
          break
        end
      end
    end
  end
  return set, n
end
local function check_metrics(drained, exact)
  local lost = core_stats().lost
  if lost ~= 0 then violate("%d woken callback(s) had nothing to keep them (sched_stats().lost)", lost) end
  if not isyieldable then return end
  local _, live = c_parked()
  local closed = 0
  for co in pairs(parked) do
    if costatus(co) == "dead" then
      closed = closed + 1
      if exact then parked[co] = nil end
    else live = live + 1 end
  end
  local got = context.metrics().tasks_waiting
  -- (drained: none is queued, unless a finaliser woke some since the loop
  -- ran: a cancel from __gc, or a dead blocked call's guard; those are in
  -- the ready queue, which sched_stats().ready counts)
  local ready = core_stats().ready
  if (drained and got + ready < live) or got > live + (exact and 0 or closed) then
    violate("metrics().tasks_waiting = %d, tasks really parked: %d (+%d closed while parked, %d ready)",
      got, live, closed, ready)
  end
end

local FS -- the shared structured-concurrency ops (tools/fuzz_sync.lua, below)
local FK -- lcontext.socket's ops against a misbehaving peer (tools/fuzz_socket.lua)
local function check_all(after_run, drained)
  check_metrics(drained or after_run, after_run) -- first: err() may wake parked tasks
  for _, n in ipairs(M.nodes) do observe(n) end
  for _ = 1, 3 do
    local n, k = pick(M.nodes), pick(M.keys)
    local okt, str = pcall(tostring, n.ctx)
    if not okt or type(str) ~= "string" then violate("#%d %s: tostring raised %s", n.id, n.kind, show(str)) end
    local v, want = n.ctx:value(k), mvalue(n, k)
    if v ~= want then violate("#%d %s: value(%s) = %s, model says %s", n.id, n.kind, show(k), show(v), show(want)) end
    if (n.ctx:deadline() == nil) ~= (n.eff == INF) then
      violate("#%d %s: deadline() %s, model deadline %s", n.id, n.kind, show(n.ctx:deadline()), show(n.eff))
    end
  end
  for _, cb in ipairs(M.cbs) do
    if cb.ran > 1 then violate("after_func %d ran %d times", cb.id, cb.ran) end
    if after_run and cb.node.done and not cb.stopped and cb.ran == 0 then
      violate("after_func %d on done #%d never ran (stop: %s)", cb.id, cb.node.id, show(cb.stop_said))
    end
  end
  if after_run then
    for id in pairs(M.cb_fail) do
      if M.errs[id] ~= 1 then violate("after_func %d: its error reached on_error %s times", id, show(M.errs[id])) end
    end
  end
  check_tasks()
  FS.check(after_run)
  FK.check(after_run)
end

-------------------------------------------------------------------------------
-- Helpers for ops
-------------------------------------------------------------------------------
local function rdur() -- a short duration, sometimes odd
  local r = R(10)
  if r == 1 then return 0 elseif r == 2 then return -R() elseif r == 3 then return 1e-9 end
  return R() * 0.03
end
local function pnode() return pick(M.nodes) end
local function bounded(n) -- a child of n (or of any node) that ends within ~30 ms
  local c = context.with_timeout((n or pnode()).ctx, R() * 0.03)
  return c
end
local function cancellable()
  for _ = 1, 8 do local n = pnode(); if n.cancel then return n end end
end
local function rcause()
  local r = R(6)
  if r == 1 then return nil elseif r == 2 then return "cause" .. R(99)
  elseif r == 3 then return { tag = R(99) } elseif r == 4 then return false
  elseif r == 5 then return R(99) end
  return CANCELED
end

-- every op that waits on a task or callback expects these to be caught
local function expect_ok(what, ok, err)
  if not ok then violate("%s raised: %s", what, show(err)) end
end

local DERIVE = {
  function(p) local c, k = context.with_cancel(p.ctx); return add("cancel", c, k, { p }) end,
  function(p) local c, k = p.ctx:with_cancel_cause(); return add("cause", c, k, { p }) end,
  function(p)
    local d, tc = ({ 0, -1, 1e-9, R() * 0.05, 1, 3600, 1e12, R() * 0.005 })[R(8)], chance(0.5) and rcause() or nil
    local t0 = now()
    local c, k = context.with_timeout(p.ctx, d, tc)
    return add("timeout", c, k, { p }, { dl_lo = t0 + d, tcause = tc })
  end,
  function(p)
    local d = ({ -5, 0, R() * 0.05, 10, 1e10 })[R(5)]
    local m0 = now()
    local ep = context.time() + d
    local c, k = p.ctx:with_deadline(ep)
    return add("deadline", c, k, { p }, { dl_lo = ep + m0 - context.time() })
  end,
  function(p)
    local k, v = pick(M.keys), ({ 1, "v", false, {}, R(1000) })[R(5)]
    return add("value", context.with_value(p.ctx, k, v), nil, { p }, { key = k, val = v })
  end,
  function(p) return add("wc", context.without_cancel(p.ctx), nil, { p }) end,
  function(p)
    local ins = { p, pnode() }
    if chance(0.3) then ins[3] = pnode() end
    local cs = {}
    for i, n in ipairs(ins) do cs[i] = n.ctx end
    local c, k = context.merge(unpack(cs))
    return add("merge", c, k, ins)
  end,
}
local function derive() return DERIVE[R(#DERIVE)](pnode()) end

local function fire_cancel(n, cause)
  if chance(0.5) then n.cancel(cause) else n.cancel() end
end

-- a "failure" value known to the on_error handler
local function our_error(id) return setmetatable({ fuzz = id }, { __tostring = function() return "fuzz error " .. id end }) end

-------------------------------------------------------------------------------
-- Task bodies: actions chosen when the task is made, run in the task
-------------------------------------------------------------------------------
local ACTS -- forward
local spawn
local function nonyield_wait(c) -- a wait from frames that cannot yield (known bug 1)
  local r = R(3)
  if r == 1 then
    return pcall(table.sort, { 3, 2, 1 }, function(a, b) context.sleep(c, 0.001) return a < b end)
  elseif r == 2 then
    return pcall(string.gsub, "ab", "%w", function() c:done() end)
  end
  return pcall(tostring, setmetatable({}, { __tostring = function() context.select(c, 0.001) return "x" end }))
end

ACTS = {
  sleep = function(a) context.sleep(a.c, a.d) end,
  done = function(a) a.c:done() end,
  select = function(a)
    local w = { a.c, a.d }
    if a.other and a.other.t then w[3] = a.other.t end
    if M.sock and chance(0.3) then w[#w + 1] = context.fd(M.sock[1], "w") end
    local i, x = context.select(unpack(w))
    if not rawequal(x, w[i]) then violate("select returned %s and %s, not its waitable", show(i), show(x)) end
  end,
  fd = function(a) if M.sock then context.wait_fd(a.c, M.sock[R(2)], pick({ "r", "w", "rw" })) end end,
  cancel = function(a) if a.n and a.n.cancel then fire_cancel(a.n, rcause()) end end,
  derive = function() if #M.nodes < MAXN then derive() end end,
  yield = function() coroutine.yield() end,
  go = function(a) if #M.tasks < MAXTASKS then spawn(a.depth + 1) end end,
  nonyield = function(a) nonyield_wait(a.c) end,
  main_only = function(a) -- run() from a task must raise, not recurse
    local ok = pcall(context.run, "nowait")
    if ok then violate("context.run from inside a task did not raise") end
  end,
  group = function(a)
    local g, gctx = context.group(a.n.ctx, chance(0.5) and R(2) or nil)
    local fails, order = {}, {}
    for i = 1, R(4) do
      local kind = R(4)
      g:go(function(gc)
        if kind == 2 and AV[11] == nil and M.close_member then M.closable[#M.closable + 1] = { co = running(), bug = 11 } end
        local ok, err = context.sleep(gc, R() * 0.01)
        if kind == 1 then order[#order + 1] = i; return true
        elseif kind == 2 then fails[#fails + 1] = err or "slept"; return nil, err or "slept"
        elseif kind == 3 then local e = our_error(-1) fails[#fails + 1] = e; error(e) end
        if ok then order[#order + 1] = i; return ok end
        fails[#fails + 1] = err; return nil, err
      end)
    end
    local first = g:wait()
    if not gctx:is_done() then violate("group: gctx running after g:wait()") end
    -- a member closed from outside fails with "task's coroutine was closed"
    if #fails == 0 and first ~= nil and first ~= "task's coroutine was closed" then violate("group: no member failed, g:wait() gave %s", show(first)) end
    -- (a member closed from outside may be the first failure the group saw)
    if #fails > 0 and not rawequal(first, fails[1]) and first ~= "task's coroutine was closed" then
      violate("group: first failure %s, g:wait() gave %s", show(fails[1]), show(first))
    end
  end,
  -- a group with a random policy: every member's outcome in g:results() is
  -- what it returned (or failed, if closed from outside), and g:wait()'s
  -- result follows from them by the policy (docs/resilience.md, "Policies")
  group_policy = function(a)
    local policy = pick({ "fail_fast", "supervise", "any", "quorum" })
    local k = policy == "quorum" and R(3) or (policy == "any" and 1 or nil)
    local g, gctx = context.group(a.n.ctx, { policy = policy, limit = chance(0.5) and R(2) or nil,
      quorum = policy == "quorum" and k or nil })
    local said, ids = {}, {} -- said[i]: what member i returned; ids: the members started, in order
    for i = 1, R(4) do
      local kind = R(3)
      local started = g:go(function(gc)
        if kind == 3 and AV[11] == nil and M.close_member then M.closable[#M.closable + 1] = { co = running(), bug = 11 } end
        local ok, err = context.sleep(gc, R() * 0.01)
        if kind == 2 then local e = our_error(-2); said[i] = { false, e }; return nil, e end
        if ok then said[i] = { true }; return "v" .. i, i end
        said[i] = { false, err }; return nil, err
      end)
      if started then ids[#ids + 1] = i end
    end
    local r = pack(g:wait())
    if not gctx:is_done() then violate("group %s: gctx running after g:wait()", policy) end
    local res, errs = g:results(), g:errors()
    if #res ~= #ids then return violate("group %s: %d results for %d members", policy, #res, #ids) end
    local nok, winners = 0, {}
    for j, i in ipairs(ids) do
      local x, w = res[j], said[i]
      if w == nil then -- closed from outside before it returned
        if x.status ~= "failed" then violate("group %s: closed member %d is %s", policy, i, show(x.status)) end
      elseif w[1] then
        nok = nok + 1
        winners["v" .. i] = i
        local v = x.values
        if x.status ~= "ok" or not v or v.n ~= 2 or v[1] ~= "v" .. i or v[2] ~= i then
          violate("group %s: member %d returned v%d, %d; results say %s", policy, i, i, i, show(x.status))
        end
      elseif (x.status ~= "failed" and x.status ~= "canceled") or not rawequal(x.err, w[2]) then
        violate("group %s: member %d failed with %s; results say %s, %s", policy, i, show(w[2]), show(x.status), show(x.err))
      elseif x.status == "canceled" and not rawequal(x.err, gctx:err()) and not rawequal(x.err, gctx:cause()) then
        violate("group %s: member %d canceled with %s, not gctx's", policy, i, show(x.err))
      end
    end
    if #errs ~= #ids - nok then violate("group %s: %d errors for %d failed members", policy, #errs, #ids - nok) end
    local failure = errs[1]
    if k then
      -- group_short: too few members and none had failed when wait() found
      -- it out (those it cancelled then fail after)
      if failure == nil or rawequal(r[1], context.group_short) then failure = context.group_short end
      if (r[1] == nil) ~= (nok >= k) then
        violate("group %s %d: %d succeeded, g:wait() gave %s", policy, k, nok, show(r[1]))
      end
      if r[1] ~= nil and rawequal(gctx:cause(), context.group_done) then violate("group %s: failed, with group_done as cause", policy) end
    end
    if r[1] ~= nil or not k then
      if r.n ~= 1 or not rawequal(r[1], failure) then
        violate("group %s: first failure %s, g:wait() gave %s (%d values)", policy, show(failure), show(r[1]), r.n)
      end
    elseif policy == "any" then
      if r.n ~= 3 or winners[r[2]] ~= r[3] then violate("group any: g:wait() gave %s, %s: not a winner", show(r[2]), show(r[3])) end
    elseif r.n ~= 1 then
      violate("group quorum: g:wait() gave %d values", r.n)
    end
  end,
  retry = function(a)
    local k, calls, attempts = R(0, 3), 0, R(4)
    local r = pack(context.retry(a.c, function(c, n)
      calls = calls + 1
      if n ~= calls then violate("retry: attempt %s, call %d", show(n), calls) end
      if calls <= k then
        if chance(0.2) then return nil, CANCELED end
        if chance(0.5) then error("boom" .. calls, 0) end
        return nil, "fail" .. calls
      end
      return "done", calls
    end, { attempts = attempts, base = 0.001, max = 0.004, jitter = pick({ "full", "equal", "decorrelated", "none" }) }))
    if r[1] == "done" then
      if r[2] ~= k + 1 or calls > attempts then violate("retry: success after %d calls, %d failures planned", calls, k) end
    elseif r[1] ~= nil or r[3] ~= calls then
      violate("retry: gave %s, %s attempts, %d calls", show(r[1]), show(r[3]), calls)
    elseif r[4] == "exhausted" and calls ~= attempts then
      violate("retry: exhausted after %d of %d attempts", calls, attempts)
    end
  end,
  breaker = function(a)
    local called = false
    local r = pack(wpcall(M.br.call, M.br, a.c, function(c)
      called = true
      if chance(0.5) then context.sleep(c, 0.002) end
      if chance(0.5) then return nil, "down" end
      return "up"
    end))
    if not r[1] then return violate("breaker:call raised %s", show(r[2])) end
    local open = rawequal(r[3], context.breaker_open)
    if (called and open) or (not called and not open and not a.c:err()) then
      violate("breaker: returned %s, %s and fn %s", show(r[2]), show(r[3]), called and "called" or "not called")
    end
    local st = M.br:state()
    if st ~= "closed" and st ~= "open" and st ~= "half_open" then violate("breaker state %s", show(st)) end
  end,
  hedge = function(a)
    local attempts, wins = R(3), {}
    local ok, v, err = wpcall(context.hedge, a.c, function(actx, i)
      if i == 1 and not AV[12] and chance(0.3) then M.closable[#M.closable + 1] = { co = running(), bug = 12 } end
      local ok2 = context.sleep(actx, R() * 0.01)
      if ok2 and chance(0.7) then wins[i] = true; return "h" .. i end
      return nil, "nope" .. i
    end, { delay = R() * 0.005, attempts = attempts })
    if not ok then return violate("hedge raised: %s", show(v)) end
    if v ~= nil and not wins[tonumber(tostring(v):sub(2))] then violate("hedge returned %s, not a winner", show(v)) end
  end,
}
local ACT_NAMES = { "sleep", "sleep", "done", "select", "select", "fd", "cancel", "derive", "yield",
  "go", "nonyield", "main_only", "group", "group_policy", "retry", "breaker", "hedge" }

local function gen_act(depth)
  local name = pick(ACT_NAMES)
  if name == "nonyield" and AV[1] then name = "sleep" end
  local n = pnode()
  return { name = name, n = name == "cancel" and cancellable() or n, c = bounded(n), d = rdur(),
    depth = depth, other = pick(M.tasks) }
end

spawn = function(depth)
  M.tid = M.tid + 1
  local T = { id = M.tid, fail = chance(0.1), acts = {} }
  for i = 1, R(depth > 2 and 1 or 3) do T.acts[i] = gen_act(depth) end
  T.t = context.go(function(T)
    T.co = running()
    hook(T.co)
    for _, a in ipairs(T.acts) do
      local ok, e = wpcall(ACTS[a.name], a)
      if not ok and a.name ~= "nonyield" then violate("task %d: %s raised %s", T.id, a.name, show(e)) end
    end
    if T.fail then error(our_error(T.id)) end
    return "ok", T.id
  end, T)
  M.by_id[T.id] = T
  M.tasks[#M.tasks + 1] = T
  return T
end

-------------------------------------------------------------------------------
-- after_func callbacks
-------------------------------------------------------------------------------
local function new_callback(n)
  M.tid = M.tid + 1
  local cb = { id = M.tid, node = n, ran = 0, kind = R(6) }
  local target, b = cancellable(), bounded()
  local stop = context.after_func(n.ctx, function()
    cb.ran = cb.ran + 1
    if cb.stopped then violate("after_func %d ran after stop() returned true", cb.id) end
    if cb.kind == 1 and target then fire_cancel(target, rcause())
    elseif cb.kind == 2 and #M.nodes < MAXN then derive()
    elseif cb.kind == 3 then M.cb_fail[cb.id] = true; error(our_error(cb.id))
    elseif cb.kind == 4 then context.sleep(b, 0.005)
    elseif cb.kind == 5 and #M.tasks < MAXTASKS then spawn(2) end
  end)
  cb.stop = stop
  n.cbs[#n.cbs + 1] = cb
  M.cbs[#M.cbs + 1] = cb
end

local function do_stop(cb)
  local r = cb.stop()
  cb.stop_said = r
  if r == true then
    if cb.ran > 0 then violate("after_func %d: stop() returned true after fn ran", cb.id) end
    if cb.stopped then violate("after_func %d: stop() returned true twice", cb.id) end
    cb.stopped = true
  elseif r ~= false then violate("stop() returned %s", show(r))
  end
end

-------------------------------------------------------------------------------
-- Bad arguments: spec = { name, fn, kinds... }; the argument at a random
-- position gets a value from its kind's pool. { value, must_raise, known_bug };
-- must_raise "closed": an fd in range that is not open: wait_fd gives nil, err
-- (never true), context.fd accepts it (select then raises on it)
-------------------------------------------------------------------------------
local NIL = {}
local dead_sock
local BAD = {
  ctx = { { NIL, 1 }, { 0, 1 }, { "ctx", 1 }, { {}, 1 }, { true, 1 }, { print, 1 }, { io.stdout, 1 }, { NAN, 1 } },
  dur = { { NIL, 1 }, { NAN, 1 }, { INF, 1 }, { -INF, 1 }, { "x", 1 }, { {}, 1 }, { -1 }, { 0 }, { 1e300 },
    { 2 ^ 63 }, { -2 ^ 63 }, { 1e-300 }, { "0.001" } },
  fn = { { NIL, 1 }, { 1, 1 }, { "f", 1 }, { {}, 1 }, { true, 1 }, { setmetatable({}, { __call = function() end }) } },
  fn_opt = { { NIL }, { 1, 1 }, { "f", 1 }, { {}, 1 }, { true, 1 } },
  key = { { NIL, 1 }, { NAN, 1 }, { 1 }, { "k" }, { {} }, { true }, { INF } },
  any = { { NIL }, { NAN }, { INF }, { {} }, { "s" }, { false } },
  fd = { { -1, 1 }, { 0.5, 1 }, { NAN, 1 }, { "x", 1 }, { {}, 1 }, { "dead", 1 }, { 1000, "closed", 3 }, { 65536, "closed", 10 },
    { 2 ^ 31 - 1, "closed", 10 }, { 2 ^ 32, 1, 4 }, { 2 ^ 32 + 1, 1, 4 }, { INF, 1, 4 }, { 2 ^ 63, 1, 4 } },
  mode = { { "x", 1 }, { 1, 1 }, { {}, 1 }, { NIL } },
  sig = { { "NOPE", 1 }, { NIL, 1 }, { {}, 1 }, { "" , 1 } },
  limit = { { 0, 1 }, { -1, 1 }, { 1.5, 1 }, { NAN, 1 }, { "x", 1 }, { true, 1 }, { INF }, { {} },
    { { limit = 0 }, 1 }, { { polcy = "any" }, 1 }, { { policy = "quorum" }, 1 }, { { policy = "any", quorum = 1 }, 1 },
    { { quorum = 0 }, 1 }, { { quorum = 2 } }, { { policy = "supervise", limit = INF } } },
  opts = { { 1, 1 }, { "x", 1 }, { true, 1 } },
  -- options tables whose keys are all option names: a misspelled one is refused
  sopts = { { 1, 1 }, { "x", 1 }, { true, 1 }, { { attemps = 1 }, 1 }, { { treshold = 2 }, 1 }, { { dleay = 0.1 }, 1 } },
  waitable = { { NIL, 1 }, { "x", 1 }, { {}, 1 }, { true, 1 }, { print, 1 }, { NAN, 1 } },
  mode_run = { { "bogus", 1 }, { {}, 1 }, { true, 1 } },
  num = { { NAN, 1 }, { "x", 1 }, { {}, 1 }, { -1 }, { 0 } },
}
local function good(kind)
  if kind == "ctx" or kind == "waitable" then return bounded() elseif kind == "dur" or kind == "num" then return 0.001
  elseif kind == "fn" or kind == "fn_opt" then return function() end elseif kind == "key" then return "k"
  elseif kind == "fd" then return M.sock and M.sock[1] or 1 elseif kind == "mode" then return "w"
  elseif kind == "sig" then return "USR2" elseif kind == "limit" then return 2
  elseif kind == "opts" or kind == "sopts" then return {} elseif kind == "mode_run" then return "nowait" end
  return nil
end
local SPECS = {
  { "with_cancel", context.with_cancel, "ctx" }, { "with_cancel_cause", context.with_cancel_cause, "ctx" },
  { "with_timeout", context.with_timeout, "ctx", "dur", "any" }, { "with_deadline", context.with_deadline, "ctx", "dur", "any" },
  { "with_value", context.with_value, "ctx", "key", "any" }, { "without_cancel", context.without_cancel, "ctx" },
  { "merge", context.merge, "ctx", "ctx" }, { "cause", context.cause, "ctx" }, { "origin", context.origin, "ctx" },
  { "after_func", context.after_func, "ctx", "fn" }, { "go", context.go, "fn" },
  { "sleep", context.sleep, "ctx", "dur" }, { "wait_fd", context.wait_fd, "ctx", "fd", "mode" },
  { "fd", context.fd, "fd", "mode" }, { "signal", context.signal, "ctx", "sig" },
  { "run", context.run, "mode_run" }, { "step", context.step, "num" },
  { "group", context.group, "ctx", "limit" }, { "retry", context.retry, "ctx", "fn", "sopts" },
  { "hedge", context.hedge, "ctx", "fn", "sopts" }, { "breaker", context.breaker, "sopts" },
  { "with_min_timeout", context.with_min_timeout, "ctx", "dur" }, { "scope", context.scope, "ctx" },
  { "split", context.split, "ctx", "opts" }, { "service_timeouts", context.service_timeouts, "opts" },
  { "fallback", context.fallback, "ctx", "fn", "fn" }, { "select", context.select, "waitable", "dur" },
  { "on_error", context.on_error, "fn_opt" },
  { "ctx:value", function(k) return bg:value(k) end, "key" },
  { "ctx:with_timeout", function(d) return bg:with_timeout(d) end, "dur" },
  { "retry{base}", function(b) return context.retry(bounded(), function() return 1 end, { base = b }) end, "num" },
  { "hedge{delay}", function(d) return context.hedge(bounded(), function() return 1 end, { delay = d }) end, "num" },
}

local function badarg()
  local s = pick(SPECS)
  local argv, n = {}, #s - 2
  for i = 1, n do argv[i] = good(s[i + 2]) end
  if s[1] == "hedge" then argv[3] = { delay = 0.001 } end
  if s[1] == "with_deadline" then argv[2] = context.time() + 0.001 end -- an epoch time
  local i = R(n)
  local e = pick(BAD[s[i + 2]])
  if e[3] and AV[e[3]] then return end
  local v = e[1]
  if v == NIL then v = nil elseif v == "dead" then v = dead_sock end
  if v == nil and s[1] == "wait_fd" and i == 2 then return end -- nil fd means ... nothing valid
  argv[i] = v
  local r = pack(pcall(s[2], unpack(argv, 1, n)))
  if r[1] then
    if e[2] == "closed" then
      if s[1] == "wait_fd" and (r[2] ~= nil or r[3] == nil) then -- (the context may end first)
        violate("wait_fd on closed fd %s gave %s, %s", show(v), show(r[2]), show(r[3]))
      end
    elseif e[2] then violate("%s accepted bad argument #%d %s", s[1], i, show(v)) end
    if s[1] == "signal" or s[1] == "with_min_timeout" then if r[3] then r[3]() end end
    if s[1] == "on_error" then context.on_error(M.handler) end
  elseif type(r[2]) ~= "string" then
    violate("%s(bad #%d %s) raised a non-string %s", s[1], i, show(v), show(r[2]))
  elseif not r[2]:find("bad argument") and not r[2]:find("calling") then
    M.notes[s[1] .. ": " .. r[2]] = true
  elseif not r[2]:find("'" .. s[1] .. "'", 1, true) and not s[1]:find("[:{(]") then
    M.notes[s[1] .. " names another function: " .. r[2]] = true
  end
end

-------------------------------------------------------------------------------
-- The ops: { name, weight, fn }
-------------------------------------------------------------------------------
local function run_full()
  -- a listening signal context's parent deadline keeps run() going (its
  -- watcher waits on the context), so stop them all first
  for _, n in ipairs(M.sigs) do n.cancel() end
  M.sigs = {}
  local t0 = now()
  local ok, err = pcall(context.run)
  local dt = now() - t0
  expect_ok("context.run()", ok, err)
  if dt > 1.5 * opt.slow then violate("context.run() took %.2f s, every wait left is <= 0.1 s", dt) end
  return ok
end

-- channels, semaphores, events, spawn and shield (shared with fuzz_ngx)
FS = dofile("tools/fuzz_sync.lua")(context, {
  violate = function(...) return violate(...) end,
  go = function(fn) return context.go(fn) end,
  ctx = function() return bounded() end,
})

local OPS = {
  { "derive", 20, function() if #M.nodes < MAXN then derive() end end },
  { "cancel", 10, function() local n = cancellable(); if n then fire_cancel(n, rcause()) end end },
  { "close_cancel", HAS_CLOSE and 2 or 0, function()
    local n = cancellable(); if not n then return end
    n.cancel() -- recorded first, then really closed by <close>
    load("local c <close> = ...")(n.raw)
  end },
  { "after_func", 6, function() -- not on long deadlines: a pending callback keeps run() going
    local n = pnode()
    if n.eff == INF or n.eff < now() + 0.2 then new_callback(n) end
  end },
  { "stop", 5, function()
    if #M.cbs == 0 then return end
    local cb = pick(M.cbs)
    if AV[2] and cb.ran == 0 and not cb.stopped and cb.node.ctx:is_done() then return end
    do_stop(cb)
  end },
  { "defer_stop", 2, function() -- Go's `defer stop()` after a cancel (known bug 2)
    if AV[2] then return end
    local n = cancellable(); if not n then return end
    new_callback(n); fire_cancel(n, rcause()); do_stop(M.cbs[#M.cbs])
    if chance(0.7) then -- drop the stop object too (as the bug's repro did)
      M.cbs[#M.cbs] = nil; n.cbs[#n.cbs] = nil
      collectgarbage(); collectgarbage(); context.step(0)
    end
  end },
  { "go", 10, function() if #M.tasks < MAXTASKS then spawn(1) end end },
  { "task_wait", 3, function()
    local T = pick(M.tasks); if not T then return end
    local ok, e = pcall(T.t.wait, T.t)
    expect_ok("task:wait() from main", ok, e)
  end },
  { "status", 2, function() local T = pick(M.tasks); if T then T.t:status() end end },
  { "nowait", 8, function() expect_ok("run('nowait')", pcall(context.run, "nowait")) end, true },
  { "once", 3, function()
    context.go(function() context.sleep(bg, 0.002) end)
    expect_ok("run('once')", pcall(context.run, "once"))
  end, true },
  { "step", 8, function() expect_ok("step", pcall(context.step, pick({ 0, 0.001, 0.005 }))) end, true },
  { "run", 1, function() if run_full() then check_all(true) end end },
  { "foreign", 4, function() -- the loop driven the foreign way (a luv or cqueues host):
    -- poll context.pollfd() for at most context.timeout(), then step(0), for a while
    if not socket_ok or context.in_task() then return end
    local fd = context.pollfd()
    local src = { getfd = function() return fd end }
    local t_end = socket.gettime() + pick({ 0, 0.002, 0.01 })
    repeat
      local ok, more = pcall(context.step, 0)
      expect_ok("step(0), foreign loop", ok, more)
      if not ok or not more then break end
      local t = context.timeout()
      if t ~= nil and (type(t) ~= "number" or not (t >= 0)) then violate("timeout() = %s", show(t)) end
      if context.pollfd() ~= fd then violate("pollfd() changed: %s, then %s", show(fd), show(context.pollfd())) end
      local left = t_end - socket.gettime()
      if left <= 0 then break end
      socket.select({ src }, nil, (t == nil or t > left) and left or t)
    until false
  end, true },
  { "main_wait", 4, function()
    local r, c = R(4), bounded()
    local ok, e
    if r == 1 then ok, e = pcall(context.sleep, c, rdur())
    elseif r == 2 then ok, e = pcall(c.done, c)
    elseif r == 3 then ok, e = pcall(context.select, c, rdur(), M.tasks[1] and M.tasks[1].t or 0.001)
    else ok, e = pcall(table.sort, { 3, 1, 2 }, function(a, b) context.sleep(c, 0.0005) return a < b end) end
    expect_ok("wait on the main thread", ok, e)
  end },
  { "fd_io", 3, function()
    if not M.sock then return end
    if chance(0.5) then M.sock[1]:send("x") else M.sock[2]:settimeout(0); M.sock[2]:receive(R(4)) end
  end },
  { "signal", 2, function()
    if #M.nodes >= MAXN then return end
    local p, sigs = pnode(), { pick({ "USR1", "USR2" }) }
    if not AV[5] and chance(0.3) then sigs[2] = pick({ "HUP", "PIPE" }) end
    local c, k = context.signal(p.ctx, unpack(sigs))
    if not tostring(c):find("WithSignal(SIG" .. sigs[1], 1, true) then
      violate("tostring of a signal context: %s", tostring(c))
    end
    M.sigs[#M.sigs + 1] = add("sig", c, k, { p }, { sig = sigs[1] })
  end },
  { "kill", 1, function()
    if not M.pid then return end
    local live = {}
    for _, n in ipairs(M.nodes) do if n.sig == "USR1" and not n.ctx:is_done() then live[#live + 1] = n end end
    if #live == 0 then return end
    os.execute("kill -USR1 " .. M.pid)
    -- (bounded in time, not in steps: a step returns at once while tasks
    -- are ready, and a loaded machine may deliver the signal late)
    local t_end = context.now() + 2
    while not live[1].ctx:is_done() and context.now() < t_end do context.step(0.005) end
    for _, n in ipairs(live) do
      local late = n.ctx:err() == DEADLINE and (n.ctx:remaining() or 1) <= 0 -- its deadline came first
      if n.ctx:err() ~= CANCELED and not late then violate("signal context #%d: not cancelled by SIGUSR1", n.id) end
    end
  end },
  { "vclock", 0.5, function() -- virtual time: sleeps end exactly, in order, at once
    if context.in_task() then return end
    local clock = context.virtual_clock{ start = 0, autojump = chance(0.5) }
    local want, got, order = FC.vsleeps(context, clock, bg, R, R(1, 4))
    local ok, err = pcall(clock.advance, clock, 3)
    clock:uninstall()
    if not ok then violate("clock:advance raised: %s", tostring(err)) return end
    FC.check_vsleeps(violate, want, got, order)
  end },
  { "gc", 4, function()
    if chance(0.3) then collectgarbage() collectgarbage() else collectgarbage("step", R(200)) end
  end },
  { "drop", 3, function() -- forget model entries, so that what they held may be collected
    local keep = {}
    for _, n in ipairs(M.nodes) do if n.kind == "root" or chance(0.7) then keep[#keep + 1] = n end end
    M.nodes = keep
    local kcb = {}
    for _, cb in ipairs(M.cbs) do if chance(0.7) then kcb[#kcb + 1] = cb end end
    M.cbs = kcb
  end },
  { "gc_cancel", 2, function() -- a cancel from a __gc finaliser (known bug 9 when it has callbacks)
    local n = cancellable(); if not n or n.kind == "root" then return end
    local cause = rcause()
    setmetatable({}, { __gc = function() n.cancel(cause) end })
    if #n.cbs > 0 and AV[9] then return end
    local keep = {}
    for _, x in ipairs(M.nodes) do if x ~= n then keep[#keep + 1] = x end end
    M.nodes = keep
    local kcb = {}
    for _, cb in ipairs(M.cbs) do if cb.node ~= n then kcb[#kcb + 1] = cb end end
    M.cbs = kcb
    if chance(0.5) then collectgarbage() collectgarbage() end
  end },
  { "chain", 1, function()
    local base, depth, key = pnode(), R(1000, 4000), context.key("deep")
    local c, head, hk = base.ctx, nil, nil
    for i = 1, depth do
      local r = i % 3
      if r == 0 then c = context.with_value(c, key, i)
      elseif r == 1 then local k; c, k = context.with_cancel(c); if not head then head, hk = c, k end
      else c = context.with_timeout(c, 60 + i) end
    end
    if c:value(key) ~= depth - depth % 3 then violate("chain: value %s at depth %d", show(c:value(key)), depth) end
    local waiter = chance(0.5)
    if waiter then
      context.go(function() return c:done() end)
      context.step(0)
    end
    if (waiter or chance(0.7)) and not head:is_done() then
      local cause = { deep = true }
      hk(cause)
      if not rawequal(c:cause(), cause) or c:err() ~= CANCELED or context.origin(c) ~= head then
        violate("chain of %d: tail err %s cause %s", depth, show(c:err()), show(c:cause()))
      end
    end
  end },
  { "co_close", HAS_CLOSE and 2 or 0, function()
    if not AV[6] and chance(0.3) then -- a task parked on a long sleep, closed
      local x = { bug = 6 }
      context.go(function() x.co = running(); context.sleep(bg, 3 * opt.slow) end)
      context.step(0)
      M.closable[#M.closable + 1] = x
    end
    -- close every closable parked task (one left open would sleep on: the
    -- model counts only short waits as left)
    local keep = {}
    local cp = c_parked()
    for _, x in ipairs(M.closable) do
      if not AV[x.bug] and x.co and (parked[x.co] or cp[x.co]) and costatus(x.co) == "suspended" then
        coroutine.close(x.co)
        for _, T in ipairs(M.tasks) do if T.co == x.co then T.closed = true end end
      elseif x.co and costatus(x.co) ~= "dead" then keep[#keep + 1] = x end
    end
    M.closable = keep
    if not AV[6] then -- any parked task of the model
      local T = pick(M.tasks)
      if T and T.co and (parked[T.co] or cp[T.co]) and costatus(T.co) == "suspended" and chance(0.3) then
        coroutine.close(T.co); T.closed = true
      end
    end
  end },
  { "on_error_raise", 0.05, function() -- a handler that raises: reported, loop usable
    context.on_error(function(...) M.handler(...); error("handler raised") end)
    context.go(function() error(our_error(-2)) end)
    pcall(context.step, 0)
    context.on_error(M.handler)
  end },
  { "patterns", 3, function()
    local p = pnode()
    local ok, e = pcall(function()
      local r = R(6)
      if r == 1 then local c, k = context.with_min_timeout(p.ctx, rdur()); if chance(0.5) then k("m") end
      elseif r == 2 then local s = context.split(p.ctx, { a = 0.5, b = 0.5 }); s:stage("a")
      elseif r == 3 then local st = context.service_timeouts({ db = 0.01, overhead = 0.001 }); st:with(p.ctx, "db")
      elseif r == 4 then local sc = context.scope(p.ctx); sc:start("x", 0.01); sc:cancel("x"); sc:close()
      elseif r == 5 then
        if AV[9] and p.ctx:is_done() then return end
        local at = context.adaptive_timeout({ base = 0.01 })
        local c, k = at:with_timeout(p.ctx); k()
      else context.classify(pick({ CANCELED, DEADLINE, "x" })); context.errors():add("op", CANCELED) end
    end)
    expect_ok("patterns", ok, e)
  end },
  { "badarg", 8, badarg },
}
for _, o in ipairs(FS.ops) do OPS[#OPS + 1] = o end
FK = dofile("tools/fuzz_socket.lua")(context, {
  violate = function(...) return violate(...) end,
  go = function(fn) return context.go(fn) end,
  ctx = function() return bounded() end,
})
for _, o in ipairs(FK.ops) do OPS[#OPS + 1] = o end
local pick_op = FC.weighted(OPS)

-------------------------------------------------------------------------------
-- One seed
-------------------------------------------------------------------------------
local function pid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local p = f:read("*n"); f:close()
  return p
end

local function run_seed(seed)
  math.randomseed(seed)
  M = { nodes = {}, nid = 0, node_of = setmetatable({}, { __mode = "k" }), cbs = {}, tasks = {}, tid = 0, sigs = {},
    by_id = setmetatable({}, { __mode = "v" }), errs = {}, cb_fail = {}, closable = {}, notes = {},
    keys = { 1, 1.0, 2, "a", true, context.key("k1"), context.key("k1"), {} }, pid = pid() }
  M.close_member = not AV[11] and chance(0.5)
  M.handler = function(e, tb, task)
    if type(e) == "table" and type(rawget(e, "fuzz")) == "number" then
      local id = e.fuzz
      M.errs[id] = (M.errs[id] or 0) + 1
      if M.cb_fail[id] then
        if not AV[13] and task ~= nil and getmetatable(task) ~= "context.task" then
          violate("on_error: third argument for a callback's error is %s (metatable %s)", show(task), show(getmetatable(task)))
        end
      elseif id > 0 and M.by_id[id] and not rawequal(task, M.by_id[id].t) then
        violate("on_error: third argument is not the failed task")
      end
    else
      violate("unexpected error reported to on_error: %s", show(e))
    end
  end
  context.on_error(M.handler)
  M.br = context.breaker({ threshold = 2, cooldown = 0.01 })
  add("root", bg); add("root", todo)
  if socket_ok and not M.sock then
    local srv = socket.bind("127.0.0.1", 0)
    local ip, port = srv:getsockname()
    local a = socket.connect(ip, port)
    M.sock = { a, srv:accept() }
    srv:close()
    dead_sock = socket.tcp(); dead_sock:close()
  end
  debug.sethook(watchdog, "", 10000)
  -- (ops are timed in real time: the vclock op moves context.now() ahead)
  local real_now = socket_ok and socket.gettime or now
  local i = FC.run_ops(opt, M, pick_op, violate, real_now, function(o) check_all(false, o[4]) end)
  -- the end: nothing may be left behind
  FC.budget = os.clock() + 5 * opt.slow
  if not M.viol then
    M.opi = "end"
    if run_full() then check_all(true) end
    if M.viol == nil and context.metrics().tasks ~= 0 then
      violate("after run(): metrics().tasks = %d", context.metrics().tasks)
    end
  end
  debug.sethook()
  local left = FK.finish()
  if not M.viol and left ~= 0 then violate("%d fd wait(s) left after every socket closed", left) end
  if opt.verbose then for note in pairs(M.notes) do io.stderr:write("note: ", note, "\n") end end
  return M.viol, i
end

local avoid = {}
for k in pairs(AV) do avoid[#avoid + 1] = k end
table.sort(avoid)
FC.run_seeds("fuzz_api", opt, function(s)
  local viol, n = run_seed(s)
  return viol, n, M.opi
end, now, _VERSION .. (#avoid > 0 and (", avoiding known bugs " .. table.concat(avoid, ",")) or ""),
  #avoid > 0 and (" --avoid-known=" .. table.concat(avoid, ",")) or "")
