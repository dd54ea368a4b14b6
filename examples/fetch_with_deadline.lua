-- fetch_with_deadline.lua — an HTTP GET bounded by a context deadline.
--
-- The example starts its own tiny HTTP server (a task on 127.0.0.1, on a
-- free port) and fetches two paths from it with LuaSocket in non-blocking
-- mode. Every wait goes through context.wait_fd, so the request's deadline
-- bounds the whole exchange: connect, send and every read.
local context = require "lcontext"
local socket = require "socket"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

-- {=== the server: /fast answers at once, /slow after a second ===}
local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local _, port = server:getsockname()
local serving, stop_serving = context.with_cancel(bg)

local function handle(ctx, client)
  client:settimeout(0)
  local line
  repeat
    line = client:receive("*l")
    if not line and not context.wait_fd(ctx, client, "r") then break end
  until line
  local path = line and line:match("^GET (%S+)") or "/"
  if path == "/slow" then context.sleep(ctx, 1) end
  local body = "hello from " .. path .. "\n"
  client:send("HTTP/1.0 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
  client:close()
end

context.go(function(ctx)
  while context.wait_fd(ctx, server, "r") do
    local client = server:accept()
    if client then context.go(handle, ctx, client) end
  end
  server:close()
end, serving)

-- {=== the client: every step waits through the context ===}
local function fetch(ctx, path)
  local c = socket.tcp()
  c:settimeout(0)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok and err ~= "timeout" and err ~= "Operation already in progress" then
    c:close(); return nil, err
  end
  if not ok then
    local ready, cerr = context.wait_fd(ctx, c, "w")
    if not ready then c:close(); return nil, cerr end
  end
  c:send("GET " .. path .. " HTTP/1.0\r\n\r\n")
  local chunks = {}
  while true do
    local data, rerr, partial = c:receive(4096)
    data = data or partial
    if data and #data > 0 then chunks[#chunks + 1] = data end
    if rerr == "closed" then break end
    if rerr == "timeout" then
      local ready, werr = context.wait_fd(ctx, c, "r")
      if not ready then c:close(); return nil, werr end
    elseif rerr then
      c:close(); return nil, rerr
    end
  end
  c:close()
  local response = table.concat(chunks)
  return response:match("\r\n\r\n(.*)$")
end

local results = {}
local main = context.go(function()
  for _, path in ipairs({ "/fast", "/slow" }) do
    local ctx, cancel <close> = context.with_timeout(bg, 0.2)
    say("GET %s with a 200 ms deadline", path)
    local body, err = fetch(ctx, path)
    if body then
      -- (%q would break the line at the body's "\n": show it escaped)
      say("  -> %s", (("%q"):format(body):gsub("\\\n", "\\n")))
    else
      say("  -> gave up: %s", tostring(err))
    end
    results[path] = body or err
  end
  stop_serving()
end)

context.run()
assert(main:status() == "ok")
assert(results["/fast"] == "hello from /fast\n", "fast path failed")
assert(results["/slow"] == context.deadline_exceeded, "slow path did not time out")
say("done: the slow fetch stopped at its deadline, not after a second")
