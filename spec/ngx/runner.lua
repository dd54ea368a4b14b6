-- runner.lua — the shared spec files, run inside a real nginx worker.
--
-- spec/ngx/shared.sh starts nginx with a location whose content handler
-- calls runner.run(file): the file (one of spec/*_spec.lua, unchanged) is
-- loaded with busted's vocabulary — describe/it/pending, setup/teardown
-- (and their lazy_/strict_ forms), before_each/after_each, finally — and
-- luassert's `assert` (busted's own, from Debian's lua-luassert), and each
-- test body runs in the request's light thread, where lcontext.ngx's waits
-- suspend on ngx.semaphore. `require "lcontext"` gives lcontext.ngx here.
--
-- What busted does that this does not: tags, randomisation, insulation
-- (every file shares the worker's package.loaded, as one busted run shares
-- its process), output handlers. The response is one line per test —
-- `ok - NAME`, `not ok - NAME` (then the error, `# `-prefixed),
-- `pending - NAME: WHY` — and a last line `N passed, N failed, N pending`.
local ngx = ngx
local assert_lib = require "luassert"
-- busted loads Penlight, whose compat module adds table.pack, table.unpack
-- and package.searchpath where they are missing: the specs may use them
require "pl.compat"

local M = {}

local PENDING = setmetatable({}, { __tostring = function() return "pending" end })

local function out(line)
  ngx.say(line)
  ngx.flush(false)
end

-- the describe tree: a block is { name, parent, children (tests and
-- blocks, in order), setup, teardown, before_each, after_each, finally }
local function new_block(name, parent)
  return { name = name, parent = parent, children = {}, setup = {}, teardown = {},
    before_each = {}, after_each = {} }
end

local function full_name(block, name)
  local parts = { name }
  while block and block.name do
    table.insert(parts, 1, block.name)
    block = block.parent
  end
  return table.concat(parts, " ")
end

local function message(err)
  if type(err) == "table" and err.message then return tostring(err.message) end
  return tostring(err)
end

-- run fn in a protected call; on failure, the error with a traceback
local function protect(fn)
  local tb
  local ok, err = xpcall(fn, function(e)
    if e == PENDING or (type(e) == "table" and e.pending) then return e end
    tb = debug.traceback(message(e), 2)
    return e
  end)
  if ok then return true end
  if err == PENDING or (type(err) == "table" and err.pending) then return "pending", err end
  return false, tb or message(err)
end

-- The environment a spec file runs in: busted's globals over _G.
local function make_env(root)
  local current = root  -- the block being declared
  local running = nil   -- the test being run (for finally)
  local env = {}

  local function add_block(name, fn)
    local b = new_block(name, current)
    current.children[#current.children + 1] = { block = b }
    local saved = current
    current = b
    local ok, err = protect(fn)
    current = saved
    if not ok then
      -- an error while declaring: one failing entry names it
      b.children = { { test = name .. " (declaring)", fail = err } }
    end
  end

  env.describe = add_block
  env.context = add_block
  env.expose = add_block
  env.insulate = add_block
  env.it = function(name, fn)
    current.children[#current.children + 1] = { test = name, fn = fn }
  end
  env.spec = env.it
  env.test = env.it
  env.pending = function(name, _)
    if running then -- inside a test: the test ends as pending
      error({ pending = true, message = name }, 2)
    end
    current.children[#current.children + 1] = { test = name, pending = true }
  end
  local function hook(list)
    return function(fn) local l = current[list]; l[#l + 1] = fn end
  end
  env.setup, env.lazy_setup, env.strict_setup = hook("setup"), hook("setup"), hook("setup")
  env.teardown, env.lazy_teardown, env.strict_teardown =
    hook("teardown"), hook("teardown"), hook("teardown")
  env.before_each, env.after_each = hook("before_each"), hook("after_each")
  env.finally = function(fn)
    if not running then error("finally: only inside a test", 2) end
    running.finally[#running.finally + 1] = fn
  end
  env.assert = assert_lib
  env.spy = require "luassert.spy"
  env.stub = require "luassert.stub"
  env.mock = require "luassert.mock"
  env.match = require "luassert.match"
  env.randomize = function() end
  return env, function(t) running = t end
end

-- does a block hold a test (at any depth)? its setup runs only then
local function has_tests(block)
  local stack = { block }
  while #stack > 0 do
    local b = table.remove(stack)
    for _, c in ipairs(b.children) do
      if c.test and not c.pending and not c.fail then return true end
      if c.block then stack[#stack + 1] = c.block end
    end
  end
  return false
end

--- runner.run(file): run one spec file, writing the results to the response.
function M.run(file)
  local counts = { passed = 0, failed = 0, pending = 0 }
  local root = new_block(nil, nil)
  local env, set_running = make_env(root)

  local function report(name, ok, err)
    if ok == true then
      counts.passed = counts.passed + 1
      out("ok - " .. name)
    elseif ok == "pending" then
      counts.pending = counts.pending + 1
      out("pending - " .. name .. (err and (": " .. message(err)) or ""))
    else
      counts.failed = counts.failed + 1
      out("not ok - " .. name)
      out("# " .. tostring(err):gsub("\n", "\n# "))
    end
  end

  -- busted's names are globals, as under busted (spec/backend.lua's
  -- helpers call `it` and `pending`)
  for k, v in pairs(env) do rawset(_G, k, v) end
  local chunk, lerr = loadfile(file)
  if not chunk then
    report(file, false, lerr)
  else
    local ok, err = protect(chunk)
    if not ok then report(file .. " (loading)", false, err) end
  end

  -- each_hooks(block, list): the before_each hooks from the outside in,
  -- or the after_each hooks from the inside out
  local function chain(block, list, outer_first)
    local bs = {}
    while block do
      bs[#bs + 1] = block
      block = block.parent
    end
    local fns = {}
    if outer_first then
      for i = #bs, 1, -1 do for _, f in ipairs(bs[i][list]) do fns[#fns + 1] = f end end
    else
      for i = 1, #bs do for _, f in ipairs(bs[i][list]) do fns[#fns + 1] = f end end
    end
    return fns
  end

  local function run_test(block, entry)
    local name = full_name(block, entry.test)
    if entry.pending then return report(name, "pending") end
    if entry.fail then return report(name, false, entry.fail) end
    local t = { finally = {} }
    set_running(t)
    local ok, err = true, nil
    for _, f in ipairs(chain(block, "before_each", true)) do
      ok, err = protect(f)
      if ok ~= true then break end
    end
    if ok == true then ok, err = protect(entry.fn) end
    for _, f in ipairs(t.finally) do
      local fok, ferr = protect(f)
      if ok == true and fok ~= true then ok, err = fok, ferr end
    end
    for _, f in ipairs(chain(block, "after_each", false)) do
      local aok, aerr = protect(f)
      if ok == true and aok ~= true then ok, err = aok, aerr end
    end
    set_running(nil)
    report(name, ok, err)
  end

  -- walk the tree in order, iteratively: a frame is { block, next index,
  -- setup done }
  local stack = { { block = root, i = 1 } }
  while #stack > 0 do
    local fr = stack[#stack]
    local b = fr.block
    if fr.i == 1 and not fr.started then
      fr.started = true
      fr.live = has_tests(b)
      if fr.live then
        for _, f in ipairs(b.setup) do
          local ok, err = protect(f)
          if ok ~= true then
            report(full_name(b, "(setup)"), ok, err)
            fr.live, fr.i = false, #b.children + 1
            break
          end
        end
      end
    end
    local c = b.children[fr.i]
    if c then
      fr.i = fr.i + 1
      if c.block then
        stack[#stack + 1] = { block = c.block, i = 1 }
      else
        run_test(b, c)
      end
    else
      if fr.live then
        for _, f in ipairs(b.teardown) do
          local ok, err = protect(f)
          if ok ~= true then report(full_name(b, "(teardown)"), ok, err) end
        end
      end
      stack[#stack] = nil
    end
  end

  out(("%d passed, %d failed, %d pending"):format(counts.passed, counts.failed, counts.pending))
end

return M
