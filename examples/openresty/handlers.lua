--- handlers.lua — lcontext in OpenResty: the handlers of examples/openresty/nginx.conf.
--
-- Each public function is a content handler. Every request gets its
-- context from context.from_request(): the deadline its caller sent
-- (x-request-timeout-ms or grpc-timeout, capped by our own budget), and a
-- cancel when the client goes away. Everything the handler starts for the
-- request (light threads, upstream calls, retries) hangs below it and stops
-- with it. spec/ngx/run.sh runs these handlers in a real nginx.
local context = require "lcontext.ngx"
local trace = require "lcontext.trace"

local ngx = ngx
local concat, fmt = table.concat, string.format

local H = {}

local function dict() return ngx.shared.demo end

-------------------------------------------------------------------------------
-- An upstream call over a cosocket, bounded by ctx: the socket's timeout is
-- what is left of ctx, and (unless propagate is false) the deadline travels
-- with the request (x-request-timeout-ms, grpc-timeout, traceparent), so
-- that the upstream stops when we stop waiting.
-------------------------------------------------------------------------------
-- A cosocket's "timeout" set from ctx's deadline is that deadline: report it
-- as ctx's error (nginx's timers may fire a few ms before the deadline, by
-- lcontext's clock: wait for it).
local function io_error(ctx, what, err)
  if err == "timeout" then
    local left = ctx:remaining()
    if left and left < 0.05 then
      ctx:done()
      return ctx:err()
    end
  end
  return ctx:err() or (what .. ": " .. tostring(err))
end

