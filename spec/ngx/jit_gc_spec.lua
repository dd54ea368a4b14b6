-- jit_gc_spec.lua — LuaJIT only: the spinning nginx worker of issue 10
-- (docs/openresty.md, "A worker that spun"). Inside a __gc metamethod
-- LuaJIT records no trace; a pairs() loop compiled before ends through a
-- trace exit that re-enters its own trace until that exit is given a side
-- trace, so run by a finaliser such a loop never ends. lcontext.ngx runs
-- its finalisers interpreted only (jit.off); these tests show the VM's
-- behaviour and check that the functions its finalisers run stay so.
local jit = rawget(_G, "jit")
if type(jit) ~= "table" then
  describe("LuaJIT finalisers (lcontext.ngx)", function()
    pending("LuaJIT only: no JIT compiler on " .. _VERSION)
  end)
  return
end

local core = require "lcontext.core"

-- the same loop as lcontext.ngx's task_ended, compiled first by a call that
-- leaves it before its end (its end exit has no side trace yet), then run
-- by a finaliser on an empty table. JIT_OFF=1: the function is jit.off.
local SCRIPT = [[
local n = 0
local function ended(w)
  for rec, i in pairs(w) do
    n = n + 1
    if n % 150 == 0 then return end
    rec.fired = i
  end
end
if os.getenv("JIT_OFF") == "1" then jit.off(ended) end
local w = {}
for k = 1, 200 do w[{}] = k end
ended(w)
local p = newproxy(true)
getmetatable(p).__gc = function() ended({}) end
p = nil
collectgarbage()
io.write("returned")
]]

-- run SCRIPT in a child LuaJIT for at most `secs` seconds: its output and
-- whether it returned in time
local function run_child(env, secs)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(SCRIPT)
  f:close()
  local lua = os.getenv("LCONTEXT_LUA") or "luajit"
  local p = assert(io.popen(("%s timeout %d %s %s 2>&1; echo \" status=$?\"")
    :format(env, secs, lua, path)))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return out
end

describe("LuaJIT finalisers (lcontext.ngx)", function()
  it("a pairs() loop compiled outside __gc never ends inside one; jit.off on its function is the remedy", function()
    local off = run_child("JIT_OFF=1", 10)
    assert.matches("^returned status=0", off)
    local on = run_child("JIT_OFF=0", 3)
    if on:find("^returned") then
      -- a LuaJIT that ends such a loop: nothing to show (and no harm)
      print("\n(this LuaJIT ends a compiled pairs() loop inside __gc: " .. jit.version .. ")")
    else
      assert.matches("status=124", on) -- killed by timeout(1): it spun
    end
  end)

  it("every function that lcontext.ngx's finalisers run is interpreted only", function()
    local saved_methods, saved_lcontext = {}, package.loaded["lcontext"]
    for k, v in pairs(core._methods) do saved_methods[k] = v end
    local saved_ngx = rawget(_G, "ngx")
    package.loaded["lcontext.ngx"] = nil
    local mock = require("spec.ngx.mock_ngx").install(core.now)
    local context = require "lcontext.ngx"
    local ok, err = pcall(function()
      -- the guards: a finished task's, and an after_func's once fired
      local task, stop
      local ctx, cancel = context.background():with_cancel()
      mock.run(function()
        task = context.go(function() return 1 end)
        task:wait()
        stop = context.after_func(ctx, function() end)
        cancel()
      end)
      local rec
      for i = 1, 20 do
        local name, v = debug.getupvalue(stop, i)
        if not name then break end
        if name == "rec" then rec = v end
      end
      local guards = { task._guard, rec and rec.fired }
      local task_mt, cb_mt = getmetatable(guards[1]), getmetatable(guards[2])
      assert.is_table(task_mt)
      assert.is_table(cb_mt)
      -- the guards' __gc (one function for all), and what each does
      assert.are.equal(task_mt.__gc, cb_mt.__gc)
      local fns = { task_mt.__gc, task_mt.fn, cb_mt.fn }
      assert.are.equal(3, #fns)
      -- a hot loop (a chunk of its own for each) calling each of them: its
      -- trace must never compile
      local vmdef = require "jit.vmdef"
      local load, hots = loadstring or load, {}
      for i, fn in ipairs(fns) do
        -- (only the traces that start in the hot loop or in fn, and how each
        -- ends: code left running by the specs before may record traces of
        -- its own; and a chunk that lands where an earlier one was penalised
        -- may not be tried at all, so a few chunks are tried in turn)
        local all = ""
        for attempt = 1, 5 do
          local hot = assert(load("local f, x = ... for _ = 1, 300 do f(x) end -- " .. attempt))
          hots[#hots + 1] = hot -- (alive: a new chunk at a freed one's address has its penalty)
          jit.flush() -- (hot counters reset)
          local seen, mine = {}, false
          local function on_trace(what, _, func, _, code)
            if what == "start" then mine = func == hot or func == fn end
            if not mine then return end
            if what ~= "start" then mine = false end
            seen[#seen + 1] = what .. (what == "abort" and (": " .. tostring(vmdef.traceerr[code])) or "")
          end
          jit.attach(on_trace, "trace")
          local dummy = setmetatable({ fired = true, _status = "ok", closed = true }, {})
          hot(fn, dummy)
          jit.attach(on_trace)
          all = table.concat(seen, ", ")
          if all ~= "" then break end
        end
        -- tried ("start"), never compiled ("stop"): each try aborts, with
        -- "JIT compilation disabled for function", or "blacklisted" once
        -- LuaJIT has marked the function so
        assert.matches("^start", all, "function #" .. i .. ": no trace was tried")
        assert.is_nil(all:find("stop", 1, true), "function #" .. i .. " of the finalisers was compiled (" .. all .. ")")
        assert.is_truthy(all:find("abort: JIT compilation disabled for function", 1, true)
          or all:find("abort: blacklisted", 1, true), all)
      end
    end)
    -- undo what lcontext.ngx installed, for the other spec files
    for k in pairs(core._methods) do core._methods[k] = saved_methods[k] end
    package.loaded["lcontext"] = saved_lcontext
    package.loaded["lcontext.ngx"] = nil
    rawset(_G, "ngx", saved_ngx)
    assert(ok, err)
  end)
end)
