-- cg_handoff.lua: a scenario of bench/callgrind.sh (instruction counts):
-- 20,000 handoffs between two tasks over an unbuffered channel, as
-- bench.lua times them (a run of 0 handoffs costs about 31.4M here: the
-- difference over 20,000 is the cost of one handoff).
local context = require "lcontext"
local bg = context.background()
local ch = context.channel(0)
local n = 20000
context.go(function() for _ = 1, n do ch:recv(bg) end end)
context.go(function() for i = 1, n do ch:send(bg, i) end end)
context.run()
