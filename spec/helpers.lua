-- Shared helpers for the lcontext acceptance specs (not a spec itself: the
-- busted pattern is "_spec"). Load with `local h = require "spec.helpers"`
-- from the repo root.
local socket = require "socket"

local M = {}

M.NAN = 0 / 0
M.INF = math.huge

-- Wall-clock seconds with sub-second precision (independent of lcontext).
M.now = socket.gettime

-- Sleep at least `s` seconds of wall time, with no lcontext loop running.
function M.sleep(s)
  local stop = socket.gettime() + s
  repeat
    socket.sleep(math.max(stop - socket.gettime(), 0.001))
  until socket.gettime() >= stop
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end
M.show = show

-- ctx:remaining() is what a timeout of `timeout` seconds, set at or after
-- `start` (an M.now() reading taken BEFORE the context was made), can have
-- left: at most `timeout` (plus 1 ms of rounding up to the timer's tick),
-- at least `timeout` minus the time since `start`. Exact on a quiet
-- machine, and a stall of a loaded one cannot fail it.
function M.remaining_near(ctx, timeout, start, what)
  local left = ctx:remaining()
  local low = timeout - (socket.gettime() - start) - 2e-3
  if type(left) ~= "number" or left > timeout + 1e-3 or left < low then
    error(string.format("%s: remaining() = %s, expected in [%.4f, %.4f]", what or "remaining",
      tostring(left), low, timeout + 1e-3), 2)
  end
  return left
end

-- True while less than `limit` seconds (minus 2 ms of clock slack) have
-- passed since `start` (an M.now() reading taken BEFORE the timed context was
-- made): only then may a test insist that the deadline has not passed yet.
-- Guards "still running" checks against a stalled machine.
function M.within(start, limit)
  return socket.gettime() - start < limit - 0.002
end

-- Identity assertion (rawequal: no __eq can fake it).
function M.is(actual, expected, what)
  if not rawequal(actual, expected) then
    error(string.format("%s: expected %s, got %s", what or "identity",
      show(expected), show(actual)), 2)
  end
end

-- Numeric closeness.
function M.near(actual, expected, tol, what)
  if type(actual) ~= "number" or math.abs(actual - expected) > tol then
    error(string.format("%s: expected %.9f (+-%g), got %s", what or "value",
      expected, tol, show(actual)), 2)
  end
end

-- Does `msg` name argument `n` (a number, or a list of acceptable numbers) of
-- function `name` the way luaL_argerror does: "bad argument #N to 'NAME'"?
-- NAME may carry a module prefix ("lcontext.with_cancel", "ctx:with_cancel").
-- An allowed number 0 also accepts "calling 'NAME' on bad self".
function M.names_arg(msg, n, name)
  local allowed = {}
  if type(n) == "table" then
    for _, v in ipairs(n) do allowed[v] = true end
  else
    allowed[n] = true
  end
  msg = tostring(msg)
  for num, fname in msg:gmatch("bad argument #(%d+) to '([^']*)'") do
    local tail = fname:sub(-(#name + 1))
    if allowed[tonumber(num)] and
       (fname == name or tail == "." .. name or tail == ":" .. name) then
      return true
    end
  end
  if allowed[0] and msg:find("calling '" .. name .. "' on bad self", 1, true) then
    return true
  end
  return false
end

-- `fn` must raise an error naming argument `n` of `name`.
-- Call the API inside `fn` as a statement (not `return f(...)`: a tail call
-- hides the function's name from luaL_argerror).
function M.argerr(n, name, fn)
  local ok, msg = pcall(fn)
  if ok then
    error(string.format("expected \"bad argument #%s to '%s'\", but the call succeeded",
      type(n) == "table" and table.concat(n, "|") or tostring(n), name), 2)
  end
  if not M.names_arg(msg, n, name) then
    error(string.format("expected \"bad argument #%s to '%s' (...)\", got: %s",
      type(n) == "table" and table.concat(n, "|") or tostring(n), name, show(msg)), 2)
  end
  return msg
end

-- A weak-valued table, to observe collection.
function M.weak()
  return setmetatable({}, { __mode = "v" })
end

-- Two full cycles: the first may only run finalisers/resurrect.
function M.full_gc()
  collectgarbage()
  collectgarbage()
end

-- Count non-nil entries of a (weak) table.
function M.count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- {=== the runtime running the suite: Lua 5.4, 5.3, 5.1 or LuaJIT 2.1 ===
-- (busted loads Penlight, which adds table.pack, table.unpack and
-- package.searchpath where they are missing: the specs may use them; the
-- modules may not, spec/runtime_spec.lua checks it)

M.JIT = rawget(_G, "jit") ~= nil
--- "5.4", "5.3", "5.1" (PUC-Rio) or "luajit"
M.RUNTIME = M.JIT and "luajit" or _VERSION:match("%d+%.%d+")
M.LUA54 = M.RUNTIME == "5.4"
--- weak-keyed tables are ephemerons (5.2+): a value that refers back to its
-- key does not keep the key alive. Not on 5.1 and LuaJIT.
M.EPHEMERONS = M.RUNTIME == "5.4" or M.RUNTIME == "5.3"

--- the interpreter running the suite, for subprocesses: the command that
-- started it (arg[-1] under `lua5.1 /usr/bin/busted`), else by version
M.LUA = (function()
  local a = rawget(_G, "arg")
  if type(a) == "table" then
    local i = -1
    while a[i - 1] ~= nil do i = i - 1 end -- the lowest index: the interpreter
    if type(a[i]) == "string" and a[i]:find("^[%w_./-]+$") then return a[i] end
  end
  return ({ ["5.4"] = "lua5.4", ["5.3"] = "lua5.3", ["5.1"] = "lua5.1", luajit = "luajit" })[M.RUNTIME]
end)()

--- the largest and smallest integers (5.3+); before 5.3, numbers are
-- doubles and 2^53 is where they stop being exact
M.maxinteger = math.maxinteger or 2 ^ 53
M.mininteger = math.mininteger or -2 ^ 53

--- math_type(v): math.type (5.3+); before, "integer" for an integral
-- number (there every number is a double)
M.math_type = math.type or function(v)
  if type(v) ~= "number" then return nil end
  return (v == math.floor(v) and v - v == 0) and "integer" or "float"
end

--- tointeger(v): math.tointeger (5.3+); before, v itself when integral
M.tointeger = math.tointeger or function(v)
  if type(v) == "number" and v == math.floor(v) and v - v == 0 then return v end
  return nil
end

--- load(source [, name]): load a chunk from a string (loadstring on 5.1)
M.load = (M.RUNTIME == "5.1") and loadstring or load

--- execute(cmd) -> true when the command exited with status 0 (os.execute
-- returns a status number before 5.2 and in LuaJIT, true/nil after)
function M.execute(cmd)
  local a = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true
end

--- a table whose finaliser runs fn (tables have no __gc before 5.2: a
-- userdata from newproxy stands in there). Returns the object.
function M.gc_object(fn)
  if M.RUNTIME == "5.1" or M.RUNTIME == "luajit" then
    local u = newproxy(true)
    getmetatable(u).__gc = function() fn() end
    return u
  end
  return setmetatable({}, { __gc = function() fn() end })
end

-- ===}

return M
