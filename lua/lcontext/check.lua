--- lcontext.check: argument checks shared by the Lua helpers, in
-- luaL_argerror's words, reported at the user's call site; and the few
-- shims that let the helpers run unchanged on Lua 5.4, 5.3, 5.1 and LuaJIT
-- 2.1 (each is the runtime's own function where it has one).
local type, getmetatable, error, huge = type, getmetatable, error, math.huge
local select, floor, setmetatable = select, math.floor, setmetatable
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

--- tname(v): the type name luaL_typeerror would print (the protected
-- metatables of the core's objects are their names: "context", ...)
local function tname(v)
  local mt = getmetatable(v)
  if type(mt) == "string" then return mt end
  if type(mt) == "table" and type(mt.__name) == "string" then return mt.__name end
  return type(v)
end
M.tname = tname

--- ctx(v, fname, n): v must be a context
function M.ctx(v, fname, n)
  if getmetatable(v) ~= "context" then
    M.argerr(fname, n, "context expected, got " .. tname(v))
  end
end

--- seconds(v, fname, n): v must be a finite number of seconds
function M.seconds(v, fname, n)
  if type(v) ~= "number" then
    M.argerr(fname, n, "number expected, got " .. tname(v))
  elseif v ~= v or v == huge or v == -huge then
    M.argerr(fname, n, "number is not finite")
  end
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

-- {=== options tables ===
-- Every options table of the API goes through these: options() refuses
-- what is not a table and any key the function does not know (a
-- misspelled option is a bug, not a default), suggesting the closest known
-- name; number() and func() read one option each. The messages:
--   bad argument #3 to 'retry' (unknown option 'attemps'; did you mean 'attempts'?)
--   bad argument #3 to 'retry' (option 'base': number expected, got string)
--   bad argument #3 to 'retry' (option 'base' must be >= 0)

--- distance(a, b) -> the edit distance between two strings: insertions,
-- deletions, substitutions and swaps of two neighbours count 1 each
-- ("optimal string alignment"; "attemps" -> "attempts" is 1, "treshold"
-- -> "threshold" is 1, "defualt" -> "default" is 1)
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 1, lb do d[0][j] = j end
  for i = 1, la do
    local ca = a:byte(i)
    for j = 1, lb do
      local cb = b:byte(j)
      local cost = ca == cb and 0 or 1
      local v = d[i - 1][j] + 1
      if d[i][j - 1] + 1 < v then v = d[i][j - 1] + 1 end
      if d[i - 1][j - 1] + cost < v then v = d[i - 1][j - 1] + cost end
      if i > 1 and j > 1 and ca == b:byte(j - 1) and a:byte(i - 1) == cb
          and d[i - 2][j - 2] + 1 < v then
        v = d[i - 2][j - 2] + 1
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end
M.distance = distance

--- closest(name, known [, within]) -> the known name nearest to `name`
-- (a string) when at most `within` (2) edits away, else nil. known: a
-- set {name = true}. Ties go to the first in alphabetical order, so the
-- suggestion does not depend on pairs().
function M.closest(name, known, within)
  if type(name) ~= "string" then return nil end
  within = within or 2
  local best, bestd = nil, within + 1
  for cand in pairs(known) do
    if type(cand) == "string" and cand ~= name then
      local dist = distance(name, cand)
      if dist < bestd or (dist == bestd and best and cand < best) then
        best, bestd = cand, dist
      end
    end
  end
  return best
end

-- a key as the messages show it: 'name' ("name" for fields: see options)
local function show_key(k, noun)
  if type(k) == "string" then
    if noun == "option" then return "'" .. k .. "'" end
    return ("%q"):format(k)
  end
  if type(k) == "number" or type(k) == "boolean" then return "[" .. tostring(k) .. "]" end
  return "of type " .. type(k)
end

--- unknown(fname, n, key, known [, noun [, where]]): raise "unknown
-- option 'key'", with "; did you mean 'x'?" when a known name is close;
-- where: a prefix saying which table, for nested ones ("rules[1]: ")
function M.unknown(fname, n, key, known, noun, where)
  noun = noun or "option"
  local msg = ("%sunknown %s %s"):format(where or "", noun, show_key(key, noun))
  local near = M.closest(key, known)
  if near then msg = msg .. ("; did you mean %s?"):format(show_key(near, noun)) end
  M.argerr(fname, n, msg)
end

-- {=== lcontext.socket's arguments (both backends: socket.lua, ngx_socket.lua)

--- recv_pattern(p, fname, n) -> "*l" | "*a" | a byte count: LuaSocket's
-- receive patterns ("*l"/"l", "*a"/"a": what follows the letter is
-- ignored, as LuaSocket does; a byte count >= 0); nil is "*l"
function M.recv_pattern(p, fname, n)
  if p == nil then return "*l" end
  if type(p) == "number" then
    if p ~= p or p < 0 or p == huge then
      M.argerr(fname, n, "invalid receive pattern: a byte count >= 0 expected, got " .. tostring(p))
    end
    return floor(p)
  end
  if type(p) == "string" then
    local c = p:sub(1, 1) == "*" and p:sub(2, 2) or p:sub(1, 1)
    if c == "l" then return "*l" end
    if c == "a" then return "*a" end
    M.argerr(fname, n, ("invalid receive pattern %q (\"*l\", \"*a\" or a byte count expected)"):format(p))
  end
  M.argerr(fname, n, "receive pattern expected (\"*l\", \"*a\" or a byte count), got " .. tname(p))
end

--- data(v, fname, n) -> v as a string (a number is one, as in LuaSocket)
function M.data(v, fname, n)
  if type(v) == "number" then return tostring(v) end
  if type(v) ~= "string" then M.argerr(fname, n, "string expected, got " .. tname(v)) end
  return v
end

--- index(v, fname, n) -> v: nil or an integer (send's i and j)
function M.index(v, fname, n)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= floor(v) then
    M.argerr(fname, n, "integer expected, got " .. (type(v) == "number" and tostring(v) or tname(v)))
  end
  return v
end

--- port(v, fname, n) -> an integer 0..65535 (a numeric string is one)
function M.port(v, fname, n)
  if type(v) == "string" and tonumber(v) then v = tonumber(v) end
  if type(v) ~= "number" or v ~= floor(v) or v < 0 or v > 65535 then
    M.argerr(fname, n, "port expected (an integer 0..65535), got "
      .. (type(v) == "number" and tostring(v) or tname(v)))
  end
  return v
end

--- host(v, fname, n) -> v: a non-empty string
function M.host(v, fname, n)
  if type(v) ~= "string" or v == "" then
    M.argerr(fname, n, "host expected (a name or an address), got "
      .. (v == "" and "an empty string" or tname(v)))
  end
  return v
end

-- ===}

--- names{"a", "b", ...} -> the set {a = true, b = true}: the known names
-- of an options table, made once where the function is defined
function M.names(list)
  local set = {}
  for _, k in ipairs(list) do set[k] = true end
  return set
end

--- options(opts, fname, n, known [, noun]) -> opts
-- opts: nil (then {}) or a table whose every key is in known (a set made
-- by names()); otherwise a bad argument #n to fname.
-- noun: "option" (default), or "field" for the tables whose entries the
-- documentation calls fields (context.policy, with_request_info), which
-- quote the key as %q does.
function M.options(opts, fname, n, known, noun)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    M.argerr(fname, n, "table expected, got " .. tname(opts))
  end
  for k in pairs(opts) do
    if not known[k] then M.unknown(fname, n, k, known, noun) end
  end
  return opts
end

--- number(opts, name, fname, n [, spec]) -> opts[name], or spec.default
-- when nil. spec: lo (the least value), lo_open (lo itself excluded), hi
-- (the greatest), integer, inf (math.huge allowed), ok(v) with what (a
-- further rule and its description: "must be <what>, got <v>").
function M.number(opts, name, fname, n, spec)
  spec = spec or {}
  local v = opts[name]
  if v == nil then return spec.default end
  if type(v) ~= "number" then
    M.argerr(fname, n, ("option '%s': number expected, got %s"):format(name, tname(v)))
  end
  if v ~= v or (v == -huge) or (v == huge and not spec.inf) then
    M.argerr(fname, n, ("option '%s': number is not finite"):format(name))
  end
  local lo, hi = spec.lo, spec.hi
  if lo and (v < lo or (spec.lo_open and v == lo)) then
    M.argerr(fname, n, ("option '%s' must be %s %s, got %s"):format(name,
      spec.lo_open and ">" or ">=", tostring(lo), tostring(v)))
  end
  if hi and v > hi then
    M.argerr(fname, n, ("option '%s' must be <= %s, got %s"):format(name, tostring(hi), tostring(v)))
  end
  if spec.integer and v ~= huge and v ~= floor(v) then
    M.argerr(fname, n, ("option '%s' must be an integer, got %s"):format(name, tostring(v)))
  end
  if spec.ok and not spec.ok(v) then
    M.argerr(fname, n, ("option '%s' must be %s, got %s"):format(name, spec.what, tostring(v)))
  end
  return v
end

--- func(opts, name, fname, n) -> opts[name] (a function, or a value with
-- __call), or nil
function M.func(opts, name, fname, n)
  local v = opts[name]
  if v ~= nil and not M.callable(v) then
    M.argerr(fname, n, ("option '%s': function expected, got %s"):format(name, tname(v)))
  end
  return v
end

--- oneof(opts, name, fname, n, choices, default) -> opts[name], one of the
-- strings in the list `choices`, or default when nil
function M.oneof(opts, name, fname, n, choices, default)
  local v = opts[name]
  if v == nil then return default end
  for _, c in ipairs(choices) do
    if v == c then return v end
  end
  local quoted = {}
  for i, c in ipairs(choices) do quoted[i] = '"' .. c .. '"' end
  local list = #quoted > 1
    and table.concat(quoted, ", ", 1, #quoted - 1) .. " or " .. quoted[#quoted]
    or quoted[1]
  M.argerr(fname, n, ("option '%s': %s expected, got %s"):format(name, list,
    type(v) == "string" and ("%q"):format(v) or tostring(v)))
end
-- ===}

--- The public functions whose first argument is a context, which are also
-- methods of contexts: `context.sleep(ctx, 1)` is `ctx:sleep(1)` (README).
-- The core's own (with_*, without_cancel, merge, cause, origin) are methods
-- already; select is not here: its arguments are waitables of any kind.
M.CONTEXT_METHODS = {
  "sleep", "wait_fd", "after_func", "signal",                   -- init.lua, the core
  "group", "group_scope", "retry", "hedge",                      -- group, retry, hedge
  "with_min_timeout", "split", "scope", "fallback", "classify_timeout", -- patterns
  "with_request_info", "request_info", "log_fields", "copy_values",     -- observe
  "spawn",                                                      -- tasks
  "timeout_ms",                                                 -- ngx.lua only
}

-- the names install_methods set (init.lua and ngx.lua share the methods)
local installed = {}

--- install_methods(module, methods): module[name] becomes methods[name] for
-- each CONTEXT_METHODS name the module has. A method of another meaning
-- (ctx:done(), ctx:value(k), ...) is never shadowed: that is an error.
function M.install_methods(module, methods)
  for _, name in ipairs(M.CONTEXT_METHODS) do
    local f = module[name]
    if f ~= nil then
      if methods[name] ~= nil and not installed[name] then
        error("lcontext: the context method '" .. name .. "' exists already", 2)
      end
      methods[name] = f
      installed[name] = true
    end
  end
end

--- load_core() -> require "lcontext.core"; a core built for another Lua
-- runtime (a 5.4 build loaded by LuaJIT in nginx: "undefined symbol:
-- lua_absindex") is an error that says so and how to build the right one.
function M.load_core()
  local ok, core = pcall(require, "lcontext.core")
  if ok then
    -- LuaJIT: the hot paths through the FFI (lua/lcontext/ffi.lua), for
    -- both backends, once per core; elsewhere (or LCONTEXT_NO_FFI=1) the
    -- classic C functions
    if core._ffi_path == nil and type(rawget(_G, "jit")) == "table" then
      local okf, lffi = pcall(require, "lcontext.ffi")
      if okf then lffi.install(core) end
    end
    return core
  end
  local msg = tostring(core)
  if msg:find("undefined symbol", 1, true) then
    local runtime = type(rawget(_G, "jit")) == "table" and "LuaJIT (OpenResty)" or _VERSION
    error(("lcontext: the C core found on package.cpath was built for another Lua "
      .. "runtime than this one, %s (%s). Build it for %s: `make build-jit` for "
      .. "LuaJIT and OpenResty, `make build-5.1`, `make build-5.3`, `make build` for 5.4; "
      .. "or `luarocks --lua-version %s make rockspec/lcontext-scm-1.rockspec`%s")
      :format(runtime, msg:match("undefined symbol: [%w_]+") or msg, runtime,
        _VERSION:match("%d+%.%d+"),
        runtime:find("LuaJIT") and " LUA_INCDIR=/usr/include/luajit-2.1" or ""), 2)
  end
  error(core, 0)
end

--- The bound of the running task (lua/lcontext/tasks.lua): inside a task
-- started by context.spawn (or a context.shield body), every wait of the
-- backend (done, sleep, wait_fd, select, task:wait, and so every helper)
-- also ends when that context ends. bound.ctx maps a coroutine (MAIN: the
-- main thread, where running() gives nil on 5.1) to its context; active
-- stays false until the first spawn or shield, so that programs that never
-- use them pay nothing in their waits.
M.bound = { active = false, ctx = setmetatable({}, { __mode = "k" }), MAIN = {} }

--- set_bound(key, ctx | nil): the bound of the running coroutine (key: it,
-- or MAIN), told to the core too where it keeps its own copy (the C
-- channels and semaphores of lcontext.core on Lua 5.3+: set_bound_core).
M.set_bound_core = nil
function M.set_bound(key, ctx)
  M.bound.ctx[key] = ctx
  local f = M.set_bound_core
  if f then f(ctx) end
end

--- random() -> a number in [0, 1), from the generator the helpers' jitter
-- uses (retry's backoff, unless opts.random is given). Seeded from the
-- system at load; context.random_seed(n) makes it repeat (a test under a
-- virtual clock that wants the same run twice). Park and Miller's minimal
-- standard generator: exact in doubles, so the same on every runtime.
local rng_state = (os.time() % 2147483646) + 1
function M.random_seed(n)
  n = math.floor(n) % 2147483646
  rng_state = n + 1
end
function M.random()
  rng_state = (rng_state * 16807) % 2147483647
  return (rng_state - 1) / 2147483646
end

--- interp_only(f) -> f, never compiled by LuaJIT (jit.off): for what a
-- __gc metamethod runs. Inside a finaliser LuaJIT records no trace, and a
-- loop compiled before then ends through a trace exit that re-enters its
-- own trace until that exit gets a side trace of its own, which never
-- comes there: the loop spins forever (docs/openresty.md, "A worker that
-- spun"). Elsewhere it does nothing.
local jit = rawget(_G, "jit")
function M.interp_only(f)
  if type(jit) == "table" and jit.off then jit.off(f) end
  return f
end

--- select's other waitables (lua/lcontext/sync.lua): a table whose
-- metatable has __lcontext_case is a channel case or an event; the
-- backends' select hands a call with one (has_case) to
-- M.select_cases(select, ...).
M.select_cases = nil
function M.has_case(...)
  for k = 1, select("#", ...) do
    local w = (select(k, ...))
    if type(w) == "table" then
      local mt = getmetatable(w)
      if type(mt) == "table" and rawget(mt, "__lcontext_case") then return true end
    end
  end
  return false
end

-- {=== runtime shims (Lua 5.1, LuaJIT 2.1, 5.3, 5.4) ===
-- Where the runtime has the function, the shim is that very function. The
-- shims are reached through this module's __index, not stored in it: Lua
-- 5.3+ names a C function in a traceback by the first loaded module found
-- holding it, and a pcall frame must still read "in function 'pcall'", not
-- 'lcontext.check.pcall'.
local S = {}
setmetatable(M, { __index = S })

--- unpack(t, i, j), pack(...) -> { n = select("#", ...), ... }
S.unpack = table.unpack or unpack
S.pack = table.pack or function(...) return { n = select("#", ...), ... } end

--- math_type(v) -> "integer" | "float" | nil, as math.type. Before 5.3
-- every number is a double: an integral one in the 64-bit range counts as
-- an integer (1.0 and 1 cannot be told apart there).
S.math_type = math.type or function(v)
  if type(v) ~= "number" then return nil end
  if v == floor(v) and v >= -2 ^ 63 and v < 2 ^ 63 then return "integer" end
  return "float"
end

--- searchpath(name, path) -> the file name, or nil and the places tried,
-- as package.searchpath (5.2+ and LuaJIT; written out for 5.1)
S.searchpath = package.searchpath or function(name, path)
  name = name:gsub("%.", "/")
  local tried = {}
  for template in path:gmatch("[^;]+") do
    local file = template:gsub("%?", name)
    local f = io.open(file, "r")
    if f then
      f:close()
      return file
    end
    tried[#tried + 1] = "\n\tno file '" .. file .. "'"
  end
  return nil, table.concat(tried)
end

-- {=== pcall and xpcall that let a task wait inside them ===
-- The helpers run user functions that may wait (suspend the task) under
-- pcall. From 5.2 on, and in LuaJIT, a coroutine may yield across pcall and
-- xpcall: check.pcall and check.xpcall are the native ones. Lua 5.1's
-- cannot: there they run the function in a coroutine of its own (a proxy),
-- and pass what it yields through to the caller's coroutine. lcontext's
-- waits are not plain yields: the core parks the running task, and a proxy
-- is not the task; so a wait made in a proxy asks the coroutine that called
-- check.pcall to park instead (check.outer), up to the task itself.

-- can a coroutine yield across pcall here? Everywhere but Lua 5.1 (LuaJIT
-- can). Known from the version, not tried with a coroutine: loading this
-- module must never yield, and in OpenResty a coroutine resumed while a
-- handler requires lcontext yields the request's own light thread, across
-- require ("attempt to yield across C-call boundary", then "loop or
-- previous error loading module" on every later request).
local yieldable_pcall = _VERSION ~= "Lua 5.1" or type(rawget(_G, "jit")) == "table"

--- native_pcall: true where check.pcall and check.xpcall are the runtime's
-- own (everywhere but Lua 5.1)
S.native_pcall = yieldable_pcall

-- does xpcall pass extra arguments to the function (5.2+, LuaJIT)?
local xpcall_args = select(2, xpcall(function(a) return a end, tostring, true)) == true

if yieldable_pcall then
  S.pcall = pcall
  if xpcall_args then
    S.xpcall = xpcall
  else -- not met in the runtimes lcontext supports; kept for completeness
    local unpack_ = S.unpack
    function S.xpcall(f, handler, ...)
      local args = S.pack(...)
      return xpcall(function() return f(unpack_(args, 1, args.n)) end, handler)
    end
  end
  S.traceback = debug.traceback
  return M
end

-- Lua 5.1 from here on.
local create, resume, status, yield, running =
  coroutine.create, coroutine.resume, coroutine.status, coroutine.yield, coroutine.running
local pack, unpack = S.pack, S.unpack
local traceback = debug.traceback

-- the proxies running now (coroutine -> true)
local proxies = setmetatable({}, { __mode = "k" })
-- what a proxy yields to have a function run by the coroutine that called
-- check.pcall (see check.outer)
local CALL = setmetatable({}, { __tostring = function() return "lcontext.check.CALL" end })

--- outer(fn, ...) -> fn(...), called in the coroutine where the current
-- check.pcall (or xpcall) was called, through every level of them: in the
-- task, for a wait. fn must not raise. Outside a proxy: fn(...) here.
-- (Lua 5.1 only: elsewhere check.outer is nil.)
function S.outer(fn, ...)
  local co = running()
  if co and proxies[co] then return yield(CALL, fn, ...) end
  return fn(...)
end

-- the coroutine whose error a check.xpcall handler is being given (5.1),
-- for check.traceback
local handling = nil

--- traceback(msg [, level]) -> debug.traceback(msg, level) as seen from a
-- check.xpcall message handler: on 5.1, that of the proxy that raised.
function S.traceback(msg, level)
  level = level or 1
  if handling then
    -- a native handler runs on top of the raising frames: its level 2 is
    -- the frame that raised, the proxy's level 0
    return traceback(handling, msg, level >= 2 and level - 2 or 0)
  end
  local tb = traceback(msg, level + 1) -- (not a tail call: the level counts this frame)
  return tb
end

-- run f(...) in a proxy, until it returns or raises; on a raise, handler
-- (if any) makes the error value. Called from a coroutine only (on the main
-- thread nothing can yield: the native pcall serves).
local function proxied(handler, f, ...)
  if type(f) ~= "function" or getinfo(f, "S").what == "C" then
    -- a callable object, or a C function: 5.1 makes coroutines of Lua functions only
    local g = f
    f = function(...) return g(...) end
  end
  local co = create(f)
  proxies[co] = true
  local bound_ctx = M.bound.ctx -- a spawned task's bound holds in its proxies
  local b = bound_ctx[running()]
  if b ~= nil then bound_ctx[co] = b end
  local r = pack(resume(co, ...))
  while true do
    if not r[1] then
      proxies[co] = nil
      local err = r[2]
      if handler then
        local outer_handling = handling
        handling = co
        local _, e = pcall(handler, err) -- a failing handler: its error
        handling = outer_handling
        err = e
      end
      return false, err
    end
    if status(co) == "dead" then
      proxies[co] = nil
      return unpack(r, 1, r.n)
    end
    if r[2] == CALL then
      r = pack(resume(co, S.outer(unpack(r, 3, r.n))))
    else
      -- a plain yield (a bare coroutine.yield() in a task lets others run)
      r = pack(resume(co, yield(unpack(r, 2, r.n))))
    end
  end
end

--- pcall(f, ...): as pcall, and f may wait (suspend the task) on 5.1 too
function S.pcall(f, ...)
  if running() == nil then return pcall(f, ...) end -- the main thread: waits run the loop
  return proxied(nil, f, ...)
end

--- xpcall(f, handler, ...): as xpcall with arguments (5.2+), and f may wait
function S.xpcall(f, handler, ...)
  if running() == nil then
    local args = pack(...)
    return xpcall(function() return f(unpack(args, 1, args.n)) end, handler)
  end
  return proxied(handler, f, ...)
end

-- ===}

return M
