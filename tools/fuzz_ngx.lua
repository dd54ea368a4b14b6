--- tools/fuzz_ngx.lua — the API fuzzer for the OpenResty backend (README, "Tests").
--
--   lua5.4 tools/fuzz_ngx.lua [--seed N] [--ops N] [--seeds K] [--verbose]
--   env: FUZZ_SEED, FUZZ_OPS, FUZZ_SEEDS, FUZZ_VERBOSE=1, FUZZ_SLOW (time limits x this)
--
-- lcontext.ngx driven on the stand-in for ngx_lua (spec/ngx/mock_ngx.lua:
-- light threads on coroutines, semaphores, timers, a real monotonic clock,
-- so every duration here is a few ms). Random sequences of ops (the table
-- OPS): derivations (with_cancel, with_cancel_cause, with_timeout,
-- with_deadline, with_value, without_cancel, merge), cancels with causes,
-- context.go tasks whose actions sleep, wait on ctx:done(), select over
-- contexts, tasks and numbers, task:wait() (on tasks that end or are killed
-- meanwhile), raise, yield, derive, cancel, run group/retry/hedge; waits in
-- plain light threads (ngx.thread.spawn); after_func callbacks (which may
-- cancel, raise or sleep) and their stop() before and after the cancel;
-- ngx.thread.kill of tasks and threads mid-wait; the mock's fault hook
-- (sema:wait returns at once with true or "timeout", or fails) for request
-- threads or timers (the driver); the mock's loop run for a few ms;
-- collectgarbage; bad arguments (must raise, naming the function).
-- Checked after every op against a small model (M): a done context stays done
-- with the same err and cause; a task's status once it ended never changes,
-- and it ended as its function said (a killed one as "killed" once
-- collected); a wait never ends early (sleeps, numbers in select, deadlines)
-- and ends within LIVE seconds of the loop running once what it waits for
-- is done; stop() returns true at most once and then its callback never
-- runs; a callback runs at most once, and by the end if its context is done
-- and it was not stopped; no error reaches on_error or ngx.log at ERR but the
-- fuzzer's own (and the injected faults'); metrics never go negative, and
-- ngx_watch_errors stays 0. At the end everything is cancelled, leftover
-- waits on contexts nothing can end are killed, the loop runs, and the
-- metrics must be idle: tasks, tasks_waiting, callbacks_pending,
-- ngx_watches, ngx_sema_waiters all 0, ngx_driver_running false.
-- A count hook raises in anything that spins past an op's CPU budget.
-- Exit status 0 when clean, 1 on a violation (the seed, the op index and a
-- replay command are printed); the last line is `N passed, N failed`.
-- Timing makes a replay approximate. Needs yields across pcall: Lua 5.2+ or
-- LuaJIT (on PUC 5.1 it says so and counts nothing).
local unpack = table.unpack or unpack
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local R, fmt = math.random, string.format
local INF, NAN = math.huge, 0 / 0

-------------------------------------------------------------------------------
-- Options and paths
-------------------------------------------------------------------------------
local FC = dofile("tools/fuzz_common.lua")
local opt = FC.options("fuzz_ngx", 500)
if _VERSION == "Lua 5.1" and not jit then
  print("fuzz_ngx: needs yields across pcall (Lua 5.2+ or LuaJIT); skipped")
  print("0 passed, 0 failed")
  os.exit(0)
end
FC.paths()

-- the watchdog: a count hook (per coroutine: every light thread the mock
-- makes gets it) raises once an op has run past its CPU budget
local watchdog = FC.watchdog
local cocreate = coroutine.create
coroutine.create = function(fn)
  local co = cocreate(fn)
  debug.sethook(co, watchdog, "", 10000)
  return co
end