local function http_get(ctx, path, propagate)
  local ms, err = context.timeout_ms(ctx, 10)
  if not ms then return nil, err end
  local sock = ngx.socket.tcp()
  sock:settimeout(ms)
  local ok, cerr = sock:connect("127.0.0.1", tonumber(ngx.var.server_port))
  if not ok then return nil, io_error(ctx, "connect", cerr) end
  local lines = { "GET " .. path .. " HTTP/1.0", "Host: upstream" }
  if propagate ~= false then
    for name, value in pairs(trace.inject(ctx, {})) do lines[#lines + 1] = name .. ": " .. value end
  end
  lines[#lines + 1] = "\r\n"
  local sent, serr = sock:send(concat(lines, "\r\n"))
  if not sent then sock:close(); return nil, io_error(ctx, "send", serr) end
  local status_line, rerr = sock:receive("*l")
  if not status_line then
    sock:close()
    return nil, io_error(ctx, "receive", rerr)
  end
  local body = sock:receive("*a") or ""
  sock:close()
  body = body:match("\r\n\r\n(.*)$") or ""
  return tonumber(status_line:match("^HTTP/%d%.%d (%d+)")), body
end

-------------------------------------------------------------------------------
-- /api/deadline?delay=S[&propagate=0]: the upstream takes S seconds; the
-- caller's deadline (x-request-timeout-ms) decides. When it passes first:
-- 504, at once. The upstream hears of the deadline (and answers 504 just
-- before it), or with propagate=0 of nothing: then our own wait ends at the
-- deadline, and the upstream stops when we hang up.
-------------------------------------------------------------------------------
function H.deadline()
  local ctx = context.from_request({ timeout = 10 })
  local delay = tonumber(ngx.var.arg_delay) or 1
  local call = context.go(http_get, ctx, "/upstream/slow?delay=" .. delay,
    ngx.var.arg_propagate ~= "0")
  if context.select(ctx, call) == 1 or ctx:err() then
    ngx.status = ngx.HTTP_GATEWAY_TIMEOUT
    ngx.say("deadline: ", tostring(ctx:cause()))
    return ngx.exit(ngx.HTTP_OK) -- ends the request and its light threads
  end
  local status, body = call:wait()
  if status == ngx.HTTP_GATEWAY_TIMEOUT then -- the deadline, seen upstream
    ngx.status = ngx.HTTP_GATEWAY_TIMEOUT
    ngx.say("deadline upstream: ", (tostring(body):gsub("%s+$", "")))
    return
  end
  if status ~= 200 then
    ngx.status = ngx.HTTP_BAD_GATEWAY
    ngx.say("upstream: ", tostring(body))
    return
  end
  ngx.say("upstream: ", body)
end

-------------------------------------------------------------------------------
-- /upstream/slow?delay=S: a slow dependency. It too takes its context from
-- the request, so it stops at the deadline its caller sent, or when its
-- caller hangs up.
-------------------------------------------------------------------------------
function H.slow()
  local ctx = context.from_request()
  local ok, err = context.sleep(ctx, tonumber(ngx.var.arg_delay) or 1)
  if not ok then
    local cause = tostring(ctx:cause() or err)
    dict():incr("slow_stopped", 1, 0)
    dict():set("slow_last_cause", cause)
    if cause == "client aborted" then return ngx.exit(499) end
    ngx.status = err == context.deadline_exceeded and ngx.HTTP_GATEWAY_TIMEOUT
      or ngx.HTTP_SERVICE_UNAVAILABLE
    ngx.say("stopped: ", cause)
    return
  end
  ngx.say("slow reply")
end

-------------------------------------------------------------------------------
-- /api/abortable?id=N: waits until the client goes away (or 10 s); what
-- ended its context is recorded in the shared dict "demo" as done:N.
-------------------------------------------------------------------------------
function H.abortable()
  local id = ngx.var.arg_id or "?"
  local ctx = context.from_request({ timeout = 10 })
  dict():set("started:" .. id, true, 60)
  ctx:done()
  dict():set("done:" .. id, tostring(ctx:cause()), 60)
  if ctx:cause() == "client aborted" then return ngx.exit(499) end
  ngx.say("done: ", tostring(ctx:cause()))
end

--- /api/status?key=K: a value of the shared dict "demo"
function H.status()
  ngx.say(tostring(dict():get(ngx.var.arg_key or "")))
end

-------------------------------------------------------------------------------
-- /api/fanout?n=N: N light threads wait under one group context, each its
-- own way; a last one fails after 0.1 s, which cancels the group (errgroup):
-- every one of them stops at once.
-------------------------------------------------------------------------------
function H.fanout()
  local n = tonumber(ngx.var.arg_n) or 5
  local ctx = context.from_request({ timeout = 5 })
  local g, gctx = context.group(ctx)
  local ways = {
    function(c) return context.sleep(c, 30) end,
    function(c) return nil, c:done() end,
    function(c) context.select(c, 30); return nil, c:err() end,
    function(c) return context.go(function() return c:done() end):wait() end,
  }
  local stopped_at = {}
  for i = 1, n do
    g:go(function(c)
      local _, err = ways[(i - 1) % #ways + 1](c)
      stopped_at[i] = context.now()
      return nil, err
    end)
  end
  local t0 = context.now()
  g:go(function(c)
    context.sleep(c, 0.1)
    return nil, "enough"
  end)
  local first = g:wait()
  local cancelled_at = t0 + 0.1
  local latest = 0
  for i = 1, n do
    if stopped_at[i] then latest = math.max(latest, stopped_at[i] - cancelled_at) end
  end
  local count = 0
  for _ in pairs(stopped_at) do count = count + 1 end
  ngx.say(fmt("stopped %d of %d, cause %s, last %.3f s after the cancel",
    count, n, tostring(first), latest))
end

-------------------------------------------------------------------------------
-- /api/retry?key=K&fail=F: the upstream fails F times, then answers; retry
-- with exponential backoff (0.05, 0.1, ...) inside the request's deadline.
-------------------------------------------------------------------------------
function H.retry()
  local key, fail = ngx.var.arg_key or "k", tonumber(ngx.var.arg_fail) or 2
  local ctx = context.from_request({ timeout = 5 })
  local delays, attempts = {}, 0
  local t0 = context.now()
  local body, err, _, why = context.retry(ctx, function(actx)
    attempts = attempts + 1
    local status, b = http_get(actx, "/upstream/flaky?key=" .. key .. "&fail=" .. fail)
    if status ~= 200 then return nil, "status " .. tostring(status or b) end
    return b
  end, {
    attempts = 5, base = 0.05, factor = 2, jitter = "none",
    on_retry = function(_, _, delay) delays[#delays + 1] = fmt("%.2f", delay) end,
  })
  ngx.say(fmt("attempts %d, result %s, delays %s, elapsed %.3f", attempts,
    body and body:gsub("%s+$", "") or ("nil (" .. tostring(err) .. ", " .. tostring(why) .. ")"),
    concat(delays, ","), context.now() - t0))
end

--- /upstream/flaky?key=K&fail=F: 503 for the first F calls of each key
function H.flaky()
  local n = dict():incr("flaky:" .. (ngx.var.arg_key or "k"), 1, 0)
  if n <= (tonumber(ngx.var.arg_fail) or 2) then return ngx.exit(503) end
  ngx.say("ok on call ", n)
end

-------------------------------------------------------------------------------
-- /api/breaker?fail=1: a call guarded by a circuit breaker whose state is in
-- lua_shared_dict lcontext_breakers: every worker sees it open at once.
-------------------------------------------------------------------------------
local breaker
local function get_breaker()
  if not breaker then
    breaker = context.shared_breaker("lcontext_breakers",
      { name = "upstream", threshold = 3, cooldown = 30 })
  end
  return breaker
end

function H.breaker()
  local ctx = context.from_request({ timeout = 5 })
  local br = get_breaker()
  local fail = ngx.var.arg_fail == "1"
  local res, err = br:call(ctx, function()
    if fail then return nil, "upstream failed" end
    return "upstream ok"
  end)
  ngx.say(fmt("worker %d: %s, breaker %s", ngx.worker.id(), tostring(res or err), br:state()))
end

-------------------------------------------------------------------------------
-- /api/many?n=N: N contexts with deadlines, each waited on by a light thread
-- and watched by an after_func: one driver timer per worker fires them all
-- (lua_max_pending_timers is far below N).
-------------------------------------------------------------------------------
function H.many()
  local n = tonumber(ngx.var.arg_n) or 300
  local ctx = context.from_request({ timeout = 5 })
  local ran, tasks = 0, {}
  for i = 1, n do
    local c = context.with_timeout(ctx, 0.02 + (i % 20) * 0.002)
    context.after_func(c, function() ran = ran + 1 end)
    tasks[i] = context.go(function() return c:done() end)
  end
  local exceeded = 0
  for i = 1, n do
    if tasks[i]:wait() == context.deadline_exceeded then exceeded = exceeded + 1 end
  end
  context.sleep(ctx, 0.05) -- the callbacks run in timers of their own
  local m = context.metrics()
  ngx.say(fmt("deadlines %d of %d, callbacks %d, driver starts %d", exceeded, n, ran,
    m.ngx_driver_starts))
end

--- /metrics: Prometheus text (this worker's figures)
function H.metrics()
  ngx.header.content_type = "text/plain; version=0.0.4"
  ngx.print(context.metrics_text())
end

-------------------------------------------------------------------------------
-- init_worker_by_lua: each worker publishes its view of the shared breaker
-- in the dict "demo" (breaker:<worker id>), for the test to read.
-------------------------------------------------------------------------------
function H.init_worker()
  ngx.timer.every(0.05, function(premature)
    if premature then return end
    dict():set("breaker:" .. ngx.worker.id(), get_breaker():state())
  end)
end

return H
