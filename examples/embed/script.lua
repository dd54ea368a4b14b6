-- script.lua — run by examples/embed/host.c on the host's own libev loop.
-- It starts tasks and returns at once: the host's ev_run drives them.
local context = require "lcontext"

local bg = context.background()
local log = {}
local function say(fmt, ...)
  local line = string.format(fmt, ...)
  log[#log + 1] = line
  print("script: " .. line)
end

local start = context.now()

-- a request with a 50 ms budget, and two steps inside it
local req, cancel = context.with_timeout(bg, 0.05)

local fast = context.go(function(ctx)
  local ok = context.sleep(ctx, 0.01)
  say("fast step finished: %s", tostring(ok))
  return ok
end, req)

local slow = context.go(function(ctx)
  local ok, err = context.sleep(ctx, 1)
  say("slow step stopped by the request deadline: %s", tostring(err))
  return ok, err
end, req)

context.go(function()
  local err = req:done()
  say("request done after %.0f ms: %s", (context.now() - start) * 1000, tostring(err))
  cancel()
end)

-- the host drives its own loop: there is no fd for a foreign loop to poll
local pollfd_ok, pollfd_err = pcall(context.pollfd)
say("context.pollfd() here: %s", tostring(pollfd_err))

function check()
  local f = fast:wait()
  local s, serr = slow:wait()
  local elapsed = context.now() - start
  return f == true and s == nil and serr == context.deadline_exceeded
    and req:err() == context.deadline_exceeded and #log == 4
    and not pollfd_ok and tostring(pollfd_err):find("the host owns that loop", 1, true) ~= nil
    and elapsed >= 0.05 and elapsed < 5
end
