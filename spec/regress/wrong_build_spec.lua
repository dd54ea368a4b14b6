-- Regression: loading a C core built for another Lua runtime (the 5.4 build
-- in nginx's LuaJIT) failed with a bare "undefined symbol: lua_absindex".
-- The error must say that the build is for another runtime, and how to
-- build the right one.
describe("regress: a core built for another runtime", function()
  it("LuaJIT loading the Lua 5.4 build says what to build", function()
    if os.execute("command -v luajit >/dev/null 2>&1") ~= true and
       os.execute("command -v luajit >/dev/null 2>&1") ~= 0 then
      pending("luajit is not installed")
      return
    end
    local so = "./build/lcontext/core.so"
    local f = io.open(so, "rb")
    if not f then pending("no Lua 5.4 build (make build)") return end
    f:close()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute(("mkdir -p %s/lcontext && cp %s %s/lcontext/"):format(dir, so, dir)))
    local p = io.popen(("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' "
      .. "luajit -e 'require \"lcontext\"' 2>&1"):format(dir))
    local out = p:read("*a")
    p:close()
    os.execute("rm -rf " .. dir)
    assert.is_truthy(out:find("built for another Lua runtime", 1, true), out)
    assert.is_truthy(out:find("make build-jit", 1, true), out)
    assert.is_truthy(out:find("lua_absindex", 1, true), out)
  end)
end)
