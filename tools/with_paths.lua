-- with_paths.lua SCRIPT [ARGS...] — run SCRIPT with this checkout's module
-- on the paths (lua/ and build/), as if lcontext were installed.
local build = os.getenv("LCONTEXT_BUILD") or "build"
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./" .. build .. "/?.so;" .. package.cpath
local script = assert(arg[1], "usage: with_paths.lua SCRIPT [ARGS...]")
local args = { table.unpack(arg, 2) }
arg = { [0] = script, table.unpack(args) }
local chunk = assert(loadfile(script))
chunk(table.unpack(args))
