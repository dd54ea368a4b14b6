-- cqueues_host.lua — lcontext inside a cqueues controller: cqueues owns
-- the main loop, and lcontext's tasks, sleeps, deadlines and fd waits run
-- beside cqueues' own coroutines. (README, "I/O", "Foreign loops".)
--
-- The bridge is one cqueues coroutine that calls context.step(0), then
-- waits with cqueues.poll on a pollable object made of lcontext's
-- answers: :pollfd() is context.pollfd(), :events() "r", and :timeout()
-- context.timeout() (seconds until lcontext needs a step; nil: none). A
-- condition variable wakes it early when a cqueues coroutine starts
-- lcontext work (context.go from there: `lcontext_go` below). It ends when
-- lcontext has no work left, so the controller's loop ends with both.
--
-- Run: lua5.4 tools/with_paths.lua examples/cqueues_host.lua   (Debian: lua-cqueues)
local cqueues = require "cqueues"
local condition = require "cqueues.condition"
local context = require "lcontext"

local bg = context.background()
local mono = cqueues.monotime
local start = mono()
local function ms() return (mono() - start) * 1000 end
local function say(fmt, ...) print(("%4.0f ms  " .. fmt):format(ms(), ...)) end

local cq = cqueues.new()

-- {=== the bridge
local wake = condition.new()
local lcontext_source = {
  pollfd = function() return context.pollfd() end,
  events = function() return "r" end,
  timeout = function() return context.timeout() end,
}
local function lcontext_go(fn, ...) -- context.go from a cqueues coroutine
  local t = context.go(fn, ...)
  wake:signal()
  return t
end
cq:wrap(function()
  while context.step(0) do
    cqueues.poll(lcontext_source, wake)
  end
end)
-- ===}

-- a socket pair: a cqueues coroutine writes, an lcontext task waits
local a, b = require("cqueues.socket").pair()
local bfd = b:pollfd()

-- cqueues' own work: a coroutine ticking every 30 ms, 6 times; at the 3rd
-- it writes to the socket, and at the 4th starts an lcontext task
local ticks = 0
cq:wrap(function()
  for i = 1, 6 do
    cqueues.sleep(0.03)
    ticks = i
    say("cqueues tick %d", i)
    if i == 3 then a:write("ping") a:flush() end
    if i == 4 then
      lcontext_go(function() say("task started from a cqueues coroutine") end)
    end
  end
end)

-- lcontext's work: a request with a 250 ms budget
local req, cancel = context.with_timeout(bg, 0.25)

local reader = context.go(function(ctx)
  local ok, err = context.wait_fd(ctx, bfd, "r")
  if not ok then return nil, err end
  local data = b:read(4) -- ready: cqueues' read returns without yielding
  say("task: socket readable, read %q", data)
  return data
end, req)

context.go(function(ctx)
  local ok = context.sleep(ctx, 0.03)
  say("task: slept 30 ms: %s", tostring(ok))
end, req)

local slow = context.go(function(ctx)
  local ok, err = context.sleep(ctx, 5)
  say("task: 5 s sleep stopped by the deadline: %s", tostring(err))
  return ok, err
end, req)

context.go(function()
  local err = req:done()
  say("request done: %s", tostring(err))
  cancel()
end)

assert(cq:loop()) -- the controller's loop; lcontext runs from the bridge
a:close()
b:close()

local _, serr = slow:wait() -- ended: returns at once
local elapsed = ms()
say("cq:loop returned: %d cqueues ticks, reader got %q, slow: %s", ticks,
  tostring(reader:wait()), tostring(serr))
assert(ticks == 6 and reader:wait() == "ping" and serr == context.deadline_exceeded)
assert(elapsed >= 250, "the deadline fired early")
print("cqueues_host: ok")
