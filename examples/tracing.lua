-- tracing.lua — a trace and a deadline crossing a socket between two services.
--
-- Two "services" run in this one process, talking HTTP over a real TCP
-- socket on 127.0.0.1 through lcontext.socket, every call bounded by a
-- context (the inventory: bind + accept; the frontend: socket.http):
--
--   frontend  takes two requests, with budgets of 1000 ms and 200 ms. For
--             each it starts a trace and calls the inventory service;
--             lcontext.trace's inject writes traceparent (a new span for
--             the hop), x-request-id and the time left (grpc-timeout and
--             x-request-timeout-ms).
--   inventory extracts those headers into its request context: the same
--             trace, and a deadline of what the frontend had left minus a
--             transit reserve (50 ms here). Its work (three 100 ms steps)
--             runs under that context, so when the propagated deadline
--             passes the work is cut off, and it answers 504 while the
--             frontend is still listening.
--
-- The inventory service logs through context.logger: one JSON line per event,
-- carrying the trace id, span id, request id and time left.
local context = require "lcontext"
local trace = require "lcontext.trace"
local socket = require "lcontext.socket"
local ltn12 = require "ltn12"
-- context.logger comes from lcontext.observe, merged into lcontext by init.lua
local observe = context.logger and context or require("lcontext.observe")(context)

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

local RESERVE = 0.05 -- what the inventory service keeps back for the trip home

-- the request line, then the headers (name -> value, or a list of values
-- when a name repeats). Every line is read under ctx: the whole head must
-- arrive within ctx, however the client drips it.
local function read_head(ctx, sock)
  local first, err = sock:receive(ctx, "*l")
  if not first then return nil, err end
  local headers = {}
  while true do
    local line, lerr = sock:receive(ctx, "*l")
    if not line then return nil, lerr end
    if line == "" then return first, headers end
    local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
    if name then
      local old = headers[name]
      if old == nil then headers[name] = value
      elseif type(old) == "table" then old[#old + 1] = value
      else headers[name] = { old, value } end
    end
  end
end

-- {=== inventory: the downstream service ===}
local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local serving, stop_serving = context.with_cancel(bg)
local log = observe.logger(print, { fields = { service = "inventory" } })
local seen = {} -- what the inventory saw, for the checks at the end

local function handle(service_ctx, client)
  local line, headers = read_head(service_ctx, client)
  if not line then client:close(); return end
  -- the request's context: trace and deadline from the headers
  local ctx, cancel <close>, info = trace.extract(headers, service_ctx, { reserve = RESERVE })
  local rec = { trace_id = info.trace_id, span_id = info.span_id, deadline = ctx:deadline(),
                request_id = info.request_id }
  seen[#seen + 1] = rec
  say("inventory: trace %s continued from span %s", info.trace_id, info.span_id)
  say("inventory: %s left (propagated %.0f ms, minus %.0f ms reserve)",
    string.format("%.0f ms", ctx:remaining() * 1000), info.timeout * 1000, RESERVE * 1000)
  log:info(ctx, "request received", { path = line:match("^%S+ (%S+)") })

  local status, body = "200 OK", "3 items\n"
  for step = 1, 3 do
    local ok, err = context.sleep(ctx, 0.1) -- a database call, say
    if not ok then
      rec.cut_at = context.time()
      rec.err = err
      say("inventory: work cut off at step %d: %s", step, tostring(err))
      log:warn(ctx, "work cut off", { step = step })
      status, body = "504 Gateway Timeout", tostring(err) .. "\n"
      break
    end
  end
  if status:sub(1, 3) == "200" then
    rec.finished = true
    say("inventory: work done")
    log:info(ctx, "work done")
  end
  -- the reply is sent under the service's context, not the expired request's
  client:send(service_ctx, ("HTTP/1.0 %s\r\nx-trace-id: %s\r\nContent-Length: %d\r\n\r\n%s")
    :format(status, info.trace_id, #body, body))
  client:close()
end

context.spawn(serving, function(ctx)
  while true do
    local client = server:accept(ctx) -- nil, ctx:err() once `serving` is cancelled
    if not client then break end
    ctx:spawn(handle, client)          -- a task per connection
  end
  server:close()
end)

-- {=== frontend: the upstream service ===}
local function call_inventory(ctx)
  -- the hop's headers: traceparent (a new span), x-request-id, the time left.
  -- (socket.http_request's `trace = true` injects the same; done by hand
  -- here to show them, and to keep the hop's span id for the checks)
  local headers, span = trace.inject(ctx)
  say("frontend -> inventory: traceparent %s, grpc-timeout %s, x-request-timeout-ms %s",
    headers.traceparent, headers["grpc-timeout"], headers["x-request-timeout-ms"])
  -- connect, send and read the answer, all within ctx's deadline
  local chunks = {}
  local ok, code, rheaders = socket.http_request(ctx, {
    url = ("http://127.0.0.1:%d/items"):format(port),
    headers = headers,
    sink = ltn12.sink.table(chunks),
  })
  -- (a failure returns the span too: the hop was made, whatever came of it)
  if not ok then return nil, code, nil, span end
  return code, table.concat(chunks), rheaders, span
end

local results = {}
local frontend = context.go(function()
  for n, budget in ipairs({ 1.0, 0.2 }) do
    local request = trace.start(bg) -- a new trace (and request id) per incoming request
    local ctx, cancel <close> = context.with_timeout(request, budget)
    local tid = trace.info(ctx).trace_id
    say("frontend: request %d, budget %.0f ms, trace %s", n, budget * 1000, tid)
    local code, body, rheaders, span = call_inventory(ctx)
    local r = { trace_id = tid, deadline = ctx:deadline(), span = span, code = code }
    results[n] = r
    if code == 200 then
      say("frontend: request %d answered %s: %s (same trace: %s)", n, code, body:gsub("\n$", ""),
        tostring(rheaders["x-trace-id"] == tid))
    elseif code then
      say("frontend: request %d failed: inventory answered %s (%s)", n, code, body:gsub("\n$", ""))
    else
      say("frontend: request %d failed: %s", n, tostring(body))
    end
  end
  stop_serving()
end)

context.run()
assert(frontend:status() == "ok", "the frontend failed")
assert(#seen == 2, "the inventory service did not see both requests")
for n = 1, 2 do
  assert(seen[n].trace_id == results[n].trace_id, "the trace id did not cross")
  assert(seen[n].span_id == results[n].span, "the inventory's parent span is not the frontend's hop")
  assert(seen[n].deadline < results[n].deadline, "the inventory's deadline is not before the frontend's")
end
assert(seen[1].finished and results[1].code == 200, "request 1 should have succeeded")
assert(seen[2].err == context.deadline_exceeded, "request 2's work was not cut off by the deadline")
assert(seen[2].cut_at < results[2].deadline, "request 2's work was cut off after the frontend's deadline")
say("done: request 2's work stopped %.0f ms before the frontend's own deadline",
  (results[2].deadline - seen[2].cut_at) * 1000)
