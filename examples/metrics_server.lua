-- metrics_server.lua — serve lcontext's metrics over HTTP, Prometheus-style.
--
-- A tiny LuaSocket server (a task on 127.0.0.1, on a free port) answers
-- GET /metrics with context.metrics_text(). The example then scrapes itself
-- the way Prometheus would, shows a few lines, and, when promtool (Debian
-- package prometheus) is installed, checks the text with
-- `promtool check metrics`.
--   lua5.4 tools/with_paths.lua examples/metrics_server.lua [--serve SECONDS]
local context = require "lcontext"
local socket = require "socket"

local bg = context.background()
context.debug.histograms(true) -- lifetimes too (a clock read per context)

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local _, port = server:getsockname()
local serving, stop = context.with_cancel(bg)

local function respond(ctx, client)
  client:settimeout(0)
  local line
  repeat
    line = client:receive("*l")
    if not line and not context.wait_fd(ctx, client, "r") then client:close(); return end
  until line
  repeat -- the rest of the request head
    local h = client:receive("*l")
    if not h then context.wait_fd(ctx, client, "r") end
  until h == ""
  local status, body = "404 Not Found", "not found\n"
  if line:match("^GET /metrics ") then
    status, body = "200 OK", context.metrics_text()
  end
  client:settimeout(1)
  client:send(("HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
    .. "Content-Length: %d\r\n\r\n%s"):format(status, #body, body))
  client:close()
end

context.go(function(ctx)
  while context.wait_fd(ctx, server, "r") do
    local client = server:accept()
    if client then context.go(respond, ctx, client) end
  end
  server:close()
end, serving)

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

local function scrape(ctx)
  local c = socket.tcp()
  c:settimeout(0)
  c:connect("127.0.0.1", port)
  if not context.wait_fd(ctx, c, "w") then c:close(); return nil end
  c:send("GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
  local chunks = {}
  while true do
    local data, err, partial = c:receive(8192)
    data = data or partial
    if data and #data > 0 then chunks[#chunks + 1] = data end
    if err == "closed" then break end
    if err == "timeout" and not context.wait_fd(ctx, c, "r") then c:close(); return nil end
  end
  c:close()
  return table.concat(chunks):match("\r\n\r\n(.*)$")
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
