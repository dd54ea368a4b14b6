-- runtime_spec.lua — what lets the Lua modules run on Lua 5.4, 5.3, 5.1 and
-- LuaJIT 2.1 alike (README, "Runtimes"): the shims of lcontext.check, and
-- above all check.pcall / check.xpcall, under which a task may wait even on
-- Lua 5.1, whose pcall cannot yield. Runs on every runtime.
local context = require "lcontext"
local check = require "lcontext.check"
local h = require "spec.helpers"

local bg = context.background()
local C, DE = context.canceled, context.deadline_exceeded

-- the Lua modules (README, "Runtimes"; lcontext.ngx is OpenResty's, LuaJIT only)
local MODULES = { "init", "check", "group", "retry", "breaker", "hedge", "patterns",
  "metrics", "observe", "trace" }

-- run fn(...) in a task; return what it returned (raise what it raised)
local function in_task(fn, ...)
  local t = context.go(function(...) return table.pack(fn(...)) end, ...)
  local r, err = t:wait()
  if r == nil then error(err, 0) end
  return table.unpack(r, 1, r.n)
end

local unexpected
before_each(function()
  unexpected = {}
  context.on_error(function(err, tb) unexpected[#unexpected + 1] = tb or tostring(err) end)
end)
after_each(function()
  for _ = 1, 3 do context.run("nowait") end
  context.on_error(nil)
  if #unexpected > 0 then error("a task raised an unexpected error: " .. unexpected[1]) end
end)

describe("lcontext.check shims", function()
  it("pack and unpack keep nils and the count", function()
    local t = check.pack(1, nil, 3, nil)
    assert.are.equal(4, t.n)
    assert.are.same({ 1, nil, 3, nil }, { check.unpack(t, 1, t.n) })
    assert.are.equal(0, check.pack().n)
    assert.are.equal(4, select("#", check.unpack(t, 1, t.n)))
  end)

  it("math_type tells integers from floats (integral numbers before 5.3)", function()
    assert.are.equal("integer", check.math_type(3))
    assert.are.equal("float", check.math_type(3.5))
    assert.is_nil(check.math_type("3"))
    assert.is_nil(check.math_type(nil))
    assert.are.equal("float", check.math_type(math.huge))
    assert.are.equal("float", check.math_type(0 / 0))
    if math.type then
      assert.are.equal("float", check.math_type(3.0))
    else
      assert.are.equal("integer", check.math_type(3.0)) -- 3.0 is 3 there
    end
  end)

  it("searchpath finds lcontext's modules on package.path", function()
    local f = check.searchpath("lcontext.check", package.path)
    assert.is_string(f)
    assert.is_truthy(f:find("lcontext[/\\]check%.lua$"), f)
    local none, tried = check.searchpath("lcontext.no_such_module", "./?.lua;./?/x.lua")
    assert.is_nil(none)
    assert.is_truthy(tried:find("./lcontext/no_such_module.lua", 1, true), tried)
  end)

  it("are the runtime's own functions where it has them, kept out of the module table", function()
    if table.pack and h.RUNTIME ~= "5.1" and h.RUNTIME ~= "luajit" then
      assert.are.equal(table.pack, check.pack) -- (busted adds table.pack on 5.1/LuaJIT)
    end
    if math.type then assert.are.equal(math.type, check.math_type) end
    assert.are.equal(h.RUNTIME ~= "5.1", check.native_pcall)
    if check.native_pcall then
      assert.are.equal(pcall, check.pcall)
      assert.are.equal(xpcall, check.xpcall)
      assert.is_nil(check.outer)
    else
      assert.is_function(check.outer)
    end
    -- not raw fields: a traceback names a pcall frame 'pcall', not 'lcontext.check.pcall'
    assert.is_nil(rawget(check, "pcall"))
    assert.is_nil(rawget(check, "xpcall"))
    assert.is_nil(rawget(check, "unpack"))
  end)
end)

describe("check.pcall and check.xpcall", function()
  it("pass arguments and every result through, nils included", function()
    local function f(...) return ... end
    for _, where in ipairs { "main", "task" } do
      local function go(fn) if where == "main" then return fn() end return in_task(fn) end
      local r = go(function() return table.pack(check.pcall(f, 1, nil, "x", nil)) end)
      assert.are.same({ n = 5, true, 1, nil, "x", nil }, r, where)
      r = go(function() return table.pack(check.xpcall(f, tostring, nil, 2, nil)) end)
      assert.are.same({ n = 4, true, nil, 2, nil }, r, where)
    end
  end)

  it("catch any error value as it is; xpcall's handler makes the error", function()
    local obj = {}
    local err = in_task(function()
      local ok, e = check.pcall(function() error(obj) end)
      assert.is_false(ok)
      return e
    end)
    h.is(err, obj, "the raised table")
    local ok, e = in_task(function()
      return check.xpcall(function() error("boom") end, function(m) return "handled: " .. m end)
    end)
    assert.is_false(ok)
    assert.is_truthy(e:find("^handled: .*boom$"), e)
    ok, e = in_task(function() return check.pcall(error, C) end)
    assert.is_false(ok)
    h.is(e, C, "the sentinel")
  end)

  it("let the function wait, in a task, and return when the wait ends", function()
    local t0 = context.now()
    local ok, v = in_task(function()
      return check.pcall(function(ctx, s)
        assert.is_true(context.sleep(ctx, s))
        return "slept"
      end, bg, 0.02)
    end)
    assert.is_true(ok)
    assert.are.equal("slept", v)
    assert.is_true(context.now() - t0 >= 0.02 - 1e-6)
  end)

  it("let waits through three levels of them, with errors and results kept", function()
    local log = {}
    local ok, v = in_task(function()
      return check.pcall(function()
        local ok2, e2 = check.xpcall(function()
          local ok3, e3 = check.pcall(function()
            context.sleep(bg, 0.005)
            log[#log + 1] = "innermost slept"
            local c, cancel = context.with_cancel(bg)
            context.after_func(c, function() end)
            cancel()
            return c:done()
          end)
          log[#log + 1] = "middle got " .. tostring(ok3) .. " " .. tostring(e3)
          context.sleep(bg, 0.001)
          error(e3)
        end, function(e) return e end)
        log[#log + 1] = "outer got " .. tostring(ok2)
        h.is(e2, C, "the error through xpcall")
        return context.select(0.001, bg)
      end)
    end)
    assert.is_true(ok)
    assert.are.equal(1, v)
    assert.are.same({ "innermost slept", "middle got true context canceled", "outer got false" }, log)
  end)

  it("are part of the task: in_task() is true in them, other tasks run meanwhile", function()
    local order = {}
    local other = context.go(function()
      for i = 1, 3 do order[#order + 1] = "other " .. i; context.sleep(bg, 0.001) end
    end)
    local inside = in_task(function()
      local _, r = check.pcall(function()
        for i = 1, 3 do order[#order + 1] = "body " .. i; context.sleep(bg, 0.001) end
        return context.in_task()
      end)
      return r
    end)
    other:wait()
    assert.is_true(inside)
    assert.are.equal(6, #order)
    assert.are_not.equal("body 3", order[3], table.concat(order, ", ")) -- interleaved
    assert.are.same({ true, false }, { check.pcall(context.in_task) }) -- the main thread
  end)

  it("pass a bare coroutine.yield() through: the task lets others run", function()
    local ran = false
    local r = in_task(function()
      context.go(function() ran = true end)
      local _, seen = check.pcall(function()
        coroutine.yield()
        return ran
      end)
      return seen
    end)
    assert.is_true(r)
  end)

  it("keep a generator inside them working", function()
    local r = in_task(function()
      local _, v = check.pcall(function()
        local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
        context.sleep(bg, 0.001)
        return gen() + gen() + gen()
      end)
      return v
    end)
    assert.are.equal(6, r)
  end)

  it("accept callable objects", function()
    local obj = setmetatable({}, { __call = function(self, a) context.sleep(bg, 0.001); return a * 2 end })
    local ok, v = in_task(function() return check.pcall(obj, 21) end)
    assert.is_true(ok)
    assert.are.equal(42, v)
  end)

  it("report a bad wait inside them at the caller, as outside", function()
    local ok, e = in_task(function()
      return check.pcall(function() context.sleep(bg, "x") end)
    end)
    assert.is_false(ok)
    assert.is_true(h.names_arg(e, 2, "sleep"), e)
    ok, e = in_task(function()
      return check.pcall(function() local r = context.select({ fd = -1 }); return r end)
    end)
    assert.is_false(ok)
    assert.is_truthy(tostring(e):find("select", 1, true), tostring(e))
  end)

  it("on the main thread, let a wait run the loop", function()
    local t = context.go(function() context.sleep(bg, 0.005) return "task" end)
    local ok, v = check.pcall(function() return t:wait() end)
    assert.is_true(ok)
    assert.are.equal("task", v)
    local dctx = context.with_timeout(bg, 0.005)
    assert.are.same({ true, DE }, { check.pcall(function() return dctx:done() end) })
  end)

  it("check.traceback in an xpcall handler shows where the error was raised", function()
    local function raiser() context.sleep(bg, 0.001); error("deep") end
    local ok, tb = in_task(function()
      return check.xpcall(function() raiser() end, function(e) return check.traceback(e, 2) end)
    end)
    assert.is_false(ok)
    assert.is_truthy(tb:find("deep", 1, true), tb)
    assert.is_truthy(tb:find("stack traceback:", 1, true), tb)
    assert.is_truthy(tb:find("raiser", 1, true), tb)
  end)
end)

describe("the helpers wait under check.pcall", function()
  it("retry, group, hedge, breaker:call and fallback suspend the task (every runtime)", function()
    local r = in_task(function()
      local out = {}
      out.retry = context.retry(bg, function(ctx, n)
        context.sleep(ctx, 0.001)
        if n < 2 then return nil, "again" end
        return "retried"
      end, { base = 0.001, jitter = "none" })
      local g = context.group(bg, 1)
      local got = {}
      for i = 1, 3 do g:go(function(ctx) context.sleep(ctx, 0.001); got[#got + 1] = i end) end
      assert.is_nil(g:wait())
      out.group = #got
      out.hedge = context.hedge(bg, function(ctx, i)
        if i == 1 then context.sleep(ctx, 5) return nil, ctx:err() end
        context.sleep(ctx, 0.001)
        return "hedged " .. i
      end, { delay = 0.005 })
      out.breaker = context.breaker():call(bg, function(ctx, x)
        context.sleep(ctx, 0.001)
        return x
      end, "through")
      out.fallback = context.fallback(bg, function(ctx) return context.sleep(ctx, 5) end,
        function(ctx, err) context.sleep(ctx, 0.001); return "fell back: " .. tostring(err) end,
        { timeout = 0.005 })
      return out
    end)
    assert.are.same({ retry = "retried", group = 3, hedge = "hedged 2", breaker = "through",
      fallback = "fell back: context deadline exceeded" }, r)
  end)
end)

describe("the Lua modules", function()
  it("use no library function their runtimes lack, but through lcontext.check", function()
    -- 5.2+ library names (global functions: not methods); busted's
    -- Penlight adds some of them under 5.1 and LuaJIT, so the suite alone
    -- would not notice
    local banned = { "table%.pack", "table%.unpack", "table%.move", "math%.type",
      "math%.tointeger", "math%.ult", "package%.searchpath", "coroutine%.close",
      "coroutine%.isyieldable", "string%.pack", "string%.unpack", "utf8%.", "%f[%w_.:]warn%(",
      "%f[%w_.:]rawlen%(" }
    for _, name in ipairs(MODULES) do
      local file = assert(check.searchpath("lcontext." .. name, package.path))
      local f = assert(io.open(file))
      local src = f:read("*a")
      f:close()
      -- trace.lua's 64-bit id generator: a string compiled on 5.3+ only
      src = src:gsub("load%(%[==%[.-%]==%]", "load(")
      local n = 0
      for line in src:gmatch("[^\n]*") do
        n = n + 1
        local code = line:gsub("%-%-.*$", "")
        -- check.lua holds the shims; a line marked "-- compat:" tests for
        -- the function before it uses it
        if name ~= "check" and not line:find("%-%- compat:") then
          for _, pat in ipairs(banned) do
            assert.is_nil(code:find(pat), ("lua/lcontext/%s.lua:%d uses %s: %s"):format(
              name, n, pat, line))
          end
        end
      end
    end
  end)

  it("load and work in a plain interpreter of this runtime (no busted, no Penlight)", function()
    local script = ("package.path = %q\npackage.cpath = %q\n"):format(package.path, package.cpath) .. [==[
      assert(not package.loaded["pl.compat"])
      local context = require "lcontext"
      local trace = require "lcontext.trace"
      local bg = context.background()
      local t = context.go(function()
        local r = { context.retry(bg, function(ctx, n)
          context.sleep(ctx, 0.001); if n < 2 then return nil, "x" end; return "ok", nil, 3 end,
          { base = 0.001 }) }
        local g = context.group(bg)
        g:go(function(ctx) context.sleep(ctx, 0.001); error("boom") end)
        local gerr = g:wait()
        return r[1], r[3], gerr:match("boom") and gerr:find("stack traceback", 1, true) ~= nil
      end)
      print("task", t:wait())
      local ctx = trace.start(bg)
      local hdr = trace.inject(ctx)
      print("trace", #trace.info(ctx).trace_id, hdr.traceparent:sub(-2), trace.info(ctx).sampled)
      local log = {}
      context.logger(function(l) log[#log + 1] = l end):info(ctx, "hi")
      print("log", log[1]:find('"msg":"hi"', 1, true) ~= nil)
      print("metrics", context.metrics_text():find("lcontext_retry_calls_total 1", 1, true) ~= nil)
      print("request_info", context.request_info(context.with_request_info(bg, { request_id = 7 })).request_id)
    ]==]
    local name = os.tmpname()
    local f = assert(io.open(name, "w"))
    f:write(script)
    f:close()
    local p = assert(io.popen(h.LUA .. " " .. name .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    os.remove(name)
    assert.is_truthy(out:find("task\tok\t3\ttrue", 1, true), out)
    assert.is_truthy(out:find("trace\t32\t01\ttrue", 1, true), out)
    assert.is_truthy(out:find("log\ttrue", 1, true), out)
    assert.is_truthy(out:find("metrics\ttrue", 1, true), out)
    assert.is_truthy(out:find("request_info\t7", 1, true), out)
  end)
end)
