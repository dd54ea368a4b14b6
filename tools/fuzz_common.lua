-- fuzz_common.lua — what the two API fuzzers share (tools/fuzz_api.lua,
-- the libev backend; tools/fuzz_ngx.lua, the OpenResty backend on the mock
-- ngx_lua): their options, the module paths of this checkout, and the run
-- over the seeds with its report. Loaded with dofile from the checkout's
-- root, where the fuzzers run.
local C = {}
local fmt = string.format

--- C.options(name, ops, extra, usage_extra) -> opt: FUZZ_SEED, FUZZ_OPS,
-- FUZZ_SEEDS, FUZZ_VERBOSE, FUZZ_SLOW from the environment, then --seed N,
-- --ops N, --seeds K, --verbose from the command line; extra(flag), if
-- given, takes the fuzzer's own flags (true when it did).
function C.options(name, ops, extra, usage_extra)
  local opt = {
    seed = tonumber(os.getenv("FUZZ_SEED") or "") or os.time(),
    ops = tonumber(os.getenv("FUZZ_OPS") or "") or ops,
    seeds = tonumber(os.getenv("FUZZ_SEEDS") or "") or 1,
    verbose = os.getenv("FUZZ_VERBOSE") == "1",
    slow = tonumber(os.getenv("FUZZ_SLOW") or "") or 1, -- time limits x this (valgrind: 20)
  }
  local i = 1
  while arg and arg[i] do
    local a = arg[i]
    if a == "--seed" or a == "--ops" or a == "--seeds" then
      opt[a:sub(3)] = assert(tonumber(arg[i + 1]), a .. " needs a number"); i = i + 1
    elseif a == "--verbose" or a == "-v" then opt.verbose = true
    elseif not (extra and extra(a)) then
      io.stderr:write(fmt("usage: %s.lua [--seed N] [--ops N] [--seeds K] [--verbose]%s\n",
        name, usage_extra or ""))
      os.exit(2)
    end
    i = i + 1
  end
  return opt
end

--- The watchdog: a count hook that raises once the op running has used
-- its CPU budget (C.budget: an os.clock() time, nil between ops). A Lua
-- hook is per coroutine: each fuzzer installs it where its code runs.
C.budget = nil
function C.watchdog()
  if C.budget and os.clock() > C.budget then
    error("fuzz watchdog: an op used its CPU budget (a spin?)")
  end
end

--- small helpers over math.random (seeded per seed by the fuzzer)
function C.pick(t) if #t > 0 then return t[math.random(#t)] end end
function C.chance(p) return math.random() < p end
function C.show(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end

--- C.weighted(ops) -> pick_op(): ops are { name, weight, fn, ... }
function C.weighted(ops)
  local total = 0
  for _, o in ipairs(ops) do total = total + o[2] end
  return function()
    local x = math.random() * total
    for _, o in ipairs(ops) do x = x - o[2]; if x < 0 then return o end end
    return ops[1]
  end
end

--- C.run_ops(opt, M, pick_op, violate, now, check) -> ops run: up to
-- opt.ops ops while M has no violation, each within its CPU budget (5 s x
-- opt.slow) and 2 s x opt.slow of time, check(op) after each
function C.run_ops(opt, M, pick_op, violate, now, check)
  local i = 0
  while i < opt.ops and not M.viol do
    i = i + 1
    M.opi = i
    local o = pick_op()
    if opt.verbose then io.stderr:write(fmt("[%d] %s\n", i, o[1])) end
    C.budget = os.clock() + 5 * opt.slow
    local t0 = now()
    local ok, err = pcall(o[3])
    C.budget = nil
    if not ok then violate("op %s raised: %s", o[1], C.show(err)) end
    if now() - t0 > 2 * opt.slow then violate("op %s took %.2f s", o[1], now() - t0) end
    if not M.viol then check(o) end
  end
  return i
end

--- C.paths(): this checkout's Lua files, and its build (LCONTEXT_BUILD, or
-- build/ unless LUA_CPATH says otherwise)
function C.paths()
  package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
  if os.getenv("LCONTEXT_BUILD") then
    package.cpath = "./" .. os.getenv("LCONTEXT_BUILD") .. "/?.so;" .. package.cpath
  elseif not os.getenv("LUA_CPATH") then
    package.cpath = "./build/?.so;" .. package.cpath
  end
end

--- C.run_seeds(name, opt, run_seed, now, header, replay_extra): each seed
-- from opt.seed, run_seed(s) -> violation or nil, ops run, op index; prints
-- each failure with its replay command, then the figures and the line
-- `N passed, N failed`, and exits (status 1 if a seed failed).
function C.run_seeds(name, opt, run_seed, now, header, replay_extra)
  local passed, failed, total_ops, t_start = 0, 0, 0, now()
  print(fmt("%s: seed %d, %d seed(s), %d ops each, %s", name, opt.seed, opt.seeds, opt.ops, header))
  for s = opt.seed, opt.seed + opt.seeds - 1 do
    local viol, n, opi = run_seed(s)
    total_ops = total_ops + n
    if viol then
      failed = failed + 1
      print(fmt("FAIL seed %d, op %s: %s", s, tostring(opi), viol))
      print(fmt("  replay: %s tools/%s.lua --seed %d --ops %d%s --verbose", arg[-1] or "lua5.4",
        name, s, n, replay_extra or ""))
    else
      passed = passed + 1
      if opt.verbose then print(fmt("seed %d: ok", s)) end
    end
  end
  local dt = now() - t_start
  print(fmt("%d ops in %.2f s (%.0f ops/s)", total_ops, dt, total_ops / dt))
  print(fmt("%d passed, %d failed", passed, failed))
  os.exit(failed == 0 and 0 or 1)
end

--- C.vsleeps(context, clock, bg, R, n) -> want, got, order: n tasks that
-- each sleep a random whole number of ms (at most 3 s) under the installed
-- virtual clock, recording when they woke (clock:now()) and in which
-- order; C.check_vsleeps(violate, want, got, order) checks that each woke
-- exactly at its time, in order (the vclock ops of both fuzzers)
function C.vsleeps(context, clock, bg, R, n)
  local want, got, order = {}, {}, {}
  for i = 1, n do
    want[i] = R(1, 3000) / 1000 -- whole ms: exact virtual times
    context.go(function()
      if context.sleep(bg, want[i]) then got[i] = clock:now(); order[#order + 1] = i end
    end)
  end
  return want, got, order
end
function C.check_vsleeps(violate, want, got, order)
  for i = 1, #want do
    if got[i] ~= want[i] then
      violate("virtual sleep %d of %.3f s woke at %s", i, want[i], tostring(got[i]))
    end
  end
  for k = 2, #order do
    if want[order[k]] < want[order[k - 1]] then violate("virtual sleeps woke out of order") end
  end
end

return C
