-- metrics_server.lua — serve lcontext's metrics over HTTP, Prometheus-style.
--
-- A tiny server on lcontext.socket (127.0.0.1, a free port, a task per
-- connection) answers GET /metrics with context.metrics_text(). The example
-- then scrapes itself the way Prometheus would (socket.http through
-- lcontext.socket), shows a few lines, and, when promtool (Debian
-- package prometheus) is installed, checks the text with
-- `promtool check metrics`.
--   lua5.4 tools/with_paths.lua examples/metrics_server.lua [--serve SECONDS]
local context = require "lcontext"
local socket = require "lcontext.socket"

local bg = context.background()
context.debug.histograms(true) -- lifetimes too (a clock read per context)

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local serving, stop = context.with_cancel(bg)

-- one connection: a slow or silent client gets 5 s for the whole
-- exchange (reading its request and taking the answer), not 5 s per call
local function respond(conn_ctx, client)
  local ctx, cancel <close> = context.with_timeout(conn_ctx, 5)
  local line = client:receive(ctx, "*l")
  if not line then client:close(); return end
  repeat -- the rest of the request head
    local h = client:receive(ctx, "*l")
  until not h or h == ""
  local status, body = "404 Not Found", "not found\n"
  if line:match("^GET /metrics ") then
    status, body = "200 OK", context.metrics_text()
  end
  client:send(ctx, ("HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
    .. "Content-Length: %d\r\n\r\n%s"):format(status, #body, body))
  client:close()
end

context.spawn(serving, function(ctx)
  while true do
    local client = server:accept(ctx) -- nil, ctx:err() once `serving` is cancelled
    if not client then break end
    ctx:spawn(respond, client)
  end
  server:close()
end)

-- some traffic worth measuring
local db = context.operation("db.query")
local traffic = {}
for i = 1, 5 do
  traffic[i] = context.go(function()
    local ctx, done = db:start(bg, 0.25)
    -- two calls well inside their 250 ms budget, three past it
    context.sleep(ctx, i <= 2 and 0.002 or 1)
    done()
  end)
end

-- scrape as Prometheus would: socket.http, bounded by ctx
local function scrape(ctx)
  local body, code = socket.http_request(ctx, ("http://127.0.0.1:%d/metrics"):format(port))
  if code ~= 200 then return nil end
  return body
end

local serve_for = arg and arg[1] == "--serve" and tonumber(arg[2]) or nil
local text
context.go(function()
  for _, t in ipairs(traffic) do t:wait() end -- let the traffic finish
  if serve_for then
    print(("serving http://127.0.0.1:%d/metrics for %g s"):format(port, serve_for))
    context.sleep(bg, serve_for)
  end
  local ctx, cancel <close> = context.with_timeout(bg, 2)
  text = scrape(ctx)
  stop()
end)
context.run()

assert(text, "the scrape failed")
print(("scraped %d bytes from /metrics"):format(#text))
for line in text:gmatch("[^\n]+") do
  if line:match('^lcontext_operations_total') or line:match("^lcontext_contexts_created_total")
    or line:match("^lcontext_timers_fired_total") then
    print("  " .. line)
  end
end
if os.execute("command -v promtool >/dev/null 2>&1") then
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w")); f:write(text); f:close()
  local ok = os.execute("promtool check metrics < " .. tmp .. " >/dev/null 2>&1")
  os.remove(tmp)
  print("promtool check metrics: " .. (ok and "ok" or "FAILED"))
  if not ok then os.exit(1) end
else
  print("promtool not installed: format not checked")
end
