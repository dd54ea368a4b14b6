-- bench/report.lua: prints the table of `make bench` from the raw figures.
--
--   lua5.4 bench/report.lua GO_TSV LUA_TSV [JIT_TSV [JIT_NOFFI_TSV]]
--
-- GO_TSV holds bench/go's lines (`name<TAB>value<TAB>unit`); it may be
-- missing or empty when Go is not installed. LUA_TSV holds bench.lua's lines
-- (`impl<TAB>name<TAB>value<TAB>unit`, impl = lcontext, plain or floor).
-- Prints the figures side by side with ratios, then every target with its
-- verdict: "ok", "MISS", or "n/a" when a figure it needs was not measured.

local go_file, lua_file = arg[1], arg[2]
-- optional: bench.lua's lines on LuaJIT, through the FFI path (JIT_TSV)
-- and with LCONTEXT_NO_FFI=1 (JIT_NOFFI_TSV)
local jit_file, jit_noffi_file = arg[3], arg[4]

local data = { lcontext = {}, go = {}, plain = {}, floor = {} }

local function read_lines(path, f)
  if not path then return end
  local fh = io.open(path, "r")
  if not fh then return end
  for line in fh:lines() do
    local fields = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = field end
    f(fields)
  end
  fh:close()
end

read_lines(go_file, function(t)
  local v = tonumber(t[2])
  if #t == 3 and v then data.go[t[1]] = v end
end)
read_lines(lua_file, function(t)
  local v = tonumber(t[3])
  if #t == 4 and v and data[t[1]] then data[t[1]][t[2]] = v end
end)

local FIGURES = {
  { "with_cancel_cancel",     "with_cancel + cancel",          "ns" },
  { "with_timeout_cancel",    "with_timeout + cancel",         "ns" },
  { "with_timeout_cancel_1m", "  same, 1M deadlines pending",  "ns" },
  { "err_live",               "ctx:err() on a live context",   "ns" },
  { "value_depth10",          "value() hit at depth 10",       "ns" },
  { "cancel_100k_children",   "cancel root of 100k children",  "ms" },
  { "bytes_per_ctx",          "bytes per ctx + cancel",        "B" },
  { "bytes_per_ctx_only",     "bytes per ctx alone",           "B" },
  { "chan_handoff_unbuffered", "channel handoff, unbuffered",  "ns" },
  { "chan_handoff_buffered",  "channel handoff, capacity 128", "ns" },
  { "sem_acquire_release",    "semaphore acquire + release",   "ns" },
}

local FLOORS = {
  { "loop",             "empty loop iteration",                 "ns" },
  { "c_call",           "one C call, one argument",             "ns" },
  { "method_call",      "one method call to C (s:len())",       "ns" },
  { "alloc_ctx_cancel", "alloc ctx + cancel userdata (2 calls)", "ns" },
  { "pair_call",        "pair floor: a, b = pair(p); b()",      "ns" },
  { "bytes_ctx_cancel", "bytes of ctx + cancel userdata",       "B" },
}

local function fmt(v, unit)
  if v == nil then return "-" end
  if unit == "ms" then return string.format("%.2f ms", v) end
  if unit == "B" then return string.format("%.0f B", v) end
  if v >= 100 then return string.format("%.0f ns", v) end
  return string.format("%.1f ns", v)
end

local function ratio(a, b)
  if a == nil or b == nil or b == 0 then return "-" end
  return string.format("%.2fx", a / b)
end

