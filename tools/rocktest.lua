-- rocktest.lua — what `luarocks test` runs (the rockspecs' test section):
-- the busted specs on the Lua that luarocks targets (`luarocks --lua-version
-- 5.4 test`: the Lua 5.4 suite), with the checkout's own build of the module
-- (`make build`, or build-5.3, build-5.1, build-jit), as tools/runtests.sh
-- runs them. Arguments are passed on to busted:
--
--     luarocks --lua-version 5.4 test -- spec/values_spec.lua
--
-- Not the `busted` test type: luarocks would then want busted as a rock in
-- one of its trees and download it; this uses the busted already installed
-- (Debian's lua-busted), offline. The specs tagged #rock (they build and
-- install rocks, and run this very script) are left out.
local jit = rawget(_G, "jit")
local runtime = jit and "luajit" or _VERSION:match("%d+%.%d+")
local build = ({ ["5.4"] = "build", ["5.3"] = "build-5.3", ["5.1"] = "build-5.1",
                 luajit = "build-jit" })[runtime]
if not build then
  io.stderr:write("rocktest: no build of lcontext for " .. _VERSION .. "\n")
  os.exit(1)
end

local function ok(...) -- os.execute's success, on 5.1 and later
  local a = ...
  return a == true or a == 0
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- the interpreter running this script (luarocks' LUA_BINDIR/LUA_INTERPRETER)
local lua, i = arg[0], 0
while arg[i - 1] do i = i - 1; lua = arg[i] end

local make = os.getenv("MAKE") or "make"
if not ok(os.execute(make .. " -s " .. q(build))) then
  io.stderr:write("rocktest: `" .. make .. " " .. build .. "` failed\n")
  os.exit(1)
end

local p = io.popen("command -v busted")
local busted = p:read("*l")
p:close()
if not busted or busted == "" then
  io.stderr:write("rocktest: no busted on PATH (Debian: apt-get install lua-busted)\n")
  os.exit(1)
end

local cmd = { q(lua), q(busted) }
if runtime == "5.4" then
  cmd[#cmd + 1] = "--exclude-tags=rock"
else
  -- as tools/runtests.sh: *_54_spec.lua files test what exists only in 5.4
  cmd[#cmd + 1] = "--cpath=" .. q("./" .. build .. "/?.so")
  cmd[#cmd + 1] = "--exclude-pattern=_54_spec"
  cmd[#cmd + 1] = "--exclude-tags=rock,novalgrind,only54"
end
for _, a in ipairs(arg) do cmd[#cmd + 1] = q(a) end
local line = table.concat(cmd, " ")
print("rocktest: " .. line)
os.exit(ok(os.execute(line)) and 0 or 1)
