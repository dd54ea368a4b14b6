-- poll_script.lua — run by examples/embed/poll_host.c, whose loop is
-- poll(2): lcontext runs libev's default loop, and the host drives it
-- through lcontext_pollfd / lcontext_timeout_ms / lcontext_step. The script
-- starts tasks and returns at once. host_fd (the read end of the host's
-- pipe) and host_read(fd) come from the host.
local context = require "lcontext"

local bg = context.background()
local log = {}
local function say(fmt, ...)
  local line = string.format(fmt, ...)
  log[#log + 1] = line
  print("script: " .. line)
end

local start = context.now()
local function ms() return (context.now() - start) * 1000 end

-- a request with a 250 ms budget
local req, cancel = context.with_timeout(bg, 0.25)

-- waits for the host's event on its pipe (the host writes at its 3rd tick)
local reader = context.go(function(ctx)
  local ok, err = context.wait_fd(ctx, host_fd, "r")
  if not ok then return nil, err end
  local byte = host_read(host_fd)
  say("host's pipe readable after %.0f ms: %q", ms(), byte)
  return byte
end, req)

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
  say("request done after %.0f ms: %s", ms(), tostring(err))
  cancel()
end)

function check()
  local elapsed = context.now() - start
  local s, serr = slow:wait()
  return reader:wait() == "!" and fast:wait() == true and s == nil
    and serr == context.deadline_exceeded and #log == 4
    and elapsed >= 0.25 and elapsed < 5
end
