-- cg_sleep.lua: a scenario of bench/callgrind.sh (instruction counts).
local context = require "lcontext"
local bg = context.background()
for i = 1, 20000 do context.go(function() context.sleep(bg, 0.001) end) end
context.run()
