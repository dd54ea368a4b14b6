-- rockspec_spec.lua — `luarocks make` installs a working module into a tree,
-- offline. (Tagged: runs once, in the plain Lua 5.4 suite only; it builds
-- and runs the Lua 5.4 rock, so it is pending under the other runtimes.)
local h = require "spec.helpers"

describe("the rockspec #novalgrind", function()
  it("installs with luarocks --tree and the installed module works", function()
    if not h.LUA54 then
      pending("builds and loads the Lua 5.4 rock (luarocks --lua-version 5.4): the Lua 5.4 suite runs it")
      return
    end
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local log = dir .. "/luarocks.log"
    local ok = os.execute("luarocks --lua-version 5.4 --tree " .. dir
      .. " make rockspec/lcontext-scm-1.rockspec > " .. log .. " 2>&1")
    local f = io.open(log)
    local out = f and f:read("*a") or ""
    if f then f:close() end
    assert.is_true(ok == true or ok == 0, out)
    local script = [[
      local c = require "lcontext"
      assert(package.searchpath("lcontext.core", package.cpath):find(os.getenv("TREE"), 1, true))
      local ctx = c.with_timeout(c.background(), 0.01)
      assert(ctx:done() == c.deadline_exceeded)
      print("installed ok")
    ]]
    local cmd = ("cd /tmp && TREE=%s LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua' "
      .. "LUA_CPATH='%s/lib/lua/5.4/?.so' lua5.4 -e %q 2>&1"):format(dir, dir, dir, dir, script)
    local p = io.popen(cmd)
    local res = p:read("*a")
    p:close()
    os.execute("rm -rf " .. dir)
    assert.matches("installed ok", res)
  end)
end)
