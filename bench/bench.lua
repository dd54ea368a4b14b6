-- bench/bench.lua: the Lua side of `make bench`.
--
-- Measures the same figures as bench/go for two implementations in one
-- process: lcontext (require "lcontext") and the plain-Lua baseline
-- (bench/plain.lua), plus the floors that any C binding pays.
--
--   LUA_PATH="./lua/?.lua;./lua/?/init.lua;./bench/?.lua;;" \
--   LUA_CPATH="./build/?.so;;" lua5.4 bench/bench.lua [IMPL ...]
--
-- IMPL is any of floor, lcontext, plain (default: all three). The
-- environment variable BENCH_SCALE (default 1) multiplies the iteration
-- counts of the timing loops (BENCH_SCALE=0.1 gives a quick, noisier run);
-- the sizes of trees and pending sets (100,000 children, 1,000,000
-- deadlines) stay as named.
--
-- Output (stdout): one line per figure, `impl<TAB>name<TAB>value<TAB>unit`.
-- Notes and errors go to stderr. A figure that raises is reported on stderr
-- and skipped; the others still run.
--
-- Method: each ns/op figure runs a warm-up of a tenth of the iterations,
-- then 5 runs of n iterations, each after a full GC, on a monotonic
-- wall clock; the median run is reported. GC work done during a run counts,
-- as it does in Go. Loop overhead is included, as in Go (figure floor/loop).

local RUNS = 5
local SCALE = tonumber(os.getenv("BENCH_SCALE") or "") or 1

local function iters(n)
  return math.max(1, math.floor(n * SCALE))
end

-- {==== clock ========================================================

local clock, clock_name
do
  local ok, system = pcall(require, "system")
  if ok and type(system) == "table" and system.monotime then
    clock, clock_name = system.monotime, "system.monotime (luasystem, monotonic)"
  else
    local ok2, socket = pcall(require, "socket")
    if ok2 and type(socket) == "table" and socket.gettime then
      clock, clock_name = socket.gettime, "socket.gettime (LuaSocket, wall clock, 1 us)"
    else
      clock, clock_name = os.clock, "os.clock (CPU time)"
    end
  end
end

-- ====}

