-- luv_host.lua — lcontext inside a luv (libuv) program: luv owns the main
-- loop, and lcontext's tasks, sleeps, deadlines and fd waits run beside
-- luv's own timers. (README, "I/O", "Foreign loops".)
--
-- The bridge is three luv handles:
--   * a poll handle on context.pollfd(): readable when an fd a task waits
--     on is ready; its callback calls context.step(0);
--   * a one-shot timer, re-armed from context.timeout() (seconds until
--     lcontext needs a step: a timer, a deadline, or 0 when work is ready);
--   * a prepare handle, which luv runs before it blocks: the place to ask
--     context.timeout(), since any luv callback may have started a task.
-- The poll handle keeps luv's loop alive only while lcontext has work, so
-- uv.run() returns once both sides are done.
--
-- Run: lua5.4 tools/with_paths.lua examples/luv_host.lua   (Debian: lua-luv)
local uv = require "luv"
local context = require "lcontext"

local bg = context.background()
local start = uv.hrtime()
local function ms() return (uv.hrtime() - start) / 1e6 end
local function say(fmt, ...) print(("%4.0f ms  " .. fmt):format(ms(), ...)) end

-- {=== the bridge
local function drive_lcontext_from_luv()
  local poll = uv.new_poll(context.pollfd())
  local timer = uv.new_timer()
  local prepare = uv.new_prepare()
  local function step()
    if context.step(0) then poll:ref() else poll:unref() end
  end
  poll:start("r", step)
  prepare:start(function()
    local t = context.timeout() -- nil: nothing timed (fds only, or no work)
    if t == nil then
      timer:stop()
    else
      timer:start(math.ceil(t * 1000), 0, step) -- ms, rounded up: never early
    end
  end)
  prepare:unref() -- the prepare alone keeps nothing alive
  return function() -- closes the bridge
    poll:close(); timer:close(); prepare:close()
  end
end
-- ===}

-- a pipe: luv writes into it, an lcontext task waits on its read end
local pipe = uv.pipe()

-- luv's own work: a tick every 30 ms, 6 of them; the 3rd writes to the pipe
local ticks = 0
local ticker = uv.new_timer()
ticker:start(30, 30, function()
  ticks = ticks + 1
  say("luv tick %d", ticks)
  if ticks == 3 then uv.fs_write(pipe.write, "ping", -1) end
  if ticks == 6 then ticker:close() end
end)

-- lcontext's work: a request with a 250 ms budget
local req, cancel = context.with_timeout(bg, 0.25)

local reader = context.go(function(ctx)
  local ok, err = context.wait_fd(ctx, pipe.read, "r")
  if not ok then return nil, err end
  local data = uv.fs_read(pipe.read, 4, -1)
  say("task: pipe readable, read %q", data)
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

local close_bridge = drive_lcontext_from_luv()
uv.run() -- luv's loop; lcontext runs from its callbacks
close_bridge()
uv.run() -- (the closes)
uv.fs_close(pipe.read)
uv.fs_close(pipe.write)

local _, serr = slow:wait() -- ended: returns at once
local elapsed = ms()
say("uv.run returned: %d luv ticks, reader got %q, slow: %s", ticks, tostring(reader:wait()),
  tostring(serr))
assert(ticks == 6 and reader:wait() == "ping" and serr == context.deadline_exceeded)
assert(elapsed >= 250, "the deadline fired early")
print("luv_host: ok")
