-- cg_timeout_cancel.lua: a scenario of bench/callgrind.sh (instruction counts).
local context = require "lcontext"
local bg = context.background()
local hold = {}
for i = 1, 20000 do
  local c = context.with_timeout(bg, 100 + i * 1e-3)
  hold[i] = c
  context.after_func(c, function() end)
end
for i = 1, 200000 do local c, cancel = context.with_timeout(bg, 10); cancel() end
