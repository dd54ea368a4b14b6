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

return M
