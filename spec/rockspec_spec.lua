-- rockspec_spec.lua — `luarocks make` installs a working module into a tree,
-- offline, for each Lua version (and LuaJIT, with its headers). Tagged: it
-- builds rocks, so it runs once, in the plain Lua 5.4 suite only, and is
-- pending under the other runtimes.
local h = require "spec.helpers"

-- version given to luarocks, interpreter, extra luarocks arguments
local targets = {
  { "5.4", "lua5.4", "" },
  { "5.3", "lua5.3", "" },
  { "5.1", "lua5.1", "" },
  { "5.1", "luajit", " LUA_INCDIR=/usr/include/luajit-2.1" },
}

describe("the rockspec #novalgrind", function()
  for _, t in ipairs(targets) do
    local version, lua, extra = t[1], t[2], t[3]
    it(("installs with luarocks --lua-version %s --tree, and works in %s"):format(version, lua), function()
      if not h.LUA54 then
        pending("builds rocks for every runtime: the Lua 5.4 suite runs it")
        return
      end
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local log = dir .. "/luarocks.log"
      local ok = os.execute(("luarocks --lua-version %s --tree %s make rockspec/lcontext-scm-1.rockspec%s > %s 2>&1")
        :format(version, dir, extra, log))
      local f = io.open(log)
      local out = f and f:read("*a") or ""
      if f then f:close() end
      assert.is_true(ok == true or ok == 0, out)
      local script = [[
        local c = require "lcontext"
        local ctx = c.with_timeout(c.background(), 0.01)
        assert(ctx:done() == c.deadline_exceeded)
        assert(type(c.retry) == "function" and type(c.metrics_text) == "function")
        print("installed ok")
      ]]
      local cmd = ("cd /tmp && LUA_PATH='%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua' "
        .. "LUA_CPATH='%s/lib/lua/%s/?.so' %s -e %q 2>&1"):format(dir, version, dir, version,
        dir, version, lua, script)
      local p = io.popen(cmd)
      local res = p:read("*a")
      p:close()
      os.execute("rm -rf " .. dir)
      assert.matches("installed ok", res)
    end)
  end
end)
