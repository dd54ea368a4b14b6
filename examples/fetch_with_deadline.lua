-- fetch_with_deadline.lua — an HTTP GET bounded by a context deadline.
--
-- The example starts its own tiny HTTP server (a task on 127.0.0.1, on a
-- free port) and fetches two paths from it with LuaSocket's socket.http,
-- through lcontext.socket. The deadline bounds the whole exchange (connect,
-- send and every read share one budget), not each call: /slow answers after
-- a second, and its fetch gives up at 200 ms.
local context = require "lcontext"
local socket = require "lcontext.socket"

local bg = context.background()
local t0 = context.now()
local function say(fmt, ...)
  print(string.format("[%4.0f ms] " .. fmt, (context.now() - t0) * 1000, ...))
end

-- {=== the server: /fast answers at once, /slow after a second ===}
local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local serving, stop_serving = context.with_cancel(bg)

-- one connection, under ctx: read the request head, answer, close
local function handle(ctx, client)
  local line = client:receive(ctx, "*l") -- the request line
  if not line then client:close(); return end
  repeat local header = client:receive(ctx, "*l") until not header or header == ""
  local path = line and line:match("^GET (%S+)") or "/"
  if path == "/slow" then context.sleep(ctx, 1) end
  local body = "hello from " .. path .. "\n"
  client:send(ctx, "HTTP/1.0 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
  client:close()
end

context.spawn(serving, function(ctx)
  -- accept waits as any lcontext call does: it returns nil, ctx:err()
  -- once `serving` is cancelled, and the loop ends
  while true do
    local client = server:accept(ctx)
    if not client then break end
    ctx:spawn(handle, client) -- a task per connection, its ctx a child of ours
  end
  server:close()
end)

-- {=== the client: socket.http, bounded by the context ===}
local results = {}
local main = context.go(function()
  for _, path in ipairs({ "/fast", "/slow" }) do
    local ctx, cancel <close> = context.with_timeout(bg, 0.2)
    say("GET %s with a 200 ms deadline", path)
    -- body, code, headers; or nil, ctx:err() when the deadline comes first
    local body, err = socket.http_request(ctx, ("http://127.0.0.1:%d%s"):format(port, path))
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
