-- backend.lua — which backend the shared spec files run on, for the few
-- places where the two must differ (not a spec itself).
--
-- The backend-neutral spec files (spec/ngx/shared.sh lists them) run under
-- busted on the libev backend, and unchanged inside a real nginx worker on
-- lcontext.ngx (spec/ngx/runner.lua, which sets LCONTEXT_SPEC_BACKEND=ngx).
-- A test that cannot hold in nginx is declared with B.it_libev(name, why,
-- fn): pending there, saying why; B.ngx picks the other expectation where
-- nginx does differently (each such place says why, and README's
-- per-runtime table lists it).
local B = {}

B.ngx = os.getenv("LCONTEXT_SPEC_BACKEND") == "ngx" and type(ngx) == "table"
  and type(ngx.get_phase) == "function"
B.libev = not B.ngx
B.name = B.ngx and "ngx" or "libev"

-- the context module of this backend (in nginx, require "lcontext" gives
-- lcontext.ngx)
B.context = B.ngx and require "lcontext.ngx" or require "lcontext"

-- busted's `it`, `describe`, `pending`: under busted they are not globals
-- (busted puts them in the spec file's environment only), but
-- require("busted") has them; spec/ngx/runner.lua makes them globals.
local function api(name)
  if B.libev then
    local ok, busted = pcall(require, "busted")
    local f = ok and type(busted) == "table" and busted[name]
    if f then return f end
  end
  return _G[name]
end

--- B.it_libev(name, why, fn): `it` on the libev backend; in nginx, a
-- pending test that says why it cannot hold there.
function B.it_libev(name, why, fn)
  if B.ngx then
    api("pending")(name .. " [libev only: " .. why .. "]")
  else
    api("it")(name, fn)
  end
end

--- B.describe_libev(name, why, fn): a whole block, the same way.
function B.describe_libev(name, why, fn)
  if B.ngx then
    api("describe")(name, function() api("pending")("[libev only: " .. why .. "]") end)
  else
    api("describe")(name, fn)
  end
end

--- B.idle(what): nothing of the backend's is left: no task, no wait, no
-- callback armed, no deadline driven (libev: no timer or fd wait). In
-- nginx, light threads end on their next resume: it waits for that, for a
-- second at most.
function B.idle(what)
  local context = B.context
  if B.libev then
    local s = require("lcontext.core").sched_stats()
    if s.tasks ~= 0 or s.timers ~= 0 or s.fd_waits ~= 0 then
      error(("%s: scheduler not idle: tasks=%d timers=%d fd_waits=%d"):format(
        what or "idle", s.tasks, s.timers, s.fd_waits), 2)
    end
    return
  end
  local m
  for _ = 1, 200 do
    m = context.metrics()
    if m.tasks == 0 and m.tasks_waiting == 0 and m.callbacks_pending == 0 then return end
    ngx.sleep(0.005)
  end
  error(("%s: not idle: tasks=%d tasks_waiting=%d callbacks_pending=%d"):format(
    what or "idle", m.tasks, m.tasks_waiting, m.callbacks_pending), 2)
end

--- B.run() -> false: what the specs call context.run() for, on either
-- backend: until every task has ended, every wait in them too, and every
-- callback that can still run has run. libev: context.run(). nginx runs
-- its own loop (context.run is not available there): the light thread of
-- the test sleeps until lcontext.ngx's figures say so (an after_func armed
-- on a context nothing can end does not count, as it does not keep run()
-- alive), for LIMIT seconds at most.
local LIMIT = 30
function B.run()
  local context = B.context
  if B.libev then return context.run() end
  local stop = ngx.now() + LIMIT
  while true do
    local m = context.metrics()
    if m.tasks == 0 and m.tasks_waiting == 0 and m.ngx_callbacks_queued == 0
        and (m.callbacks_pending == 0 or not m.ngx_driver_running) then
      return false
    end
    if ngx.now() > stop then
      error(("B.run: not idle after %d s: tasks=%d tasks_waiting=%d callbacks_pending=%d "
        .. "queued=%d"):format(LIMIT, m.tasks, m.tasks_waiting, m.callbacks_pending,
        m.ngx_callbacks_queued), 2)
    end
    ngx.sleep(0.002)
  end
end

return B
