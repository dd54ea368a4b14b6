-- rockspec_spec.lua — lcontext installs like any rock, offline, for each Lua
-- version (and LuaJIT, with its headers):
--   * both rockspecs list every C source of the module and every Lua module,
--     with the same build and test sections;
--   * `luarocks make` of the scm rockspec (in a copy of the checkout: it
--     builds in place) installs a working module exporting only
--     luaopen_lcontext_core, and `make clean` removes what it left;
--   * `make rock` builds the release tarball and .src.rock, which `luarocks
--     install` puts in a fresh tree, where a script run from elsewhere with
--     that tree's paths only works; a C host builds against the installed
--     header and module; `luarocks test` runs the specs.
-- The builds are tagged (#rock: tools/rocktest.lua, which `luarocks test`
-- runs, leaves them out): they run once, in the plain Lua 5.4 suite only, and
-- are pending under the other runtimes.
local h = require "spec.helpers"

-- version given to luarocks, interpreter, extra luarocks arguments
local targets = {
  { "5.4", "lua5.4", "" },
  { "5.3", "lua5.3", "" },
  { "5.1", "lua5.1", "" },
  { "5.1", "luajit", " LUA_INCDIR=/usr/include/luajit-2.1" },
}

local VERSION = "0.1.0"
local RELEASE = "rockspec/lcontext-" .. VERSION .. "-1.rockspec"
local SCM = "rockspec/lcontext-scm-1.rockspec"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- run a shell command; its output (stdout and stderr) and whether it succeeded
local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out:gsub("rc=%d+%s*$", ""), rc == 0
end

local function mktemp()
  local out, ok = sh("mktemp -d")
  assert(ok, out)
  return (out:gsub("%s+$", ""))
end

-- a rockspec file as a table
local function rockspec(file)
  local f = assert(io.open(file))
  local src = f:read("*a")
  f:close()
  local env = {}
  local chunk
  if setfenv then
    chunk = assert(loadstring(src, "=" .. file))
    setfenv(chunk, env)
  else
    chunk = assert(load(src, "=" .. file, "t", env))
  end
  chunk()
  return env
end

