-- leaks.lua — finding contexts that were never cancelled.
--
-- Go only tells you "the cancel function is not used on all paths" through
-- `go vet`. lcontext can watch at run time: with context.debug.track(true)
-- it remembers where each context was made, lists those still running past
-- an age (context.debug.leaks), and counts those the garbage collector
-- reclaimed without a cancel (metrics: collected_uncanceled).
local context = require "lcontext"
local bg = context.background()

context.debug.track(true)

local kept = {}

local function handle_request(id)
  local ctx, cancel = context.with_timeout(bg, 60)
  if id % 3 == 0 then
    kept[#kept + 1] = ctx -- forgot cancel(), and kept the context: a leak
    return
  end
  if id % 3 == 1 then
    return -- forgot cancel(), dropped everything: reclaimed, but counted
  end
  cancel() -- the right way
end

local function open_session()
  local s = context.with_cancel(bg) -- a long-lived context, never cancelled
  kept[#kept + 1] = s
end

for id = 1, 9 do handle_request(id) end
open_session()
collectgarbage(); collectgarbage()

local leaks = context.debug.leaks(0)
print(("%d contexts still running:"):format(#leaks))
for _, l in ipairs(leaks) do
  local where = l.site:match("\n%s*([^\n]-examples/leaks%.lua:%d+: in [^\n]*)")
  print(("  %-6s age %.3f s  deadline %s  made at %s"):format(l.kind, l.age,
    l.deadline and "yes" or "no ", where or "?"))
end
local m = context.metrics()
print(("collected without a cancel: %d"):format(m.collected_uncanceled))
context.debug.track(false)
assert(#leaks == 4 and m.collected_uncanceled >= 3)
