--- abort_handlers.lua — test-only handlers for spec/ngx/run.sh (locations in
-- spec/ngx/abort.conf, included in the example's server block): requests
-- that die while their light threads wait in lcontext, and a view of each
-- worker's figures once the garbage collector has run. Not part of the
-- example: examples/openresty/ is what a user copies.
local context = require "lcontext.ngx"

local ngx = ngx
local fmt, concat = string.format, table.concat

local H = {}

local function dict() return ngx.shared.demo end

-- Every way a light thread can wait in lcontext, on contexts below `c`
-- (a deadline of a few seconds: the request dies long before), plus
-- after_funcs. Returns the tasks.
local WAYS = { "done", "sleep", "select", "task", "group" }

-- every context these handlers make, while it lives (weak keys): once the
-- requests are gone and the collector has run, none may be left
local tracked = setmetatable({}, { __mode = "k" })
function H.track(...)
  for i = 1, select("#", ...) do
    local c = select(i, ...)
    if getmetatable(c) == "context" then tracked[c] = true end
  end
  return ...
end
local function tracked_count()
  local n = 0
  for _ in pairs(tracked) do n = n + 1 end
  return n
end

local function start_waits(c, how, tasks)
  local function add(t) tasks[#tasks + 1] = t end
  if how == "done" or how == "all" then
    add(context.go(function() return c:done() end))
  end
  H.track(c)
  if how == "sleep" or how == "all" then
    add(context.go(function() return context.sleep(c, 4) end))
  end
  if how == "select" or how == "all" then
    local inner = context.go(function() return context.sleep(c, 4) end)
    add(inner)
    add(context.go(function() return context.select(c, inner, 4) end))
  end
  if how == "task" or how == "all" then
    local inner = context.go(function() return c:done() end)
    add(inner)
    add(context.go(function() return inner:wait() end))
  end
  if how == "group" or how == "all" then
    add(context.go(function()
      local g, gctx = context.group(c, 2)
      H.track(gctx)
      g:go(function(gctx) return context.sleep(gctx, 4) end)
      g:go(function(gctx) return gctx:done() end)
      g:go(function(gctx) return context.select(gctx, 4) end) -- waits for a slot
      return g:wait()
    end))
  end
  -- after_funcs: on the deadline context, and on a child only a cancel ends
  context.after_func(c, function() end)
  context.after_func(H.track((c:with_cancel())), function() end)
end

-------------------------------------------------------------------------------
-- /t/hold?how=WAY&abort=1|0&id=ID: light threads wait (WAY: done, sleep,
-- select, task, group, all) until the client goes away. abort=1: the
-- request's context is cancelled by ngx.on_abort (from_request), and every
-- wait ends the ordinary way. abort=0: no on_abort handler, so ngx_lua
-- (lua_check_client_abort on) ends the request and kills its light threads
-- mid-wait; they also wait on a context only a cancel ends, below
-- background, that nothing will ever cancel.
-------------------------------------------------------------------------------
function H.hold()
  local how = ngx.var.arg_how or "all"
  local abort = ngx.var.arg_abort ~= "0"
  local ctx = H.track(context.from_request({ timeout = 5, abort = abort }))
  local c = H.track((ctx:with_timeout(4)))
  local tasks = {}
  start_waits(c, how, tasks)
  local cancel_orphan
  if not abort then
    local orphan
    orphan, cancel_orphan = context.background():with_cancel()
    H.track(orphan)
    tasks[#tasks + 1] = context.go(function() return orphan:done() end)
    context.after_func(orphan, function() end)
  end
  dict():incr("hold_started", 1, 0)
  -- the entry thread waits too, for the first task or the end of c
  context.select(c, tasks[1])
  c:done()
  -- not killed after all: nginx can miss a close that came before the
  -- handler began to watch for it (then c's deadline ended the waits)
  if cancel_orphan then cancel_orphan() end
  for i = 1, #tasks do tasks[i]:wait() end
  dict():incr("hold_ended:" .. (abort and 1 or 0), 1, 0)
  if ctx:cause() == "client aborted" then return ngx.exit(499) end
  ngx.say("ended: ", tostring(ctx:cause()))
end

-------------------------------------------------------------------------------
-- /t/exit: light threads wait every way; after a few ms the entry thread
-- calls ngx.exit, which kills them mid-wait.
-------------------------------------------------------------------------------
function H.exit()
  local ctx = H.track(context.from_request({ timeout = 5 }))
  local c = H.track((ctx:with_timeout(4)))
  local tasks = {}
  start_waits(c, "all", tasks)
  local orphan = H.track((context.background():with_timeout(3)))
  tasks[#tasks + 1] = context.go(function() return orphan:done() end)
  context.sleep(ctx, 0.005)
  ngx.say("exit with ", #tasks, " light threads waiting")
  return ngx.exit(ngx.HTTP_OK)
end

-------------------------------------------------------------------------------
-- /t/body: light threads wait, then the entry thread reads the request
-- body; a client that sends less than its Content-Length is cut off by
-- nginx's client_body_timeout (abort.conf: 100 ms), which ends the request.
-------------------------------------------------------------------------------
function H.body()
  local ctx = context.from_request({ timeout = 5, abort = false })
  H.track(ctx)
  local c = H.track((ctx:with_timeout(4)))
  local tasks = {}
  start_waits(c, "all", tasks)
  dict():incr("body_started", 1, 0)
  ngx.req.read_body()
  ngx.say("body read")
end

-- log_by_lua of /t/body: the request's status, counted (nginx answers a
-- body timeout by closing the connection: the client sees no status)
function H.body_log()
  context.finish_request()
  dict():incr("body_status:" .. tostring(ngx.status), 1, 0)
end

-------------------------------------------------------------------------------
-- /t/metrics?wait=S: this worker's figures as JSON, taken once they are
-- idle (or after S seconds, 3 by default): each try first runs two full
-- garbage collections, so that the waits of killed light threads are
-- released (their gc guards), then waits 20 ms (ngx.sleep: not lcontext).
-------------------------------------------------------------------------------
local function idle(m)
  return m.live_contexts == 0 and m.tasks == 0 and m.tasks_waiting == 0 and m.callbacks_pending == 0
    and m.ngx_watches == 0 and m.ngx_sema_waiters == 0 and not m.ngx_driver_running
    and m.timers_pending == 0
end

local FIELDS = { "live_contexts", "tasks", "tasks_waiting", "callbacks_pending", "ngx_watches",
  "ngx_sema_waiters", "ngx_driver_running", "timers_pending", "active", "ngx_tasks_started",
  "ngx_wait_passes", "ngx_driver_passes", "ngx_yields_forced", "ngx_driver_failures",
  "ngx_watch_errors" }

function H.metrics()
  local stop = ngx.now() + (tonumber(ngx.var.arg_wait) or 3)
  local m, tries
  for i = 1, 1000 do
    tries = i
    collectgarbage()
    collectgarbage()
    m = context.metrics()
    m.live_contexts = tracked_count()
    if idle(m) then break end
    ngx.sleep(0.02)
    ngx.update_time()
    if ngx.now() > stop then break end
  end
  local out = { fmt('"worker":%d', ngx.worker.id()), fmt('"pid":%d', ngx.worker.pid()),
    fmt('"settled":%s', tostring(idle(m))), fmt('"tries":%d', tries) }
  for _, k in ipairs(FIELDS) do
    local v = m[k]
    if type(v) == "number" then
      out[#out + 1] = fmt('"%s":%d', k, v)
    elseif type(v) == "boolean" then
      out[#out + 1] = fmt('"%s":%s', k, tostring(v))
    else
      out[#out + 1] = fmt('"%s":null', k)
    end
  end
  ngx.header.content_type = "application/json"
  ngx.say("{", concat(out, ","), "}")
end

H.WAYS = WAYS
return H