local function lines(cmd)
  local out, ok = sh(cmd)
  assert(ok, out)
  local t = {}
  for l in out:gmatch("[^\n]+") do t[#t + 1] = l end
  table.sort(t)
  return t
end

-- the exported (dynamic, defined) symbols of a shared object
local function exports(so)
  local out, ok = sh("nm -D --defined-only " .. q(so))
  assert(ok, out)
  local names = {}
  for name in out:gmatch("%S+%s+%a%s+(%S+)") do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- what an installed module may export: its entry point (the rest of the
-- embedding API in csrc/lcontext.h is static inline)
local PUBLIC = { "luaopen_lcontext_core" }

describe("the rockspecs", function()
  it("list every C source of the module and every Lua module, both alike", function()
    local rel, scm = rockspec(RELEASE), rockspec(SCM)
    local mods = rel.build.modules
    -- Lua modules: every lua/lcontext/*.lua, named after its file
    local want = {}
    for _, file in ipairs(lines("ls lua/lcontext/*.lua")) do
      local name = file:match("^lua/lcontext/(.-)%.lua$")
      want[name == "init" and "lcontext" or "lcontext." .. name] = file
    end
    want["lcontext.core"] = mods["lcontext.core"]
    assert.are.same(want, mods)
    -- C sources: csrc/core/*.c but the tests and fuzzers, and csrc/l_*.c
    local c = {}
    for _, file in ipairs(lines("ls csrc/core/*.c csrc/l_*.c")) do
      if not file:match("/test_") and not file:match("/fuzz_") then c[#c + 1] = file end
    end
    local listed = {}
    for _, file in ipairs(mods["lcontext.core"].sources) do listed[#listed + 1] = file end
    table.sort(listed)
    assert.are.same(c, listed)
    -- the same build, test and description in the scm rockspec
    assert.are.same(rel.build, scm.build)
    assert.are.same(rel.test, scm.test)
    assert.are.same(rel.description, scm.description)
    assert.are.same(rel.dependencies, scm.dependencies)
    assert.are.same(rel.external_dependencies, scm.external_dependencies)
    -- the release: a tarball named after its version, unpacking to its dir
    assert.are.equal("0.1.0-1", rel.version)
    assert.are.equal("3.0", rel.rockspec_format)
    assert.matches("/lcontext%-0%.1%.0%.tar%.gz$", rel.source.url)
    assert.are.equal("lcontext-0.1.0", rel.source.dir)
    assert.are.equal("v0.1.0", rel.source.tag)
    assert.are.equal("MIT", rel.description.license)
    assert.is_string(rel.description.homepage)
    assert.is_string(rel.description.issues_url)
    -- the Makefile releases that version
    local mk = assert(io.open("Makefile")):read("*a")
    assert.are.equal(VERSION, mk:match("\nVERSION%s*=%s*(%S+)"))
  end)

  it("are ignored where luarocks builds in place, and make clean is told so", function()
    local out, ok = sh("git check-ignore -q csrc/l_core.o && git check-ignore -q csrc/core/ctx.o"
      .. " && git check-ignore -q lcontext/core.so && git check-ignore -q dist/x.src.rock"
      .. " && git check-ignore -q build-jit/lcontext/core.so")
    assert.is_true(ok, "not ignored by .gitignore: " .. out)
  end)
end)

describe("the rockspec #novalgrind #rock", function()
  if not h.LUA54 then
    it("builds rocks for every runtime", function()
      pending("builds rocks for every runtime: the Lua 5.4 suite runs it")
    end)
    return
  end

  -- a copy of the checkout as it is (luarocks make builds in place): the
  -- tracked and the new files, without builds and dist
  local copy
  local function checkout_copy()
    if not copy then
      copy = mktemp()
      local out, ok = sh("tar -cf - --exclude=./.git --exclude='./build*' --exclude=./dist "
        .. "--exclude=./lcontext --exclude='*.o' --exclude='*.so' . | tar -xf - -C " .. q(copy))
      assert(ok, out)
    end
    return copy
  end

  -- the release, as `make rock` makes it, from the working tree's tracked
  -- files (`git stash create`: HEAD plus their changes; HEAD if none)
  local dist
  local function src_rock()
    if not dist then
      dist = mktemp()
      local out, ok = sh("rev=$(git stash create) && make -s rock DIST=" .. q(dist)
        .. " ROCK_REV=${rev:-HEAD}")
      assert(ok, out)
    end
    return dist .. "/lcontext-" .. VERSION .. "-1.src.rock"
  end

  local trees = {}
  teardown(function()
    for _, d in ipairs(trees) do os.execute("rm -rf " .. q(d)) end
    if copy then os.execute("rm -rf " .. q(copy)) end
    if dist then os.execute("rm -rf " .. q(dist)) end
  end)

  -- the smoke test: from an empty directory, with only the tree's paths
  local function smoke(tree, version, lua)
    local script = [[
      local c = require "lcontext"
      local lua_fns = 0
      for _, f in pairs(c) do -- the Lua functions come from the tree
        if type(f) == "function" and debug.getinfo(f, "S").what == "Lua" then
          local src = debug.getinfo(f, "S").source
          assert(src:find(TREE, 1, true), "lcontext loaded from " .. src)
          lua_fns = lua_fns + 1
        end
      end
      assert(lua_fns > 0, "no Lua function in lcontext")
      local cause = setmetatable({}, { __tostring = function() return "too slow" end })
      local ctx = c.with_timeout(c.background(), 0.05, cause)
      local t0 = c.now()
      local task = c.go(function()
        local ok, err = c.sleep(ctx, 5)
        return ok, err
      end)
      local ok, err = task:wait()
      local took = c.now() - t0
      assert(ok == nil and err == c.deadline_exceeded, "sleep: " .. tostring(ok) .. ", " .. tostring(err))
      assert(ctx:err() == c.deadline_exceeded and rawequal(ctx:cause(), cause), "cause: " .. tostring(ctx:cause()))
      assert(took >= 0.05 and took < 2, "took " .. took)
      assert(type(c.retry) == "function" and type(c.metrics_text) == "function")
      print("installed ok " .. (jit and jit.version or _VERSION))
    ]]
    local lpath = ("%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua"):format(tree, version, tree, version)
    local cpath = ("%s/lib/lua/%s/?.so"):format(tree, version)
    local vs = version:gsub("%.", "_")
    local empty = mktemp()
    trees[#trees + 1] = empty
    local cmd = ("cd %s && env -u LUA_INIT -u LUA_INIT_%s LUA_PATH=%s LUA_PATH_%s=%s LUA_CPATH=%s "
      .. "LUA_CPATH_%s=%s %s -e %s"):format(q(empty), vs, q(lpath), vs, q(lpath), q(cpath), vs,
      q(cpath), lua, q("TREE = " .. ("%q"):format(tree) .. "\n" .. script))
    local out = sh(cmd)
    assert.matches("installed ok " .. (lua == "luajit" and "LuaJIT" or "Lua " .. version), out)
  end

  for _, t in ipairs(targets) do
    local version, lua, extra = t[1], t[2], t[3]

    it(("luarocks --lua-version %s make: works in %s, exports only luaopen"):format(version, lua), function()
      local dir = checkout_copy()
      local tree = mktemp()
      trees[#trees + 1] = tree
      local out, ok = sh(("cd %s && luarocks --lua-version %s --tree %s make %s%s")
        :format(q(dir), version, q(tree), SCM, extra))
      assert.is_true(ok, out)
      assert.are.same(PUBLIC, exports(tree .. "/lib/lua/" .. version .. "/lcontext/core.so"))
      smoke(tree, version, lua)
    end)

    it(("luarocks --lua-version %s install the .src.rock: works in %s, exports only luaopen")
      :format(version, lua), function()
      local rock = src_rock()
      local tree = mktemp()
      trees[#trees + 1] = tree
      local out, ok = sh(("cd %s && luarocks --lua-version %s --tree %s install %s%s")
        :format(q(tree), version, q(tree), q(rock), extra))
      assert.is_true(ok, out)
      assert.matches("lcontext " .. VERSION .. "%-1 is now installed", out)
      assert.are.same(PUBLIC, exports(tree .. "/lib/lua/" .. version .. "/lcontext/core.so"))
      local rockdir = ("%s/lib/luarocks/rocks-%s/lcontext/%s-1"):format(tree, version, VERSION)
      assert.is_truthy(io.open(rockdir .. "/conf/lcontext.h"), "no header in " .. rockdir)
      smoke(tree, version, lua)
    end)
  end

  it("make rock: the tarball is the tree under lcontext-0.1.0/, the .src.rock has it and the rockspec", function()
    local rock = src_rock()
    local out, ok = sh("unzip -Z1 " .. q(rock))
    assert.is_true(ok, out)
    local names = {}
    for l in out:gmatch("[^\n]+") do names[#names + 1] = l end
    table.sort(names)
    assert.are.same({ "lcontext-0.1.0-1.rockspec", "lcontext-0.1.0.tar.gz" }, names)
    out, ok = sh("tar -tzf " .. q(dist .. "/lcontext-0.1.0.tar.gz"))
    assert.is_true(ok, out)
    for _, f in ipairs({ "LICENSE", "Makefile", "csrc/lcontext.h", "lua/lcontext/init.lua",
                         "tools/rocktest.lua", RELEASE, SCM }) do
      assert.is_truthy(out:find("\nlcontext%-0%.1%.0/" .. f:gsub("%p", "%%%0") .. "\n"), f .. " not in the tarball")
    end
    -- the packed rockspec is the release one, as it is
    out, ok = sh("unzip -p " .. q(rock) .. " lcontext-0.1.0-1.rockspec | cmp - " .. RELEASE)
    assert.is_true(ok, out)
  end)

  it("make clean removes what luarocks make leaves in the checkout", function()
    local dir = checkout_copy()
    -- the luarocks make tests above built in place here (or this one does)
    local out = sh("cd " .. q(dir) .. " && ls csrc/*.o csrc/core/*.o lcontext/core.so")
    if not out:match("lcontext/core%.so") then
      local tree = mktemp()
      trees[#trees + 1] = tree
      local made, ok = sh(("cd %s && luarocks --lua-version 5.4 --tree %s make %s")
        :format(q(dir), q(tree), SCM))
      assert(ok, made)
      out = sh("cd " .. q(dir) .. " && ls csrc/*.o csrc/core/*.o lcontext/core.so")
    end
    assert.matches("csrc/l_open%.o", out)
    assert.matches("lcontext/core%.so", out)
    local ok
    out, ok = sh("cd " .. q(dir) .. " && mkdir -p build-5.3 build-5.1 build-jit build-asan dist"
      .. " && make -s --no-print-directory clean && find . -name '*.o' -o -name '*.so' && ls -d build* dist lcontext 2>/dev/null; true")
    assert.is_true(ok, out)
    assert.are.equal("", out)
  end)

  it("a C host builds against the installed header and module (examples/embed/host.c)", function()
    local tree = mktemp()
    trees[#trees + 1] = tree
    local out, ok = sh(("luarocks --lua-version 5.4 --tree %s install %s"):format(q(tree), q(src_rock())))
    assert.is_true(ok, out)
    -- the lines README's "Embedding in a C host" gives
    out, ok = sh(("R=$(luarocks --lua-version 5.4 --tree %s show --rock-dir lcontext) && "
      .. "M=${R%%/luarocks/*}/lua/5.4/lcontext && test -f $M/core.so && "
      .. "cc -std=c99 -Wall -Wextra -pedantic -I$R/conf -I/usr/include/lua5.4 -o %s/host "
      .. "examples/embed/host.c $M/core.so -Wl,-rpath,$M -llua5.4 -lev"):format(q(tree), q(tree)))
    assert.is_true(ok, out)
    assert.are.equal("", out) -- no warnings
    out, ok = sh(("cp examples/embed/script.lua %s/ && cd %s && env LUA_PATH_5_4=%s ./host script.lua")
      :format(q(tree), q(tree), q(tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua")))
    assert.is_true(ok, out)
    assert.matches("host: ok", out)
  end)

  it("luarocks test runs the specs (here one file of them) on the targeted Lua", function()
    local out, ok = sh("luarocks --lua-version 5.4 test " .. RELEASE .. " -- spec/values_spec.lua")
    assert.is_true(ok, out)
    assert.matches("rocktest: '[^']*lua5%.4' ", out)
    local n = tonumber(out:match("(%d+) success"))
    assert.is_true(n ~= nil and n > 0, out)
    assert.matches(" 0 failures / 0 errors", out)
    -- and it fails when a spec does
    local bad = mktemp()
    trees[#trees + 1] = bad
    local f = assert(io.open(bad .. "/fails_spec.lua", "w"))
    f:write('describe("x", function() it("fails", function() assert.is_true(false) end) end)\n')
    f:close()
    out, ok = sh("luarocks --lua-version 5.4 test " .. RELEASE .. " -- " .. q(bad .. "/fails_spec.lua"))
    assert.is_false(ok, out)
    assert.matches("1 failure", out)
  end)
end)
