--- lcontext.check: argument checks shared by the Lua helpers, in
-- luaL_argerror's words, reported at the user's call site.
local type, getmetatable, error, huge = type, getmetatable, error, math.huge
local getinfo = debug.getinfo

local M = {}

-- is this chunk one of lcontext's own Lua files?
local function ours(source)
  return source:find("lcontext[/\\][%w_]+%.lua$") ~= nil
end

--- argerr(fname, n, msg): raise "bad argument #n to 'fname' (msg)" at the
-- first caller outside lcontext's Lua files (the user's code), wherever in
-- the helpers the check is made.
function M.argerr(fname, n, msg)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info or not ours(info.source) then break end
    level = level + 1
  end
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level)
end

--- callable(v): a function, or a value whose metatable has __call
function M.callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__call ~= nil
end

--- is_ctx(v): a context (its protected metatable is "context")
function M.is_ctx(v) return getmetatable(v) == "context" end

--- finite(v): a number, neither NaN nor infinite
function M.finite(v)
  return type(v) == "number" and v == v and v ~= huge and v ~= -huge
end

return M