local core = require "lcontext.core"
-- (the mock's loop runs on real time, as nginx's does: core.now is virtual
-- while the vclock op's clock is installed)
local real_clock = core.now
do
  local ok, socket = pcall(require, "socket")
  if ok and socket.gettime then real_clock = socket.gettime end
end
local mock = dofile("spec/ngx/mock_ngx.lua").install(real_clock)
local S, ngx = mock.state, mock.ngx
-- every light thread spawned (the mock keeps only the requests' in S.live;
-- lcontext.ngx captures spawn as it loads)
local all_threads = setmetatable({}, { __mode = "k" })
do
  local spawn = ngx.thread.spawn
  ngx.thread.spawn = function(...)
    local th = spawn(...)
    if th then all_threads[th] = true end
    return th
  end
end
local context = require "lcontext.ngx"

local now, bg = context.now, context.background()
local CANCELED, DEADLINE = context.canceled, context.deadline_exceeded
local KILLED = "task's light thread was killed"
local LIVE = 0.15 * opt.slow -- seconds of loop after which a wait must have ended
local FAULT = "fuzzfail"     -- what an injected semaphore failure says

-------------------------------------------------------------------------------
-- The model
-------------------------------------------------------------------------------
local M -- the state of one seed's run
local MAXN, MAXTASKS = 150, 30 -- contexts in all, tasks running at once

local function violate(f, ...)
  local msg = fmt(f, ...)
  if not M.viol then M.viol = msg end
  if opt.verbose then io.stderr:write("VIOLATION: ", msg, "\n") end
end
local pick, chance, show = FC.pick, FC.chance, FC.show
local function is_fault(e) return type(e) == "string" and e:find(FAULT, 1, true) ~= nil end

-- node: { id, kind, ctx, parents, cancel, dl (monotonic, a lower bound of
-- its own deadline), eff (of its chain), endable, done = {err, cause} }
local function add(kind, ctx, cancel, parents, dl)
  M.nid = M.nid + 1
  local n = { id = M.nid, kind = kind, ctx = ctx, parents = parents or {}, dl = dl, eff = dl or INF }
  n.endable = cancel ~= nil or dl ~= nil
  if kind ~= "wc" then
    for _, p in ipairs(n.parents) do
      if p.eff < n.eff then n.eff = p.eff end
      n.endable = n.endable or p.endable
    end
  else
    n.eff = INF
  end
  if cancel then
    n.cancel = function(cause) n.cancelled = true; return cancel(cause) end
  end
  M.node_of[ctx] = n
  M.nodes[#M.nodes + 1] = n
  return n
end

local function observe(n)
  local e = n.ctx:err()
  if e == nil then
    if n.done then violate("#%d %s: was done (%s), err() is nil now", n.id, n.kind, show(n.done[1])) end
    return
  end
  local c = n.ctx:cause()
  if n.done then
    if not (rawequal(e, n.done[1]) and rawequal(c, n.done[2])) then
      violate("#%d %s: done context changed: err %s->%s cause %s->%s", n.id, n.kind,
        show(n.done[1]), show(e), show(n.done[2]), show(c))
    end
    return
  end
  n.done = { e, c }
  if e ~= CANCELED and e ~= DEADLINE then return violate("#%d: err() is %s", n.id, show(e)) end
  if not n.endable then violate("#%d %s: done, but nothing could end it", n.id, n.kind) end
  if e == DEADLINE then
    local o = M.node_of[context.origin(n.ctx)]
    local dl = o and o.dl or n.eff
    if now() < dl then violate("#%d %s: deadline fired %.6f s early", n.id, n.kind, dl - now()) end
  end
end

-- a "failure" value known to the on_error handler
local function our_error(id)
  return setmetatable({ fuzz = id }, { __tostring = function() return "fuzz error " .. id end })
end

-- tasks: T = { id, t, raise, killed (at kill: was running), collected, final }
local function check_tasks()
  local nrun = 0
  for _, T in ipairs(M.tasks) do
    local st = T.t:status()
    if st == "running" then nrun = nrun + 1 end
    if T.final then
      if st ~= T.final then violate("task %d: status went from %s to %s", T.id, T.final, st) end
    elseif st ~= "running" then
      T.final = st
      local r = pack(T.t:wait()) -- ended: returns at once
      if T.killed then
        if not (st == "failed" and r[1] == nil and r[2] == KILLED) then
          violate("task %d: killed, ended %s %s %s", T.id, st, show(r[1]), show(r[2]))
        end
      elseif T.raise then
        if st ~= "failed" or type(r[2]) ~= "table" or r[2].fuzz ~= T.id then
          violate("task %d: expected its own failure, got %s %s %s", T.id, st, show(r[1]), show(r[2]))
        elseif M.errs[T.id] ~= 1 then
          violate("task %d: its failure reached on_error %s times", T.id, show(M.errs[T.id]))
        end
      elseif st ~= "ok" or r[1] ~= "ok" or r[2] ~= T.id then
        violate("task %d: expected ok, got %s %s %s", T.id, st, show(r[1]), show(r[2]))
      end
    elseif T.killed and T.collected then
      violate("task %d: killed and collected, still running", T.id)
    end
  end
  M.nrun = nrun
end

-- waits: W = { id, what, nodes, task (a T), at (a sleep's end), t0, t1, ended,
-- killed, unendable, due (loop seconds since what it waits for is done) }
local function wait_due(W)
  for _, n in ipairs(W.nodes) do if n.ctx:is_done() then return true end end
  if W.at and now() >= W.at then return true end
  local T = W.task
  if T and (T.t:status() ~= "running" or (T.killed and T.collected)) then return true end
  return false
end

local function check_waits()
  local keep = {}
  for _, W in ipairs(M.waits) do
    if not W.ended and not W.killed then
      if W.due then
        if W.due > LIVE then
          violate("wait %d (%s): still waiting after %.3f s of loop since it was due", W.id, W.what, W.due)
        end
      elseif wait_due(W) then
        W.due = 0
      end
      keep[#keep + 1] = W
    end
  end
  M.waits = keep
end

-- the loop runs for `secs`: counted towards the waits that are due
local function spin(secs)
  local t0 = now()
  mock.spin(secs)
  local dt = now() - t0
  for _, W in ipairs(M.waits) do if W.due then W.due = W.due + dt end end
end

local function check_metrics()
  local m = context.metrics()
  for _, k in ipairs({ "tasks", "tasks_waiting", "callbacks_pending", "ngx_watches", "ngx_sema_waiters",
    "ngx_callbacks_queued" }) do
    if m[k] < 0 then violate("metrics().%s = %d", k, m[k]) end
  end
  if m.ngx_watch_errors ~= M.watch_errors0 then
    violate("metrics().ngx_watch_errors went from %d to %d", M.watch_errors0, m.ngx_watch_errors)
  end
  if core.sched_stats and core.sched_stats().lost ~= 0 then violate("sched_stats().lost ~= 0") end
end

local function check_logs()
  for i = M.log_seen + 1, #S.logs do
    local l = S.logs[i]
    if l.level == "error" then
      if l.msg:find("error in the deadline driver: semaphore wait failed: " .. FAULT, 1, true) then
        M.driver_failed = true
      elseif not is_fault(l.msg) then
        violate("ngx.log at ERR: %s", l.msg)
      end
    end
  end
  M.log_seen = #S.logs
end

local function check_cbs(final)
  for _, cb in ipairs(M.cbs) do
    if cb.ran > 1 then violate("after_func %d ran %d times", cb.id, cb.ran) end
    if cb.stop_true > 1 then violate("after_func %d: stop() returned true %d times", cb.id, cb.stop_true) end
    if final and cb.node.done and cb.stop_true == 0 and cb.ran == 0 then
      violate("after_func %d on done #%d never ran", cb.id, cb.node.id)
    end
  end
end

local FS -- the shared structured-concurrency ops (tools/fuzz_sync.lua, below)
local function check_all(final)
  for _, n in ipairs(M.nodes) do observe(n) end
  check_tasks()
  check_waits()
  check_cbs(final)
  check_metrics()
  check_logs()
  if FS then FS.check(false) end
end

-------------------------------------------------------------------------------
-- Helpers for ops
-------------------------------------------------------------------------------
local function pnode() return pick(M.nodes) end
local function cancellable()
  for _ = 1, 8 do local n = pnode(); if n.cancel then return n end end
end
local function rcause()
  local r = R(5)
  if r == 1 then return nil elseif r == 2 then return "cause" .. R(99)
  elseif r == 3 then return { tag = R(99) } elseif r == 4 then return false end
  return CANCELED
end
local function rdur() -- a short duration, sometimes odd
  local r = R(8)
  if r == 1 then return 0 elseif r == 2 then return -R() elseif r == 3 then return 1e-9 end
  return R() * 0.02
end

-- in a request's phase (the fuzzer's main thread stands for its C code)
local function in_request(fn, ...)
  local args = pack(...)
  return mock.in_phase("content", function() return fn(unpack(args, 1, args.n)) end)
end

local DERIVE = {
  function(p) local c, k = context.with_cancel(p.ctx); return add("cancel", c, k, { p }) end,
  function(p) local c, k = p.ctx:with_cancel_cause(); return add("cause", c, k, { p }) end,
  function(p)
    local d = ({ 0, -1, 1e-9, R() * 0.02, R() * 0.005, 1, 3600 })[R(7)]
    local t0 = now()
    local c, k = context.with_timeout(p.ctx, d, chance(0.3) and rcause() or nil)
    return add("timeout", c, k, { p }, t0 + d)
  end,
  function(p)
    local d = ({ -5, 0, R() * 0.02, 10 })[R(4)]
    local m0 = now()
    local ep = context.time() + d
    local c, k = p.ctx:with_deadline(ep)
    return add("deadline", c, k, { p }, ep + m0 - context.time())
  end,
  function(p) return add("value", context.with_value(p.ctx, "k" .. R(3), R(9)), nil, { p }) end,
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
local function derive()
  if #M.nodes < MAXN then return DERIVE[R(#DERIVE)](pnode()) end
  return pnode()
end

-- A wait, run in a light thread: W.fn() waits; its results are checked here
local function new_wait(what, nodes, fn, extra)
  M.wid = M.wid + 1
  local W = extra or {}
  W.id, W.what, W.nodes, W.fn = M.wid, what, nodes, fn
  W.unendable = true
  for _, n in ipairs(nodes) do if n.endable then W.unendable = false end end
  if W.at or W.task then W.unendable = false end
  M.waits[#M.waits + 1] = W
  return W
end

local function run_wait(W)
  W.t0 = now()
  if W.rel then W.at = W.t0 + W.rel end
  local r = pack(pcall(W.fn))
  W.t1, W.ended = now(), true
  if W.killed then violate("wait %d (%s): ended after its thread was killed", W.id, W.what) end
  if not r[1] then
    if not is_fault(r[2]) then violate("wait %d (%s) raised: %s", W.id, W.what, show(r[2])) end
    return
  end
  local check = W.check
  if check then check(W, r) end
end

-- a wait that ended with ctx's err: a deadline passed by then, never early
local function not_early(W, n, err)
  if err ~= DEADLINE then return end
  local o = M.node_of[context.origin(n.ctx)]
  local dl = o and o.dl or n.eff
  if W.t1 < dl then violate("wait %d (%s): deadline_exceeded %.6f s early", W.id, W.what, dl - W.t1) end
end

-- the waits (each one made for a light thread to run)
local function wait_done(n)
  return new_wait("done #" .. n.id, { n }, function() return n.ctx:done() end, {
    check = function(W, r)
      if not rawequal(r[2], n.ctx:err()) or r[2] == nil then
        violate("wait %d: done() gave %s, err() is %s", W.id, show(r[2]), show(n.ctx:err()))
      end
      not_early(W, n, r[2])
    end })
end

local function wait_sleep(n, d)
  return new_wait(fmt("sleep #%d %.4f", n.id, d), { n }, function() return context.sleep(n.ctx, d) end, {
    rel = d > 0 and d or nil,
    check = function(W, r)
      if r[2] == true then
        if W.t1 < W.t0 + d then violate("wait %d: sleep(%.4f) ended %.6f s early", W.id, d, W.t0 + d - W.t1) end
      elseif r[2] ~= nil or not rawequal(r[3], n.ctx:err()) or r[3] == nil then
        violate("wait %d: sleep gave %s, %s; err() is %s", W.id, show(r[2]), show(r[3]), show(n.ctx:err()))
      else
        not_early(W, n, r[3])
      end
    end })
end

local function wait_select(ns, d, T)
  local ws, nodes = {}, {}
  for _, n in ipairs(ns) do ws[#ws + 1] = n.ctx; nodes[#nodes + 1] = n end
  if T then ws[#ws + 1] = T.t end
  local di
  if d then ws[#ws + 1] = d; di = #ws end
  -- shuffle the waitables
  for i = #ws, 2, -1 do
    local j = R(i)
    ws[i], ws[j] = ws[j], ws[i]
    if di == i then di = j elseif di == j then di = i end
  end
  return new_wait("select", nodes, function() return context.select(unpack(ws)) end, {
    rel = d and d > 0 and d or nil, task = T,
    check = function(W, r)
      local i, x = r[2], r[3]
      if type(i) ~= "number" or not rawequal(ws[i], x) then
        return violate("wait %d: select gave %s, %s", W.id, show(i), show(x))
      end
      if i == di then
        if W.t1 < W.t0 + d then violate("wait %d: select's %.4f s ended %.6f s early", W.id, d, W.t0 + d - W.t1) end
      elseif type(x) == "number" then
        violate("wait %d: select gave a number that is not its sleep", W.id)
      elseif getmetatable(x) == "context" then
        if not x:is_done() then violate("wait %d: select gave a context that is not done", W.id) end
        local n = M.node_of[x]
        if n then not_early(W, n, x:err()) end
      elseif x:status() == "running" then
        violate("wait %d: select gave a task still running", W.id)
      end
    end })
end

local function wait_task(T)
  return new_wait("task:wait " .. T.id, {}, function() return T.t:wait() end, {
    task = T,
    check = function(W, r)
      if T.t:status() == "running" then violate("wait %d: task:wait returned, task %d running", W.id, T.id) end
    end })
end

local function pick_task()
  if chance(0.3) then -- one killed and not yet collected: its guard may run at any allocation
    local ks = {}
    for _, T in ipairs(M.tasks) do if T.killed and not T.collected then ks[#ks + 1] = T end end
    if #ks > 0 then return pick(ks) end
  end
  for _ = 1, 4 do
    local T = pick(M.tasks)
    if T and T.t:status() == "running" then return T end
  end
  return pick(M.tasks)
end

-- a random wait on the model's contexts, tasks and numbers
local function random_wait()
  local r = R(6)
  if r == 1 then return wait_done(pnode())
  elseif r == 2 then return wait_sleep(pnode(), rdur())
  elseif r <= 4 then
    local ns = { pnode() }
    if chance(0.5) then ns[2] = pnode() end
    local T = chance(0.4) and pick_task() or nil
    local d = chance(0.6) and rdur() or nil
    return wait_select(ns, d, T)
  elseif r == 5 then
    local T = pick_task()
    if T then return wait_task(T) end
  end
  return wait_done(derive())
end

-- the helpers, small calls, in a light thread
local function helper_call()
  local n = pnode()
  local r = R(3)
  if r == 1 then
    local opts = chance(0.5) and R(2) or nil
    if chance(0.5) then -- a policy (docs/resilience.md, "Policies")
      local policy = pick({ "fail_fast", "supervise", "any", "quorum" })
      opts = { limit = opts, policy = policy, quorum = policy == "quorum" and R(3) or nil }
    end
    local g, gctx = context.group(n.ctx, opts)
    for _ = 1, R(3) do
      local kind = R(3)
      g:go(function(c)
        local ok, err = context.sleep(c, R() * 0.005)
        if kind == 1 then return true elseif kind == 2 then return nil, err or "member failed" end
        return ok, err
      end)
    end
    g:wait()
    if not gctx:is_done() then violate("group: its context runs after g:wait()") end
    for i, x in ipairs(g:results()) do
      if x.status == "running" then violate("group: member %d still running after g:wait()", i) end
    end
  elseif r == 2 then
    context.retry(n.ctx, function(_, k)
      if k < R(3) then return nil, "flaky" end
      return "ok"
    end, { base = 0.001, jitter = "none", attempts = R(3) })
  else
    context.hedge(n.ctx, function(actx, i)
      if i == 1 and chance(0.5) then actx:done(); return nil, "slow one" end
      context.sleep(actx, R() * 0.003)
      return i
    end, { delay = R() * 0.003, attempts = R(3) })
  end
end

-- a task: yields, waits, derives, cancels, helpers; returns ("ok", id) or raises
local spawn_task
local function task_fn(T, acts)
  return function()
    for _, a in ipairs(acts) do
      if a == "yield" then coroutine.yield()
      elseif a == "wait" then
        local W = random_wait()
        W.thread = T
        run_wait(W)
      elseif a == "cancel" then local n = cancellable(); if n then n.cancel(rcause()) end
      elseif a == "derive" then derive()
      elseif a == "go" then if M.nrun < MAXTASKS then spawn_task() end
      elseif a == "helper" then
        local ok, e = pcall(helper_call)
        if not ok and not is_fault(e) then violate("task %d: helper raised %s", T.id, show(e)) end
      end
    end
    if T.raise then error(our_error(T.id)) end
    return "ok", T.id
  end
end

local ACTS = { "yield", "wait", "wait", "wait", "cancel", "derive", "go", "helper" }
function spawn_task()
  M.tid = M.tid + 1
  local T = { id = M.tid, raise = chance(0.15) }
  local acts = {}
  for i = 1, R(3) do acts[i] = pick(ACTS) end
  T.t = context.go(task_fn(T, acts))
  M.tasks[#M.tasks + 1] = T
  M.nrun = M.nrun + 1
  return T
end

-------------------------------------------------------------------------------
-- after_func
-------------------------------------------------------------------------------
local function new_callback(n)
  M.cid = M.cid + 1
  local cb = { id = M.cid, node = n, ran = 0, stop_true = 0 }
  local act = R(6)
  local ok, stop = pcall(context.after_func, n.ctx, function()
    cb.ran = cb.ran + 1
    if cb.stop_true > 0 then violate("after_func %d ran after stop() returned true", cb.id) end
    if not n.ctx:is_done() then violate("after_func %d ran, #%d is not done", cb.id, n.id) end
    if act == 1 then local c = cancellable(); if c then c.cancel(rcause()) end
    elseif act == 2 then M.cb_fail[cb.id] = true; error(our_error(-cb.id))
    elseif act == 3 then context.sleep(bg, 0.001)
    elseif act == 4 and M.nrun < MAXTASKS then spawn_task()
    end
  end)
  if not ok then return violate("after_func raised: %s", show(stop)) end
  cb.stop = stop
  M.cbs[#M.cbs + 1] = cb
end

local function stop_callback(cb)
  local r = cb.stop()
  if r == true then
    cb.stop_true = cb.stop_true + 1
    if cb.ran > 0 then violate("after_func %d: stop() returned true after it ran", cb.id) end
  elseif r ~= false then
    violate("after_func %d: stop() returned %s", cb.id, show(r))
  end
  return r
end

-------------------------------------------------------------------------------
-- Bad arguments: each must raise an error naming the function
-------------------------------------------------------------------------------
local function fake_task() return context.go(function() end) end
local BADARGS = {
  { "with_cancel", function() return context.with_cancel(nil) end },
  { "with_timeout", function() return context.with_timeout(bg, "x") end },
  { "with_timeout", function() return context.with_timeout(bg, NAN) end },
  { "with_deadline", function() return context.with_deadline(bg, {}) end },
  { "with_value", function() return context.with_value(5, "k", 1) end },
  { "merge", function() return context.merge(bg, "x") end },
  { "go", function() return context.go(nil) end },
  { "go", function() return context.go(42) end },
  { "sleep", function() return context.sleep(nil, 1) end },
  { "sleep", function() return context.sleep(bg, NAN) end },
  { "sleep", function() return context.sleep(bg, "1") end },
  { "select", function() return context.select() end },
  { "select", function() return context.select(bg, "x") end },
  { "select", function() return context.select(NAN) end },
  { "select", function() return context.select(INF) end },
  { "select", function() return context.select({ fd = 3 }) end },
  { "after_func", function() return context.after_func(nil, print) end },
  { "after_func", function() return context.after_func(bg, 5) end },
  { "on_error", function() return context.on_error(5) end },
  { "timeout_ms", function() return context.timeout_ms(nil) end },
  { "wait", function() local t = fake_task(); return t.wait(5) end },
  { "status", function() local t = fake_task(); return t.status({}) end },
  { "done", function() return bg.done(5) end },
  { "group", function() return context.group(nil) end },
  { "retry", function() return context.retry(bg, nil) end },
  { "hedge", function() return context.hedge(bg, 5) end },
  { "wait_fd", function() return context.wait_fd(bg, 0, "r") end },
  { "signal", function() return context.signal("INT") end },
  { "run", function() return context.run() end },
  -- waits and go where nginx cannot yield
  { "done", function() return mock.in_phase("log", function() return context.with_cancel(bg):done() end) end, true },
  { "go", function() return mock.in_phase("header_filter", function() return context.go(print) end) end, true },
  { "sleep", function() return mock.in_phase("set", function() return context.sleep(bg, 0.01) end) end, true },
  { "from_request", function() return mock.in_phase("timer", function() return context.from_request() end) end, true },
}
local function badarg()
  local b = pick(BADARGS)
  local ok, e
  if b[3] then ok, e = pcall(b[2]) else ok, e = pcall(in_request, b[2]) end
  if ok then return violate("%s accepted a bad argument", b[1]) end
  if type(e) ~= "string" then return violate("%s raised a non-string %s", b[1], show(e)) end
  if not e:find(b[1], 1, true) then violate("%s's error does not name it: %s", b[1], e) end
end

-------------------------------------------------------------------------------
-- Faults: the mock's sema:wait returns at once (true: a stray post;
-- nil, "timeout": a 0 ms timeout) or fails, for the next k waits of a phase
-------------------------------------------------------------------------------
local function set_fault()
  local ph = chance(0.7) and "content" or "timer"
  local mode = R(ph == "timer" and 5 or 3)
  local res = ({ { true }, { nil, "timeout" }, { nil, FAULT } })[mode > 3 and R(2) or mode]
  if ph == "timer" and res[2] == FAULT and chance(0.7) then res = { nil, "timeout" } end
  local left = R(12)
  M.faults = M.faults + 1
  S.sema_hook = function(_, _, cur)
    if not cur or cur.phase ~= ph or left <= 0 then return end
    left = left - 1
    return res[1], res[2]
  end
end

-------------------------------------------------------------------------------
-- The ops: { name, weight, fn }
-------------------------------------------------------------------------------
local function live_threads()
  local out = {}
  for _, T in ipairs(M.tasks) do
    local th = T.t:thread()
    if T.t:status() == "running" and th and not th.dead then out[#out + 1] = { th = th, T = T } end
  end
  for _, x in ipairs(M.raw) do
    if not x.th.dead then out[#out + 1] = x end
  end
  return out
end

local function kill(x)
  -- the waits this thread is in: killed with it
  for _, W in ipairs(M.waits) do
    if not W.ended and (W.raw == x.th or (x.T and W.thread == x.T)) then W.killed = true end
  end
  if x.T then x.T.killed = true end
  M.kills = M.kills + 1
  ngx.thread.kill(x.th)
end

local function full_gc()
  collectgarbage(); collectgarbage()
  for _, T in ipairs(M.tasks) do if T.killed then T.collected = true end end
end

-- channels, semaphores, events, spawn and shield (shared with fuzz_api),
-- and light threads killed in their waits
FS = dofile("tools/fuzz_sync.lua")(context, {
  violate = function(...) return violate(...) end,
  go = function(fn) return in_request(function() return context.go(fn) end) end,
  ctx = function() return context.with_timeout(pnode().ctx, R() * 0.03) end,
  kill = function(t) M.kills = M.kills + 1; ngx.thread.kill(t:thread()) end,
  settle = function() spin(0.005) end,
  fault = function(msg) return is_fault(msg) end,
})

-- virtual time: sleeps end exactly, in order, at once (an op, and once
-- more at the end of each seed, when the model is idle)
local function vclock_check()
  if real_clock == core.now then return end -- (no real clock for the mock)
  -- only while nothing else waits: moving time 3 s ahead would end the
  -- model's other deadlines (a shield's, say) before it expects them to
  local m = context.metrics()
  if m.tasks > 0 or m.tasks_waiting > 0 or m.ngx_watches > 0 or m.callbacks_pending > 0 then
    return
  end
  local want, got, order, err
  local hook = S.sema_hook -- (no injected semaphore faults meanwhile)
  S.sema_hook = nil
  local finished, e = false, nil
  in_request(function()
    ngx.thread.spawn(function() -- the op's own light thread (a request's)
      local ok, perr = pcall(function()
        local clock = context.virtual_clock{ start = 0 }
        want, got, order = FC.vsleeps(context, clock, bg, R, R(1, 3))
        local aok, aerr = pcall(clock.advance, clock, 3)
        clock:uninstall()
        if not aok then err = aerr end
      end)
      if not ok then e = perr end
      finished = true
    end)
  end)
  local stop_at = real_clock() + 5
  while not finished and real_clock() < stop_at do mock.spin(0.001) end
  S.sema_hook = hook
  if not finished then e = "the op's thread did not finish in 5 s" end
  if e then violate("vclock: %s", tostring(e)) return end
  if err then violate("clock:advance raised: %s", tostring(err)) return end
  FC.check_vsleeps(violate, want, got, order)
end

local OPS = {
  { "derive", 10, function() derive() end },
  { "cancel", 5, function() local n = cancellable(); if n then n.cancel(rcause()) end end },
  { "go", 10, function() if M.nrun < MAXTASKS then in_request(spawn_task) end end },
  { "thread_wait", 6, function() -- a plain light thread (not a task) waits
    local W = random_wait()
    local x = {}
    W.raw = nil
    in_request(function()
      x.th = ngx.thread.spawn(function() run_wait(W) end)
    end)
    W.raw = x.th
    M.raw[#M.raw + 1] = x
  end },
  { "after_func", 6, function() new_callback(chance(0.3) and derive() or pnode()) end },
  { "stop", 4, function() local cb = pick(M.cbs); if cb then stop_callback(cb) end end },
  { "cancel_then_stop", 2, function() -- stop between the cancel and the runner
    local cb = pick(M.cbs)
    if cb and cb.node.cancel then
      cb.node.cancel(rcause())
      local r = stop_callback(cb)
      if cb.ran == 0 and cb.stop_true == 0 and r ~= true and cb.node.endable then
        -- (false is allowed only if it ran, or an earlier stop() said true)
        violate("after_func %d: stop() right after the cancel gave %s", cb.id, show(r))
      end
    end
  end },
  { "kill", 3, function()
    local x = pick(live_threads())
    if x then kill(x) end
  end },
  { "fault", 2, set_fault },
  { "unfault", 2, function() S.sema_hook = nil end },
  { "spin", 12, function() spin(R() * 0.004) end },
  { "vclock", 0.5, function() vclock_check() end },
  { "spin0", 6, function() spin(0) end },
  { "gc", 2, full_gc },
  { "gc_step", 2, function() collectgarbage("step") end },
  { "metrics", 1, function() context.metrics(); context.metrics_text() end },
  { "badarg", 5, badarg },
}
for _, o in ipairs(FS.ops) do OPS[#OPS + 1] = o end
local pick_op = FC.weighted(OPS)

-------------------------------------------------------------------------------
-- The end: cancel everything, kill what nothing can end, run the loop; the
-- metrics must be idle
-------------------------------------------------------------------------------
local function idle(m)
  return m.tasks == 0 and m.tasks_waiting == 0 and m.callbacks_pending == 0 and m.ngx_watches == 0
    and m.ngx_sema_waiters == 0 and not m.ngx_driver_running and m.ngx_callbacks_queued == 0
end

local function finish()
  S.sema_hook = nil
  for _, n in ipairs(M.nodes) do if n.cancel then n.cancel("the end") end end
  if M.driver_failed then -- (a deadline passed with no driver: a wait kicks one)
    in_request(function() ngx.thread.spawn(function() context.sleep(context.with_timeout(bg, 0.001), 1) end) end)
  end
  -- until every wait that can end has (callbacks may start tasks: repeat)
  for _ = 1, 40 do
    spin(0.005)
    check_all()
    if M.viol then return end
    local pending = false
    for _, W in ipairs(M.waits) do if not W.ended and not W.killed and not W.unendable then pending = true end end
    for _, n in ipairs(M.nodes) do if n.cancel and not n.ctx:is_done() then n.cancel("the end") end end
    if not pending then break end
  end
  -- callbacks that run (one may sleep) end by themselves
  for _ = 1, 40 do
    if context.metrics().ngx_callbacks_queued == 0 then break end
    spin(0.005)
  end
  -- the sync ops' tasks all end by themselves (bounded waits, cancels)
  for _ = 1, 100 do
    if FS.running() == 0 then break end
    spin(0.005)
  end
  FS.check(true)
  if M.viol then return end
  -- what nothing can end: its threads are killed
  for _ = 1, 3 do
    for _, x in ipairs(live_threads()) do kill(x) end
    -- then the request ends: the light threads left (a helper's, whose
    -- caller was killed and that waits on a context nobody can end) go too
    local left = {}
    for th in pairs(all_threads) do if not th.dead then left[#left + 1] = th end end
    if #left > 0 and opt.verbose then io.stderr:write(#left, " light thread(s) left, killed\n") end
    for _, th in ipairs(left) do ngx.thread.kill(th) end
    full_gc()
    spin(0.005)
  end
  check_all(true)
  if M.viol then return end
  for _, cb in ipairs(M.cbs) do
    if cb.ran == 0 and cb.stop_true == 0 then stop_callback(cb) end
  end
  full_gc()
  local m
  for _ = 1, 40 do
    spin(0.005)
    m = context.metrics()
    if idle(m) then break end
    full_gc()
  end
  check_all(true)
  for _, T in ipairs(M.tasks) do
    if T.t:status() == "running" then violate("task %d still running at the end", T.id) end
  end
  for _, W in ipairs(M.waits) do
    if not W.ended and not W.killed then violate("wait %d (%s) never ended", W.id, W.what) end
  end
  if not idle(m) then
    violate("not idle at the end: tasks %d, tasks_waiting %d, callbacks_pending %d, ngx_watches %d, "
      .. "ngx_sema_waiters %d, ngx_driver_running %s, ngx_callbacks_queued %d", m.tasks, m.tasks_waiting,
      m.callbacks_pending, m.ngx_watches, m.ngx_sema_waiters, tostring(m.ngx_driver_running), m.ngx_callbacks_queued)
  end
  if core._next_wakeup() ~= nil then violate("the wheel still has a deadline at the end") end
end

-------------------------------------------------------------------------------
-- One seed
-------------------------------------------------------------------------------
local function run_seed(seed)
  math.randomseed(seed)
  M = { nodes = {}, nid = 0, node_of = setmetatable({}, { __mode = "k" }), cbs = {}, cid = 0, tasks = {},
    tid = 0, waits = {}, wid = 0, raw = {}, errs = {}, cb_fail = {}, log_seen = #S.logs,
    nrun = 0, kills = 0, faults = 0,
    watch_errors0 = context.metrics().ngx_watch_errors }
  context.on_error(function(e, tb, task)
    if type(e) == "table" and type(rawget(e, "fuzz")) == "number" then
      local id = e.fuzz
      M.errs[id] = (M.errs[id] or 0) + 1
      if id < 0 then
        if task ~= nil then violate("on_error: a callback's error came with task %s", show(task)) end
      elseif M.tasks[id] and not rawequal(M.tasks[id].t, task) then
        violate("on_error: third argument is not the failed task %d", id)
      end
    elseif not is_fault(tostring(e)) then
      violate("unexpected error reported to on_error: %s", show(e))
    end
  end)
  add("root", bg); add("root", context.todo())
  -- a third of the seeds collect often: finalisers (the guards of killed
  -- threads) then run inside the backend's own allocations
  local aggressive = chance(1 / 3)
  collectgarbage("setpause", aggressive and 10 or 200)
  collectgarbage("setstepmul", aggressive and 400 or 100)
  local i = FC.run_ops(opt, M, pick_op, violate, real_clock, function() check_all() end)
  if not M.viol then
    M.opi = "end"
    FC.budget = os.clock() + 20 * opt.slow
    local ok, err = pcall(finish)
    FC.budget = nil
    if not ok then violate("the end raised: %s", show(err)) end
    if not M.viol then
      M.opi = "end (vclock)"
      vclock_check()
    end
  end
  for id in pairs(M.cb_fail) do
    if not M.viol and M.errs[-id] ~= 1 then violate("after_func %d: its error reached on_error %s times", id, show(M.errs[-id])) end
  end
  if opt.verbose then
    local c = { waits = M.wid, tasks = M.tid, callbacks = M.cid, contexts = M.nid, ran = 0, stopped = 0,
      kills = M.kills, faults = M.faults }
    for _, cb in ipairs(M.cbs) do c.ran = c.ran + cb.ran; c.stopped = c.stopped + cb.stop_true end
    local ks = {}
    for k, v in pairs(c) do ks[#ks + 1] = k .. " " .. v end
    table.sort(ks)
    io.stderr:write("seed ", seed, ": ", table.concat(ks, ", "), "\n")
  end
  -- the next seed starts clean
  S.sema_hook = nil
  for _, x in ipairs(live_threads()) do kill(x) end
  for _, cb in ipairs(M.cbs) do cb.stop() end
  for _, n in ipairs(M.nodes) do if n.cancel then n.cancel() end end
  M.tasks, M.cbs, M.nodes, M.waits, M.raw = {}, {}, {}, {}, {}
  collectgarbage(); collectgarbage()
  mock.spin(0.005)
  return M.viol, i
end

FC.run_seeds("fuzz_ngx", opt, function(s)
  local viol, n = run_seed(s)
  return viol, n, M.opi
end, now, jit and jit.version or _VERSION)