-- {==== measuring ====================================================

local function median(xs)
  local s = {}
  for i = 1, #xs do s[i] = xs[i] end
  table.sort(s)
  return s[math.floor((#s + 1) / 2)]
end

local function full_gc()
  collectgarbage("collect")
  collectgarbage("collect")
end

-- body(n) runs n iterations of the operation; returns median ns per op.
local function ns_per_op(n, body)
  body(math.max(1, math.floor(n / 10)))
  local res = {}
  for r = 1, RUNS do
    full_gc()
    local t0 = clock()
    body(n)
    res[r] = (clock() - t0) * 1e9 / n
  end
  return median(res)
end

local function emit(impl, name, value, unit)
  io.write(string.format("%s\t%s\t%.6g\t%s\n", impl, name, value, unit))
  io.flush()
end

local function note(fmt, ...)
  io.stderr:write("bench.lua: ", string.format(fmt, ...), "\n")
end

-- Runs fig() under pcall so that one missing feature does not stop the rest.
local function figure(impl, name, unit, fig)
  local ok, v = xpcall(fig, debug.traceback)
  if ok then
    emit(impl, name, v, unit)
  else
    note("%s %s failed: %s", impl, name, tostring(v))
  end
end

-- ====}

local sink -- results go here so that nothing looks unused

-- {==== floors =======================================================

-- hook: optional; see the note at run_floors' call.
local function run_floors(hook, capi)
  figure("floor", "loop", "ns/op", function()
    return ns_per_op(iters(10000000), function(n)
      local x = 0
      for i = 1, n do x = i end
      sink = x
    end)
  end)
  -- One call of a C function with one argument (lua_Integer in and out).
  figure("floor", "c_call", "ns/op", function()
    local abs = math.abs
    return ns_per_op(iters(10000000), function(n)
      local x
      for i = 1, n do x = abs(i) end
      sink = x
    end)
  end)
  -- A method call through a metatable's __index to a C function taking
  -- only self: the shape of ctx:err() on a userdata.
  figure("floor", "method_call", "ns/op", function()
    local s = "context"
    return ns_per_op(iters(10000000), function(n)
      local x
      for _ = 1, n do x = s:len() end
      sink = x
    end)
  end)
  -- One call of a classic C function (lua_CFunction) returning one value:
  -- what every call into the core costs where it is not an FFI call (on
  -- LuaJIT the trace stops around it: "stitching").
  if capi then
    figure("floor", "c_api_call", "ns/op", function()
      return ns_per_op(iters(10000000), function(n)
        local x
        for _ = 1, n do x = capi() end
        sink = x
      end)
    end)
  end
  if not hook then return end
  -- What with_cancel cannot avoid: allocating its two userdata (the
  -- context and the cancel object) in two C calls.
  figure("floor", "alloc_ctx_cancel", "ns/op", function()
    return ns_per_op(iters(1000000), function(n)
      local a, b
      for _ = 1, n do a = hook("ctx"); b = hook("cancel") end
      sink = a; sink = b
    end)
  end)
  -- The pair floor, in the loop shape of `ctx, cancel = with_cancel(bg);
  -- cancel()`: one call that allocates both userdata (the context's size,
  -- the cancel object's user value, metatables from upvalues), then a call
  -- of the second through a __call that does nothing.
  local ok_pair, pair = pcall(hook, "pair")
  if ok_pair and type(pair) == "function" then
    figure("floor", "pair_call", "ns/op", function()
      local bgx = {}
      return ns_per_op(iters(1000000), function(n)
        local a, b
        for _ = 1, n do a, b = pair(bgx); b() end
        sink = a
      end)
    end)
  end
  figure("floor", "bytes_ctx_cancel", "bytes", function()
    local N = 100000
    local as, bs = {}, {}
    for i = 1, N do as[i], bs[i] = false, false end
    full_gc()
    local before = collectgarbage("count")
    for i = 1, N do as[i], bs[i] = hook("ctx"), hook("cancel") end
    full_gc()
    local after = collectgarbage("count")
    sink = as; sink = bs
    return (after - before) * 1024 / N
  end)
end

-- ====}

-- {==== the figures, for one implementation ===========================
--
-- C is the module, key(name) makes a key for with_value.

local function run_impl(impl, C, key)
  local bg = C.background()
  local with_cancel, with_timeout, with_value =
    C.with_cancel, C.with_timeout, C.with_value

  figure(impl, "with_cancel_cancel", "ns/op", function()
    return ns_per_op(iters(1000000), function(n)
      local ctx, cancel
      for _ = 1, n do
        ctx, cancel = with_cancel(bg)
        cancel()
      end
      sink = ctx
    end)
  end)

  local function timeout_cancel(n)
    local ctx, cancel
    for _ = 1, n do
      ctx, cancel = with_timeout(bg, 3600)
      cancel()
    end
    sink = ctx
  end

  figure(impl, "with_timeout_cancel", "ns/op", function()
    return ns_per_op(iters(1000000), timeout_cancel)
  end)

  figure(impl, "err_live", "ns/op", function()
    local ctx, cancel = with_cancel(bg)
    local r = ns_per_op(iters(10000000), function(n)
      local c = 0
      for _ = 1, n do
        if ctx:err() then c = c + 1 end
      end
      sink = c
    end)
    cancel()
    return r
  end)

  if impl == "lcontext" then
    figure(impl, "is_done_live", "ns/op", function()
      local ctx, cancel = with_cancel(bg)
      local r = ns_per_op(iters(10000000), function(n)
        local c = 0
        for _ = 1, n do
          if ctx:is_done() then c = c + 1 end
        end
        sink = c
      end)
      cancel()
      return r
    end)
  end

  figure(impl, "value_depth10", "ns/op", function()
    -- keys[1] is set first, so it is the deepest: the lookup walks 10 levels.
    local ctx, keys = bg, {}
    for d = 1, 10 do
      keys[d] = key("k" .. d)
      ctx = with_value(ctx, keys[d], d)
    end
    local k = keys[1]
    assert(ctx:value(k) == 1, "value() at depth 10 returned the wrong value")
    return ns_per_op(iters(2000000), function(n)
      local v
      for _ = 1, n do v = ctx:value(k) end
      sink = v
    end)
  end)

  figure(impl, "cancel_100k_children", "ms", function()
    local N = 100000
    local ctxs, cancels = {}, {}
    local res = {}
    for r = 0, RUNS do -- run 0 is a warm-up
      local root, cancel_root = with_cancel(bg)
      for i = 1, N do ctxs[i], cancels[i] = with_cancel(root) end
      full_gc()
      local t0 = clock()
      cancel_root()
      local el = clock() - t0
      assert(ctxs[N]:err() ~= nil, "child not cancelled with its root")
      if r > 0 then res[r] = el * 1e3 end
      for i = 1, N do ctxs[i], cancels[i] = false, false end
    end
    return median(res)
  end)

  -- Lua heap growth per with_cancel(background) kept alive. keep_cancel:
  -- keep the cancel object too; else drop it before the GC.
  local function bytes(keep_cancel)
    local N = 100000
    local ctxs, cancels = {}, {}
    for i = 1, N do ctxs[i], cancels[i] = false, false end -- preallocate
    local res = {}
    for r = 1, RUNS do
      full_gc()
      local before = collectgarbage("count")
      for i = 1, N do ctxs[i], cancels[i] = with_cancel(bg) end
      if not keep_cancel then
        for i = 1, N do cancels[i] = false end
      end
      full_gc()
      local after = collectgarbage("count")
      res[r] = (after - before) * 1024 / N
      for i = 1, N do ctxs[i], cancels[i] = false, false end
    end
    return median(res)
  end
  figure(impl, "bytes_per_ctx", "bytes", function() return bytes(true) end)
  figure(impl, "bytes_per_ctx_only", "bytes", function() return bytes(false) end)

  -- with N other deadlines pending (never cancelled meanwhile)
  local function pending(N)
    return function()
      local pctx, pcancel = {}, {}
      for i = 1, N do pctx[i], pcancel[i] = with_timeout(bg, 3600) end
      local ok, r = pcall(ns_per_op, iters(1000000), timeout_cancel)
      for i = 1, N do pcancel[i]() end
      pctx, pcancel = nil, nil
      full_gc()
      if not ok then error(r, 0) end
      return r
    end
  end
  figure(impl, "with_timeout_cancel_100k", "ns/op", pending(100000))

  -- Last: it leaves the most garbage behind.
  figure(impl, "with_timeout_cancel_1m", "ns/op", function()
    local N = 1000000
    local pctx, pcancel = {}, {}
    for i = 1, N do pctx[i], pcancel[i] = with_timeout(bg, 3600) end
    local ok, r = pcall(ns_per_op, iters(1000000), timeout_cancel)
    for i = 1, N do pcancel[i]() end
    pctx, pcancel = nil, nil
    full_gc()
    if not ok then error(r, 0) end
    return r
  end)
end

-- ====}

local want = {}
for _, a in ipairs(arg) do want[a] = true end
if next(want) == nil then want = { floor = true, lcontext = true, plain = true } end

note("clock: %s; %s; BENCH_SCALE=%g", clock_name,
  type(rawget(_G, "jit")) == "table" and jit.version or _VERSION, SCALE)

local lc_ok, context = false, nil
if want.lcontext or want.floor then
  lc_ok, context = pcall(require, "lcontext")
  lc_ok = lc_ok and type(context) == "table"
end

if want.floor then
  -- Optional hook for the allocation floor: a C function bench_alloc(kind)
  -- in lcontext or lcontext.core that allocates, and returns, the userdata
  -- that with_cancel allocates for kind "ctx" or "cancel" (same size, same
  -- user values, metatable set), and does nothing else.
  local hook = lc_ok and rawget(context, "bench_alloc")
  if not hook and lc_ok then
    local ok, core = pcall(require, "lcontext.core")
    hook = ok and type(core) == "table" and rawget(core, "bench_alloc")
  end
  run_floors(type(hook) == "function" and hook or nil, lc_ok and context.background or nil)
  full_gc()
end

if want.lcontext then
  if lc_ok then
    if type(rawget(_G, "jit")) == "table" then -- LuaJIT: which path the core's methods take
      local okf, lffi = pcall(require, "lcontext.ffi")
      local on = okf and lffi.active
      note("LuaJIT FFI path: %s", on and "on" or ("off (" .. tostring(okf and lffi.reason) .. ")"))
      emit("lcontext", "ffi_path", on and 1 or 0, "flag")
    end
    run_impl("lcontext", context, context.key)
  else
    note("lcontext not available, so it is not measured: %s", tostring(context))
    note("(build it with `make`; run from the repository root with "
      .. "LUA_PATH=\"./lua/?.lua;./lua/?/init.lua;./bench/?.lua;;\" LUA_CPATH=\"./build/?.so;;\")")
  end
  full_gc()
end

-- Structured concurrency (lcontext only): a handoff between two tasks
-- over a channel (unbuffered, and of capacity 128), as bench/go measures
-- between two goroutines; an uncontended semaphore acquire + release on the
-- main thread (compared with two method calls: floor method_call).
if want.lcontext and lc_ok and context.channel then
  local bg = context.background()
  local function handoff(capacity)
    return function(n)
      local ch = context.channel(capacity)
      context.go(function()
        local s = 0
        for _ = 1, n do s = s + ch:recv(bg) end
        sink = s
      end)
      context.go(function()
        for i = 1, n do ch:send(bg, i) end
      end)
      context.run()
    end
  end
  figure("lcontext", "chan_handoff_unbuffered", "ns/op", function()
    return ns_per_op(iters(200000), handoff(0))
  end)
  figure("lcontext", "chan_handoff_buffered", "ns/op", function()
    return ns_per_op(iters(200000), handoff(128))
  end)
  figure("lcontext", "sem_acquire_release", "ns/op", function()
    local sem = context.semaphore(1)
    return ns_per_op(iters(2000000), function(n)
      for _ = 1, n do sem:acquire(bg); sem:release() end
    end)
  end)
  full_gc()
end

if want.plain then
  local ok, plain = pcall(require, "plain")
  if not ok then
    -- Not on LUA_PATH: load it from beside this script.
    local dir = (arg and arg[0] or ""):match("^(.*[/\\])") or "./"
    plain = dofile(dir .. "plain.lua")
  end
  run_impl("plain", plain, function(name) return { name = name } end)
end

if sink == "never" then print(sink) end
