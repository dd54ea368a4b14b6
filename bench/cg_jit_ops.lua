-- bench/cg_jit_ops.lua OP N: run N iterations of one of the loops that
-- `make bench` times, for bench/callgrind_jit.sh (instructions per
-- operation on LuaJIT: the slope between two values of N, so start-up and
-- compilation cancel out). OP: wc (with_cancel + cancel), wt (with_timeout
-- + cancel), wt100k (the same with 100,000 other deadlines pending), err,
-- errt (err with a deadline), is_done, deadline, remaining, value (a hit at
-- depth 10), c_api (a classic C call), alloc (the two userdata of
-- with_cancel, through bench_alloc).
local op, N = arg[1], tonumber(arg[2])
local context = require "lcontext"
local bg = context.background()
local with_cancel, with_timeout, with_value = context.with_cancel, context.with_timeout, context.with_value
local sink
local loops = {}
function loops.wc(n) for _ = 1, n do local c, k = with_cancel(bg); k(); sink = c end end
function loops.wt(n) for _ = 1, n do local c, k = with_timeout(bg, 3600); k(); sink = c end end
local pending
function loops.wt100k(n)
  if not pending then
    pending = {}
    for i = 1, 100000 do local _, k = with_timeout(bg, 3600); pending[i] = k end
    collectgarbage()
  end
  return loops.wt(n)
end
local live, timed = with_cancel(bg), with_timeout(bg, 3600)
function loops.err(n) local x = 0; for _ = 1, n do if live:err() then x = x + 1 end end sink = x end
function loops.errt(n) local x = 0; for _ = 1, n do if timed:err() then x = x + 1 end end sink = x end
function loops.is_done(n) local x = 0; for _ = 1, n do if live:is_done() then x = x + 1 end end sink = x end
function loops.deadline(n) local v; for _ = 1, n do v = timed:deadline() end sink = v end
function loops.remaining(n) local v; for _ = 1, n do v = timed:remaining() end sink = v end
local deep, k1 = bg, nil
for d = 1, 10 do
  local key = context.key("k" .. d)
  k1 = k1 or key
  deep = with_value(deep, key, d)
end
function loops.value(n) local v; for _ = 1, n do v = deep:value(k1) end sink = v end
function loops.c_api(n) local v; local f = context.background; for _ = 1, n do v = f() end sink = v end
function loops.alloc(n)
  local hook = require("lcontext.core").bench_alloc
  local a, b
  for _ = 1, n do a = hook("ctx"); b = hook("cancel") end
  sink = a; sink = b
end
assert(loops[op], "unknown op " .. tostring(op))
if op == "wt100k" then loops.wt100k(0) end
loops[op](N)
