-- cg_parked_cancel.lua: a scenario of bench/callgrind.sh (instruction counts).
local context = require "lcontext"
local bg = context.background()
local N = 20000
local ctx, cancel = context.with_cancel(bg)
for i = 1, N do context.go(function() ctx:done() end) end
context.run("nowait")
cancel()
context.run()
