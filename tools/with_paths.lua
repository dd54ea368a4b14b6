-- with_paths.lua — this checkout's lcontext on the paths, as if installed.
--
--   lua5.4 tools/with_paths.lua SCRIPT [ARGS...]   run SCRIPT with it
--   lua5.4 -i tools/with_paths.lua                 a prompt with `context` loaded
--                                                  (what `make repl` runs)
--
-- Works from any directory (the checkout is found from this file's own
-- path) and on every runtime: the module comes from the build of the
-- runtime that runs this file: build/ (Lua 5.4), build-5.3/, build-5.1/,
-- build-jit/ (LuaJIT), each made by `make build`, `make build-5.3`, ...
-- LCONTEXT_BUILD names another build directory (absolute, or relative to
-- the checkout), e.g. build-asan.
local unpack = table.unpack or unpack -- 5.1 and LuaJIT have only the global

-- the checkout: the parent of the directory this file is in
local src = debug.getinfo(1, "S").source:gsub("^@", "")
local dir = src:match("^(.*)/[^/]*$") or "."
local root
if dir == "tools" then
  root = "."
elseif dir == "." then
  root = ".."
elseif dir:match("/tools$") then
  root = dir:gsub("/tools$", "")
else
  root = dir .. "/.."
end
if root == "" then root = "/" end

local runtime = type(jit) == "table" and (jit.version or "LuaJIT") or _VERSION
local build = os.getenv("LCONTEXT_BUILD")
if build == nil or build == "" then
  build = type(jit) == "table" and "build-jit"
    or ({ ["Lua 5.3"] = "build-5.3", ["Lua 5.1"] = "build-5.1" })[_VERSION]
    or "build"
end
if build:sub(1, 1) ~= "/" then build = root .. "/" .. build end

local so = io.open(build .. "/lcontext/core.so")
if not so then
  local target = ({ build = "build", ["build-5.3"] = "build-5.3", ["build-5.1"] = "build-5.1",
    ["build-jit"] = "build-jit", ["build-asan"] = "asan" })[build:match("[^/]+$")]
  error(("with_paths.lua: no lcontext build for %s in %s%s"):format(runtime, build,
    target and (" (run `make %s` in %s)"):format(target, root) or ""), 0)
end
so:close()

package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = build .. "/?.so;" .. package.cpath

-- was the interpreter started with -i? (its options are arg[-1], arg[-2]...)
local function interactive()
  local i = -1
  while arg and arg[i] ~= nil do
    if arg[i] == "-i" then return true end
    i = i - 1
  end
  return false
end

local script = arg and arg[1]
if script then
  local args = { unpack(arg, 2, #arg) }
  arg = { [0] = script, unpack(args) }
  local chunk = assert(loadfile(script))
  chunk(unpack(args))
elseif interactive() then
  -- at the prompt: `context` is a global, as if the user had typed this
  context = require "lcontext"
  print(("context = require \"lcontext\"  -- %s on %s from %s (tasks and callbacks "
    .. "run in context.step())"):format(context._VERSION, runtime, build))
else
  io.stderr:write("usage: with_paths.lua SCRIPT [ARGS...]\n"
    .. "   or: lua5.4 -i with_paths.lua   (a prompt with `context` loaded; make repl)\n")
  os.exit(1)
end
