-- The LuaJIT FFI path (lua/lcontext/ffi.lua, csrc/l_ffi.c; README,
-- "Runtimes"): on LuaJIT the hot methods of contexts and cancel() go
-- through the FFI into the same core, with the classic C functions'
-- semantics, messages and garbage collection; the loops `make bench` times
-- compile without a trace abort. On other runtimes: pending.
-- Backend-neutral: spec/ngx/shared.sh can run it inside nginx (lcontext.ngx
-- shares the core's methods, so the FFI path is in use there too).
local B = require "spec.backend"
local context = B.context
local h = require "spec.helpers"

local jit = rawget(_G, "jit")
local forced_off = (os.getenv("LCONTEXT_NO_FFI") or "") ~= "" and os.getenv("LCONTEXT_NO_FFI") ~= "0"

describe("the LuaJIT FFI path", function()
  if type(jit) ~= "table" then
    it("is LuaJIT's", function()
      pending("LuaJIT only: on " .. _VERSION .. " every call goes through the Lua C API")
    end)
    return
  end

  local lffi = require "lcontext.ffi"
  local core = require "lcontext.core"
  local methods = core._methods
  local bg = context.background()

  it("is in use on LuaJIT (off with LCONTEXT_NO_FFI=1)", function()
    local _, cancel = context.with_cancel(bg)
    local call = debug.getmetatable(cancel).__call
    if forced_off then
      assert.is_false(lffi.active)
      assert.equal("LCONTEXT_NO_FFI is set", lffi.reason)
      assert.equal("C", debug.getinfo(methods.err, "S").what)
      assert.equal("C", debug.getinfo(call, "S").what)
      return
    end
    assert.is_true(lffi.active, lffi.reason)
    for _, m in ipairs({ "err", "is_done", "check", "deadline", "remaining" }) do
      assert.equal("Lua", debug.getinfo(methods[m], "S").what, m)
      assert.equal("C", debug.getinfo(lffi.classic[m], "S").what, m)
    end
    assert.equal("Lua", debug.getinfo(call, "S").what)
    cancel()
  end)

  if forced_off then return end
  local classic = lffi.classic

  -- wait (without a loop) until the context's deadline has passed, so that
  -- nothing has noticed it yet
  local function pass(ctx)
    local r = classic.remaining(ctx)
    local t = context.now() + r + 0.002
    while context.now() < t do end
  end

  -- every kind of context, in every state, made twice (one for each path:
  -- a passed deadline is noticed by the first question)
  local function zoo()
    local z = {}
    local function add(name, ctx) z[#z + 1] = { name = name, ctx = ctx } end
    add("background", bg)
    add("todo", context.todo())
    local live = context.with_cancel(bg)
    add("live with_cancel", live)
    local done, dcancel = context.with_cancel(bg)
    dcancel()
    add("cancelled", done)
    local cc, ccancel = context.with_cancel_cause(bg)
    ccancel({ custom = true })
    add("cancelled with a custom cause", cc)
    local t = context.with_timeout(bg, 3600)
    add("with_timeout, running", t)
    add("its child", (context.with_cancel(t)))
    add("a value below it", context.with_value(t, "k", 1))
    add("without_cancel below it", context.without_cancel(t))
    add("with_deadline", (context.with_deadline(bg, context.time() + 100)))
    add("merge", (context.merge(live, t)))
    add("with_min_timeout", (context.with_min_timeout(t, 7200)))
    local p = context.with_timeout(bg, 0.001)
    local pc = context.with_cancel(p)
    add("deadline passed, unnoticed", p)
    add("child of one, unnoticed", pc)
    pass(p)
    local de = context.with_timeout(bg, 0.001)
    pass(de)
    de:err() -- noticed
    add("deadline exceeded", de)
    add("timeout <= 0", (context.with_timeout(bg, -1)))
    local tc = context.with_timeout(bg, 0.001, "timer cause")
    pass(tc)
    add("timer with a cause, unnoticed", tc)
    return z
  end

  local function same(a, b, what)
    if type(a) == "number" and type(b) == "number" then
      assert(math.abs(a - b) < 0.01, ("%s: %s vs %s"):format(what, a, b))
    else
      assert(rawequal(a, b), ("%s: %s vs %s"):format(what, tostring(a), tostring(b)))
    end
  end

  it("answers as the classic functions on every kind of context", function()
    local A, B = zoo(), zoo()
    for i = 1, #A do
      local a, b = A[i].ctx, B[i].ctx
      local what = A[i].name
      same(a:err(), classic.err(b), what .. ": err")
      same(a:is_done(), classic.is_done(b), what .. ": is_done")
      -- (A and B were made milliseconds apart: these on one context each)
      same(a:deadline(), classic.deadline(a), what .. ": deadline")
      same(classic.deadline(b), b:deadline(), what .. ": deadline")
      same(a:remaining(), classic.remaining(a), what .. ": remaining")
      same(classic.remaining(b), b:remaining(), what .. ": remaining")
      local ok1, r1 = pcall(a.check, a)
      local ok2, r2 = pcall(classic.check, b)
      same(ok1, ok2, what .. ": check")
      if ok1 then same(r1, a, what .. ": check result") else same(r1, r2, what .. ": check error") end
      same(context.cause(a) == a:err(), context.cause(b) == b:err(), what .. ": cause is err")
      same(context.origin(a) == a, context.origin(b) == b, what .. ": origin")
    end
    -- the custom cause and the forgotten timer cause
    for _, z in ipairs({ A, B }) do
      assert.same({ custom = true }, context.cause(z[5].ctx))
      h.is(context.cause(z[#z].ctx), "timer cause")
    end
  end)

  it("notices a passed deadline as the classic err does: the epilogue runs", function()
    for _, m in ipairs({ "err", "is_done", "remaining", "check" }) do
      local p = context.with_timeout(bg, 0.001)
      local ran = false
      context.after_func(context.with_cancel(p), function() ran = true end)
      pass(p)
      pcall(p[m], p)
      h.is(p:err(), context.deadline_exceeded)
      B.run()
      assert.is_true(ran, m)
    end
  end)

  it("answers on value contexts of every key type as on their parent", function()
    local t = context.with_timeout(bg, 3600)
    local keys = { "s", 1, 2.5, -0.0, true, false, context.key("k"), {}, print,
      coroutine.create(function() end), newproxy(false) }
    local ctx = t
    for i, k in ipairs(keys) do
      ctx = context.with_value(ctx, k, i)
      same(ctx:err(), t:err(), "err")
      same(ctx:deadline(), t:deadline(), "deadline")
      same(ctx:remaining(), t:remaining(), "remaining")
    end
    for i, k in ipairs(keys) do
      same(ctx:value(k), i, "value " .. tostring(k))
      same(ctx:value(k), classic.value(ctx, k), "classic value " .. tostring(k))
    end
    same(ctx:value(0), 4, "value 0 (-0.0 is 0)")
    for _, k in ipairs({ "nope", 3, 2.25, context.key("k"), {}, 1e300, -1e300, 2 ^ 63 }) do
      same(ctx:value(k), nil, "value missing " .. tostring(k))
      same(classic.value(ctx, k), nil, "classic value missing " .. tostring(k))
    end
    -- shadowing, nil values, strings built at run time, a merge on the way
    local s1 = "ab" .. tostring(12)
    local sh = context.with_value(context.with_value(ctx, s1, "outer"), "ab12", "inner")
    same(sh:value("ab" .. "12"), "inner", "shadowed")
    local nv = context.with_value(sh, 1, nil)
    same(nv:value(1), nil, "nil value")
    same(nv:value(1), classic.value(nv, 1), "nil value, classic")
    local m = context.merge(context.with_value(bg, "m", "first"), context.with_value(bg, "m", "second"))
    local below = context.with_value(m, "b", 2)
    same(below:value("m"), "first", "merge")
    same(below:value("b"), 2, "above the merge")
    same(below:value("zz"), nil, "merge, missing")
    -- contexts collected, their addresses reused: never an old value
    for r = 1, 300 do
      local v = context.with_value(bg, "k", r)
      same(v:value("k"), r, "reused address")
      if r % 25 == 0 then h.full_gc() end
    end
    -- a value that refers to its own context does not keep it alive
    local weak = h.weak()
    local function make()
      local box = {}
      local v = context.with_value(bg, "self", box)
      box.ctx = v
      assert.equal(box, v:value("self"))
      weak.v, weak.box = v, box
    end
    make()
    h.full_gc()
    assert.is_nil(next(weak))
  end)

  it("raises the classic messages for bad selves", function()
    local _, a_cancel = context.with_cancel(bg)
    local bad = { 5, "x", {}, a_cancel, context.canceled, newproxy(true),
      setmetatable({}, { __metatable = "context" }), false }
    local function msg(f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok)
      return (tostring(e):gsub("^[^:]*:%d+: ", ""))
    end
    for _, m in ipairs({ "err", "is_done", "check", "deadline", "remaining" }) do
      local fast, slow = methods[m], classic[m]
      local F = setmetatable({}, { __index = { [m] = fast } })
      local S = setmetatable({}, { __index = { [m] = slow } })
      for _, v in ipairs(bad) do
        assert.equal(msg(function() slow(v) end), msg(function() fast(v) end))
      end
      assert.equal(msg(function() slow() end), msg(function() fast() end))
      assert.equal(msg(function() slow(nil) end), msg(function() fast(nil) end))
      local sm, fm = msg(function() S[m](S) end), msg(function() F[m](F) end)
      assert.equal(sm, fm)
      sm, fm = msg(function() S[m]() end), msg(function() F[m]() end)
      assert.equal(sm, fm)
    end
    -- ctx:err() on a bad self, as a method: "calling 'err' on bad self"
    local F = setmetatable({}, { __index = methods })
    assert.truthy(msg(function() F:err() end):find("calling 'err' on bad self (context expected, got table)", 1, true))
    -- cancel's __call, reached only through debug.getmetatable
    local call = debug.getmetatable(a_cancel).__call
    assert.equal(msg(function() classic.cancel(5) end), msg(function() call(5) end))
    assert.equal(msg(function() classic.cancel(bg) end), msg(function() call(bg) end))
  end)

  it("cancels as the classic cancel does", function()
    -- plain, twice (idempotent)
    local c, cancel = context.with_cancel(bg)
    local child = context.with_cancel(c)
    cancel()
    cancel()
    h.is(c:err(), context.canceled)
    h.is(child:err(), context.canceled)
    h.is(context.origin(child), c)
    -- a timer with a cause: a plain cancel forgets it
    local t, tcancel = context.with_timeout(bg, 10, "timer cause")
    tcancel()
    h.is(t:err(), context.canceled)
    h.is(context.cause(t), context.canceled)
    -- a deadline passed unnoticed wins over the cancel
    local p, pcancel = context.with_timeout(bg, 0.001)
    pass(p)
    pcancel()
    h.is(p:err(), context.deadline_exceeded)
    -- with a cause
    local cc, ccancel = context.with_cancel_cause(bg)
    ccancel("why")
    h.is(context.cause(cc), "why")
    -- waking callbacks: the epilogue
    local w, wcancel = context.with_cancel(bg)
    local n = 0
    context.after_func(w, function() n = n + 1 end)
    context.after_func(context.with_cancel(w), function() n = n + 1 end)
    wcancel()
    B.run()
    assert.equal(2, n)
    -- a task waiting on it
    local x, xcancel = context.with_cancel(bg)
    local got
    context.go(function() got = x:done() end)
    if B.libev then context.run("nowait") end -- (in nginx it waits already)
    xcancel()
    B.run()
    h.is(got, context.canceled)
  end)

  it("leaves garbage collection as it was: unreferenced contexts go, timers too", function()
    local parent, pcancel = context.with_cancel(bg)
    local weak = h.weak()
    local function make()
      local a, ac = context.with_timeout(bg, 3600)
      local b, bc = context.with_timeout(parent, 3600)
      local c, cc = context.with_cancel(parent)
      for _, x in ipairs({ a, b, c }) do
        assert.is_nil(x:err())
        assert.is_false(x:is_done())
        x:deadline()
        x:remaining()
        x:check()
      end
      cc()
      weak.a, weak.ac, weak.b, weak.bc, weak.c, weak.cc = a, ac, b, bc, c, cc
    end
    make()
    h.full_gc()
    assert.is_nil(next(weak))
    pcancel()
    h.is(parent:err(), context.canceled)
  end)

  describe("the loops make bench times compile", function()
    local util = require "jit.util"
    local traceerr = require("jit.vmdef").traceerr
    -- aborts about the shape of a trace, not about what it runs: a root
    -- trace started outside the loop meets it ("inner loop in root
    -- trace"), and LuaJIT records the loop itself next
    local SHAPE = { ["inner loop in root trace"] = true, ["leaving loop in root trace"] = true,
      ["loop unroll limit reached"] = true }
    local function compiles(name, loop)
      local stops, aborts = 0, {}
      local function on_trace(what, tr, func, pc, otr, oex)
        if what == "stop" then
          if func == loop then stops = stops + 1 end
        elseif what == "abort" then
          local fi = util.funcinfo(func, pc)
          local src = fi.source or "?"
          local msg = type(otr) == "number" and traceerr[otr] or tostring(otr)
          if type(msg) == "string" and msg:find("%", 1, true) then
            local okf, m = pcall(string.format, msg, oex) -- "NYI: bytecode %d" and the like
            if okf then msg = m end
          end
          if (func == loop or src:find("lcontext[/\\]ffi%.lua")) and not SHAPE[msg] then
            aborts[#aborts + 1] = ("%s:%s (%s)"):format(src, tostring(fi.currentline), msg)
          end
        end
      end
      jit.attach(on_trace, "trace")
      local ok, e = pcall(loop, 3000)
      jit.attach(on_trace)
      assert(ok, e)
      assert.equal("", table.concat(aborts, "; "), name .. ": trace aborts")
      assert.is_true(stops > 0, name .. ": no trace compiled")
    end

    local sink
    it("err, is_done, check, deadline, remaining", function()
      local ctx = context.with_timeout(bg, 3600)
      local live = context.with_cancel(bg)
      compiles("err", function(n) local c = 0 for _ = 1, n do if live:err() then c = c + 1 end end sink = c end)
      compiles("err (deadline)", function(n) local c = 0 for _ = 1, n do if ctx:err() then c = c + 1 end end sink = c end)
      compiles("is_done", function(n) local c = 0 for _ = 1, n do if live:is_done() then c = c + 1 end end sink = c end)
      compiles("check", function(n) for _ = 1, n do sink = ctx:check() end end)
      compiles("deadline", function(n) local d for _ = 1, n do d = ctx:deadline() end sink = d end)
      compiles("remaining", function(n) local d for _ = 1, n do d = ctx:remaining() end sink = d end)
    end)

    it("with_cancel + cancel, with_timeout + cancel (the constructors stitched)", function()
      local with_cancel, with_timeout = context.with_cancel, context.with_timeout
      compiles("with_cancel", function(n) for _ = 1, n do local c, k = with_cancel(bg) k() sink = c end end)
      compiles("with_timeout", function(n) for _ = 1, n do local c, k = with_timeout(bg, 3600) k() sink = c end end)
      local p = context.with_cancel(bg)
      compiles("with_cancel below a cancellable parent",
        function(n) for _ = 1, n do local c, k = with_cancel(p) k() sink = c end end)
    end)

    it("value", function()
      local ctx, k = bg, nil
      for d = 1, 10 do
        local key = context.key("k" .. d)
        k = k or key
        ctx = context.with_value(ctx, key, d)
      end
      compiles("value", function(n) local v for _ = 1, n do v = ctx:value(k) end sink = v end)
    end)
  end)
end)