local function print_table(header, rows)
  local w = {}
  for _, r in ipairs({ header, table.unpack(rows) }) do
    for i, c in ipairs(r) do w[i] = math.max(w[i] or 0, #c) end
  end
  local function line(r)
    local out = {}
    for i, c in ipairs(r) do
      out[i] = i == 1 and c .. string.rep(" ", w[i] - #c) or string.rep(" ", w[i] - #c) .. c
    end
    print((table.concat(out, " | "):gsub("%s+$", "")))
  end
  line(header)
  local sep = {}
  for i = 1, #w do sep[i] = string.rep("-", w[i]) end
  print(table.concat(sep, "-|-"))
  for _, r in ipairs(rows) do line(r) end
end

-- {==== targets ======================================================
-- Each check: a label, its kind ("absolute": a fixed limit; "vs Go",
-- "vs floor": a ratio to Go's figure or to the floor measured in the same
-- run; "scaling": a ratio to lcontext's own figure at a smaller size), and
-- a function returning the measured quantity and the limit (or nil when a
-- figure is missing).

local L, G, F = data.lcontext, data.go, data.floor

local function abs_limit(name, limit)
  return function() return L[name], limit end
end
local function times(name, base_tbl, base_name, k)
  return function()
    local v, b = L[name], base_tbl[base_name]
    if v == nil or b == nil then return nil end
    return v / b, k
  end
end
local function floor_alloc_plus_calls()
  return function()
    local v, a = L.with_cancel_cancel, F.alloc_ctx_cancel
    if v == nil or a == nil then return nil end
    return v / a, 1.2
  end
end

local CHECKS = {
  { "with_cancel + cancel <= 150 ns",              "absolute", abs_limit("with_cancel_cancel", 150), "ns" },
  { "with_cancel + cancel <= 1.2x Go",             "vs Go",    times("with_cancel_cancel", G, "with_cancel_cancel", 1.2), "x" },
  { "with_cancel + cancel <= 1.2x alloc floor",    "vs floor", floor_alloc_plus_calls(), "x" },
  { "with_timeout + cancel <= 200 ns",             "absolute", abs_limit("with_timeout_cancel", 200), "ns" },
  { "with_timeout + cancel <= 0.35x Go",           "vs Go",    times("with_timeout_cancel", G, "with_timeout_cancel", 0.35), "x" },
  { "1M pending <= 1.3x empty case",               "scaling",  times("with_timeout_cancel_1m", L, "with_timeout_cancel", 1.3), "x" },
  { "err() <= 30 ns",                              "absolute", abs_limit("err_live", 30), "ns" },
  { "err() <= 1.5x Go",                            "vs Go",    times("err_live", G, "err_live", 1.5), "x" },
  { "err() <= 1.5x C-call floor",                  "vs floor", times("err_live", F, "c_call", 1.5), "x" },
  { "value depth 10 <= 1.2x Go",                   "vs Go",    times("value_depth10", G, "value_depth10", 1.2), "x" },
  { "cancel 100k children <= 0.8x Go",             "vs Go",    times("cancel_100k_children", G, "cancel_100k_children", 0.8), "x" },
  { "bytes per ctx alone <= 128",                  "absolute", abs_limit("bytes_per_ctx_only", 128), "B" },
  { "bytes per ctx + cancel <= 200",               "absolute", abs_limit("bytes_per_ctx", 200), "B" },
  -- issue 15's Lua 5.4 targets, against floors measured in this run
  { "err() <= 1.1x method floor",                  "vs floor", times("err_live", F, "method_call", 1.1), "x" },
  { "with_cancel + cancel <= 1.15x pair floor",    "vs floor", times("with_cancel_cancel", F, "pair_call", 1.15), "x" },
  { "with_timeout + cancel <= 1.5x pair floor",    "vs floor", times("with_timeout_cancel", F, "pair_call", 1.5), "x" },
  { "value depth 10 <= 1.0x Go",                   "vs Go",    times("value_depth10", G, "value_depth10", 1.0), "x" },
  { "channel handoff <= 2x Go's unbuffered",       "vs Go",    times("chan_handoff_unbuffered", G, "chan_handoff_unbuffered", 2), "x" },
  { "semaphore acquire+release <= 1.5x 2 method calls", "vs floor", function()
    local v, m = L.sem_acquire_release, F.method_call
    if v == nil or m == nil then return nil end
    return v / (2 * m), 1.5
  end, "x" },
}

-- ====}

local have_go = next(data.go) ~= nil
local have_lc = next(data.lcontext) ~= nil
local have_plain = next(data.plain) ~= nil

print()
print("lcontext benchmark (medians of 5 runs; ratios from this run)")
if not have_go then print("  Go: not measured (go not installed, or its run failed): Go columns are empty") end
if not have_lc then print("  lcontext: not measured (module missing or failed to load): lcontext columns are empty") end
if not have_plain then print("  plain Lua: not measured") end
print()

local rows = {}
for _, f in ipairs(FIGURES) do
  local name, label, unit = f[1], f[2], f[3]
  local lc, go, pl = L[name], G[name], data.plain[name]
  rows[#rows + 1] = { label, fmt(lc, unit), fmt(go, unit), fmt(pl, unit), ratio(lc, go), ratio(lc, pl) }
end
print_table({ "figure", "lcontext", "Go", "plain Lua", "lcontext/Go", "lcontext/plain" }, rows)

print()
rows = {}
for _, f in ipairs(FLOORS) do
  if F[f[1]] then rows[#rows + 1] = { f[2], fmt(F[f[1]], f[3]) } end
end
if #rows > 0 then
  print_table({ "floor (Lua 5.4, this machine)", "value" }, rows)
  print()
end

rows = {}
local misses = 0
for _, c in ipairs(CHECKS) do
  local v, limit = c[3]()
  local measured, verdict
  if v == nil then
    measured, verdict = "-", "n/a"
  else
    if c[4] == "x" then measured = string.format("%.2fx", v)
    else measured = fmt(v, c[4]) end
    verdict = v <= limit and "ok" or "MISS"
    if verdict == "MISS" then misses = misses + 1 end
  end
  rows[#rows + 1] = { c[1], c[2], measured, verdict }
end
print_table({ "target (lcontext)", "kind", "measured", "verdict" }, rows)
print()
if have_lc then
  print(string.format("%d target(s) missed. Single-run ratios drift; rerun before drawing conclusions.", misses))
end

-- {==== LuaJIT ========================================================
-- The same figures on LuaJIT 2.1 (build-jit/): through the FFI path
-- (lua/lcontext/ffi.lua), and through the classic C functions
-- (LCONTEXT_NO_FFI=1), beside Lua 5.4 and Go; then issue 15's LuaJIT
-- targets, "met" or "short".

local J, JF, JC = {}, {}, {}
read_lines(jit_file, function(t)
  local v = tonumber(t[3])
  if #t == 4 and v then
    if t[1] == "lcontext" then J[t[2]] = v elseif t[1] == "floor" then JF[t[2]] = v end
  end
end)
read_lines(jit_noffi_file, function(t)
  local v = tonumber(t[3])
  if #t == 4 and v and t[1] == "lcontext" then JC[t[2]] = v end
end)

if next(J) ~= nil or next(JC) ~= nil then
  print()
  print(("LuaJIT 2.1 (FFI path: %s)"):format(J.ffi_path == 1 and "on" or
    (J.ffi_path == 0 and "OFF: the FFI column is the classic path" or "-")))
  print()
  local JFIG = {
    { "with_cancel_cancel",       "with_cancel + cancel",         "ns" },
    { "with_timeout_cancel",      "with_timeout + cancel",        "ns" },
    { "with_timeout_cancel_100k", "  same, 100k deadlines pending", "ns" },
    { "with_timeout_cancel_1m",   "  same, 1M deadlines pending", "ns" },
    { "err_live",                 "ctx:err() on a live context",  "ns" },
    { "is_done_live",             "ctx:is_done() on a live context", "ns" },
    { "value_depth10",            "value() hit at depth 10",      "ns" },
    { "cancel_100k_children",     "cancel root of 100k children", "ms" },
    { "bytes_per_ctx",            "bytes per ctx + cancel",       "B" },
    { "bytes_per_ctx_only",       "bytes per ctx alone",          "B" },
  }
  rows = {}
  for _, f in ipairs(JFIG) do
    local name, label, unit = f[1], f[2], f[3]
    rows[#rows + 1] = { label, fmt(J[name], unit), fmt(JC[name], unit), fmt(L[name], unit),
      fmt(G[name], unit), ratio(J[name], G[name]), ratio(J[name], JC[name]) }
  end
  print_table({ "figure", "LuaJIT FFI", "LuaJIT C API", "Lua 5.4", "Go", "FFI/Go", "FFI/C API" }, rows)
  print()
  rows = {}
  for _, f in ipairs({
    { "c_api_call", "one classic C call (lua_CFunction)", "ns" },
    { "alloc_ctx_cancel", "alloc ctx + cancel userdata (2 classic calls)", "ns" },
    { "bytes_ctx_cancel", "bytes of ctx + cancel userdata", "B" },
  }) do
    if JF[f[1]] then rows[#rows + 1] = { f[2], fmt(JF[f[1]], f[3]) } end
  end
  if #rows > 0 then
    print_table({ "floor (LuaJIT, this machine)", "value" }, rows)
    print()
  end
  local function vs(name, base, k)
    return function()
      local v, b = J[name], base[name]
      if v == nil or b == nil or b == 0 then return nil end
      return v / b, k
    end
  end
  local JCHECKS = {
    { "err() <= 3 ns", function() return J.err_live, 3 end, "ns" },
    { "is_done() <= 3 ns", function() return J.is_done_live, 3 end, "ns" },
    { "with_cancel + cancel <= 1.0x Go", vs("with_cancel_cancel", G, 1.0), "x" },
    { "with_timeout + cancel <= 0.5x Go", vs("with_timeout_cancel", G, 0.5), "x" },
    { "100k pending <= 1.3x empty case", function()
      local v, b = J.with_timeout_cancel_100k, J.with_timeout_cancel
      if v == nil or b == nil then return nil end
      return v / b, 1.3
    end, "x" },
    { "cancel 100k children <= 0.5x Go", vs("cancel_100k_children", G, 0.5), "x" },
    { "bytes per ctx + cancel <= 200", function() return J.bytes_per_ctx, 200 end, "B" },
  }
  rows = {}
  local short = 0
  for _, c in ipairs(JCHECKS) do
    local v, limit = c[2]()
    local measured, verdict
    if v == nil then
      measured, verdict = "-", "n/a"
    else
      measured = c[3] == "x" and string.format("%.2fx", v) or fmt(v, c[3])
      verdict = v <= limit and "met" or "short"
      if verdict == "short" then short = short + 1 end
    end
    rows[#rows + 1] = { c[1], measured, verdict }
  end
  print_table({ "target (LuaJIT, issue 15)", "measured", "verdict" }, rows)
  print()
  print(string.format("%d LuaJIT target(s) short. Single-run ratios drift; rerun before drawing conclusions.", short))
end
-- ====}
