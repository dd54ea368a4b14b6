--- sock_handlers.lua — test-only handlers for lcontext.socket in nginx
-- (cosockets bounded by a context): locations in spec/ngx/sock.conf,
-- included by spec/ngx/run.sh in the example's server block, checked by
-- spec/ngx/socket_client.lua. Each /t/sock/* answers lines "key value".
local context = require "lcontext.ngx"
local socket = require "lcontext.socket"

local ngx = ngx
local fmt = string.format

local H = {}

local bg = context.background()
local function dict() return ngx.shared.demo end
local function now()
  ngx.update_time()
  return ngx.now()
end
-- (lcontext's monotonic clock: finer than ngx.now's milliseconds)
local mono = context.now
local function out(k, v) ngx.say(k, " ", tostring(v)) end
local function port() return tonumber(ngx.var.server_port) end

-- connect to this nginx and ask for path (HTTP/1.0): sock | nil, err
local function request(ctx, path)
  local sock, err = socket.connect(ctx, "127.0.0.1", port())
  if not sock then return nil, err end
  local ok, serr = sock:send(ctx, "GET " .. path .. " HTTP/1.0\r\nHost: sock\r\n\r\n")
  if not ok then sock:close(); return nil, serr end
  return sock
end

-- read the response head: true | nil, err
local function skip_head(ctx, sock)
  while true do
    local line, err = sock:receive(ctx, "*l")
    if not line then return nil, err end
    if line == "" then return true end
  end
end

-------------------------------------------------------------------------------
-- /t/sock/seq?budget=S&delay=D: three sequential requests to a slow
-- upstream (each D s), all under ONE deadline of S s: connect, send and
-- receive of each take their timeout from what is left
-------------------------------------------------------------------------------
function H.seq()
  local budget = tonumber(ngx.var.arg_budget) or 0.2
  local delay = tonumber(ngx.var.arg_delay) or 0.15
  local ctx, cancel = context.with_timeout(bg, budget)
  local t0 = now()
  local got = {}
  for _ = 1, 3 do
    local sock, err = request(ctx, "/upstream/slow?delay=" .. delay)
    local line
    if sock then
      line, err = sock:receive(ctx, "*l")
      sock:close()
    end
    if line then line = line:match("^HTTP/1.%d 200") and "200" or line end
    got[#got + 1] = line or tostring(err)
    if not line then break end
  end
  out("elapsed", fmt("%.3f", now() - t0))
  out("results", table.concat(got, "|"))
  cancel()
end

-------------------------------------------------------------------------------
-- /t/sock/cancel?how=cancel|close|bound: a light thread blocks in a receive
-- (an upstream that answers after 5 s); 50 ms later another light thread
-- cancels its context / closes the socket / cancels the task's own context
-------------------------------------------------------------------------------
function H.cancel()
  local how = ngx.var.arg_how or "cancel"
  local ctx, cancel = context.with_cancel(bg)
  local sock = assert(request(bg, "/t/sock/up_partial?body="))
  assert(skip_head(bg, sock))
  local r, t_end
  local tctx, tcancel = context.with_cancel(bg)
  local t
  if how == "bound" then
    t = context.spawn(tctx, function()
      r = { sock:receive(bg, "*l") }
      t_end = now()
    end)
  else
    t = context.go(function()
      r = { sock:receive(how == "close" and bg or ctx, "*l") } -- (close: on background)
      t_end = now()
    end)
  end
  context.sleep(bg, 0.05)
  local t_cancel = now()
  if how == "cancel" then cancel("why") elseif how == "close" then sock:close() else tcancel() end
  t:wait()
  out("took", fmt("%.4f", t_end - t_cancel))
  out("err", tostring(r[2]))
  out("partial", fmt("%q", tostring(r[3])))
  local after = { sock:receive(bg) }
  out("after", tostring(after[1]) .. "," .. tostring(after[2]))
  sock:close()
  cancel()
  tcancel()
end

-------------------------------------------------------------------------------
-- /t/sock/close2: two light threads use one socket at once, one blocked in
-- a receive, the other in a 16 MiB send the upstream never reads; a third
-- closes it: both calls end at once with nil, "closed"
-------------------------------------------------------------------------------
function H.close2()
  local ctx, cancel = context.with_cancel(bg)
  local sock = assert(request(bg, "/t/sock/up_partial?body="))
  assert(skip_head(bg, sock))
  local rr, sr, t_r, t_s
  local tr = context.go(function() rr = { sock:receive(ctx, "*l") }; t_r = now() end)
  local ts = context.go(function() sr = { sock:send(ctx, string.rep("z", 16 * 1024 * 1024)) }; t_s = now() end)
  context.sleep(bg, 0.1)
  local t0 = now()
  sock:close()
  tr:wait()
  ts:wait()
  out("receive", fmt("%s,%s,%.4f", tostring(rr[1]), tostring(rr[2]), t_r - t0))
  out("send", fmt("%s,%s,%s,%.4f", tostring(sr[1]), tostring(sr[2]), tostring(sr[3]), t_s - t0))
  cancel()
end

-------------------------------------------------------------------------------
-- /t/sock/exit?abort=0|1: light threads wait in socket calls when the
-- request dies: ngx.exit (no abort arg), or the client goes away with
-- abort=0 (no on_abort handler: ngx_lua kills every light thread)
-------------------------------------------------------------------------------
function H.exit()
  local abort = ngx.var.arg_abort
  local ctx = context.from_request({ timeout = 10, abort = abort == nil })
  local c = context.with_cancel(ctx)
  local sock = assert(request(c, "/t/sock/up_partial?body="))
  context.go(function() return sock:receive(c, "*l") end)
  context.go(function() return sock:receive(bg, 10) end) -- (a second reader: "busy", at once)
  local sock2 = assert(request(bg, "/t/sock/up_partial?body="))
  context.go(function() return sock2:receive(bg, "*a") end)
  if abort then
    dict():incr("sockexit_started", 1, 0)
    return sock:receive(bg, "*a") -- until killed
  end
  context.sleep(ctx, 0.02)
  ngx.say("exit")
  return ngx.exit(200)
end

-------------------------------------------------------------------------------
-- /t/sock/timer?id=ID: the same calls in a timer (ngx.timer.at): a request
-- under a deadline, then a receive cancelled from another light thread;
-- the outcome goes to the shared dict as sock_timer:ID
-------------------------------------------------------------------------------
function H.timer()
  local id = ngx.var.arg_id or "?"
  local p = port()
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local ctx, cancel = context.with_timeout(bg, 2)
    local sock = assert(socket.connect(ctx, "127.0.0.1", p))
    sock:send(ctx, "GET /t/sock/up_partial?body= HTTP/1.0\r\nHost: timer\r\n\r\n")
    local status = sock:receive(ctx)
    skip_head(ctx, sock)
    local c, ccancel = context.with_cancel(ctx)
    context.go(function() context.sleep(bg, 0.03); ccancel() end)
    local t0 = now()
    local d, e = sock:receive(c)
    dict():set("sock_timer:" .. id, fmt("%s|%s,%s,%.4f", tostring(status), tostring(d),
      tostring(e), now() - t0 - 0.03))
    sock:close()
    cancel()
  end)
  ngx.say("timer ", tostring(ok), " ", tostring(err))
end

-------------------------------------------------------------------------------
-- /t/sock/partial: an upstream that sends "par" (no newline) and stalls; a
-- receive of a line under a 0.2 s deadline gives nil, deadline_exceeded, "par"
-------------------------------------------------------------------------------
function H.partial()
  local ctx, cancel = context.with_timeout(bg, 5)
  local sock = assert(request(ctx, "/t/sock/up_partial"))
  assert(skip_head(ctx, sock))
  local c2, cancel2 = context.with_timeout(ctx, 0.2)
  local t0 = now()
  local data, err, partial = sock:receive(c2, "*l")
  out("elapsed", fmt("%.3f", now() - t0))
  out("data", tostring(data))
  out("err", tostring(err))
  out("partial", partial)
  -- the connection lives on after a read that timed out at the deadline
  out("closed_after", tostring(sock:is_closed()))
  local c3, cancel3 = context.with_timeout(ctx, 0.05)
  local d2, e2, p2 = sock:receive(c3, 5, "ab")
  out("second", fmt("%s,%s,%s", tostring(d2), tostring(e2), tostring(p2)))
  sock:close()
  cancel(); cancel2(); cancel3()
end

-- /t/sock/up_partial[?body=]: the head and "par" (or body) at once, then a
-- stall of 5 s (the length announced keeps nginx from holding them back)
function H.up_partial()
  local body = ngx.var.arg_body or "par"
  ngx.header.content_length = 100
  ngx.send_headers()
  if body ~= "" then ngx.print(body) end
  ngx.flush(true)
  context.sleep(context.from_request(), 5)
end

-------------------------------------------------------------------------------
-- /t/sock/faults: refused, unresolvable (no resolver in this nginx), a
-- context already done, bad arguments, what OpenResty cannot do
-------------------------------------------------------------------------------
local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  if ok then return "no error" end
  return tostring(e):gsub("^[^:]*:%d+: ", "")
end

function H.faults()
  local ctx, cancel = context.with_timeout(bg, 2)
  local s, err = socket.connect(ctx, "127.0.0.1", 1)
  out("refused", tostring(s) .. "," .. tostring(err))
  s, err = socket.connect(ctx, "nonexistent.invalid", 80)
  out("unresolvable", tostring(s) .. "," .. tostring(err))
  local done, dcancel = context.with_cancel(bg)
  dcancel()
  s, err = socket.connect(done, "127.0.0.1", port())
  out("done_connect", tostring(s) .. "," .. tostring(err))
  local sock = assert(request(ctx, "/upstream/slow?delay=0"))
  local r = { sock:receive(done) }
  out("done_receive", fmt("%s,%s,%q", tostring(r[1]), tostring(r[2]), tostring(r[3])))
  r = { sock:send(done, "x") }
  out("done_send", fmt("%s,%s,%s", tostring(r[1]), tostring(r[2]), tostring(r[3])))
  out("still_usable", tostring(sock:receive(ctx)))
  out("bad_ctx", err_of(sock.receive, sock, "x"))
  out("bad_count", err_of(sock.receive, sock, bg, -1))
  out("bad_pattern", err_of(sock.receive, sock, bg, "*x"))
  out("bad_data", err_of(sock.send, sock, bg, {}))
  out("bad_self", err_of(sock.receive, {}, bg))
  out("bad_port", err_of(socket.connect, bg, "127.0.0.1", -5))
  out("bad_host", err_of(socket.connect, bg, 42, 80))
  out("bad_opts", err_of(socket.connect, bg, "127.0.0.1", 80, { pol = "x" }))
  local nd = socket.connect(ctx, "127.0.0.1", port(), { nodelay = true, pool = "lcontext-nodelay" })
  out("nodelay", tostring(nd ~= nil))
  if nd then nd:close() end
  out("bad_wrap", err_of(socket.wrap, ngx.socket.tcp()))
  sock:close()
  r = { sock:receive(bg) }
  out("closed_receive", fmt("%s,%s,%q", tostring(r[1]), tostring(r[2]), tostring(r[3])))
  r = { sock:send(bg, "x") }
  out("closed_send", fmt("%s,%s,%s", tostring(r[1]), tostring(r[2]), tostring(r[3])))
  out("close_again", sock:close())
  out("bind", err_of(socket.bind, "127.0.0.1", 0))
  out("http_request", err_of(socket.http_request, bg, "http://x/"))
  out("sendto", err_of(socket.udp().sendto, socket.udp(), bg, "x", "127.0.0.1", 1))
  local ok, gp = pcall(sock.getpeername, sock)
  out("getpeername", ok and "works" or tostring(gp):gsub("^[^:]*:%d+: ", ""))
  -- a wrapped cosocket
  local cos = ngx.socket.tcp()
  cos:connect("127.0.0.1", port())
  local w = socket.wrap(cos)
  w:send(ctx, "GET /upstream/slow?delay=0 HTTP/1.0\r\nHost: w\r\n\r\n")
  out("wrapped", tostring(w:receive(ctx)))
  out("raw_is_cos", tostring(w:raw() == cos))
  w:close()
  cancel()
end

-------------------------------------------------------------------------------
-- /t/sock/defaults (lua_socket_read_timeout 150ms): without a deadline,
-- nginx's default read timeout ends a receive ("timeout"); with one, the
-- deadline decides, longer or shorter; a deadline beyond what a cosocket
-- timeout can hold (2^31-1 ms) is capped
-------------------------------------------------------------------------------
function H.defaults()
  local sock = assert(request(bg, "/t/sock/up_partial?body="))
  assert(skip_head(bg, sock))
  local t0 = now()
  local d, err = sock:receive(bg)
  out("background", fmt("%s,%s,%.3f", tostring(d), tostring(err), now() - t0))
  local ctx, cancel = context.with_timeout(bg, 0.3)
  t0 = now()
  d, err = sock:receive(ctx)
  out("longer", fmt("%s,%s,%.3f", tostring(d), tostring(err), now() - t0))
  sock:close()
  cancel()
  local far, fcancel = context.with_timeout(bg, 40 * 86400)
  sock = assert(request(far, "/upstream/slow?delay=0"))
  out("far", tostring(sock:receive(far)))
  sock:close()
  fcancel()
end

-------------------------------------------------------------------------------
-- /t/sock/udp: a receive bounded by a deadline, and one cancelled early
-------------------------------------------------------------------------------
function H.udp()
  local u = socket.udp()
  out("peer", tostring(u:setpeername("127.0.0.1", 9)))
  local ctx, cancel = context.with_timeout(bg, 0.1)
  local t0 = now()
  local d, err = u:receive(ctx)
  out("deadline", fmt("%s,%s,%.3f", tostring(d), tostring(err), now() - t0))
  local c2, cancel2 = context.with_cancel(bg)
  local r, t_end
  local t = context.go(function() r = { u:receive(c2) }; t_end = now() end)
  context.sleep(bg, 0.03)
  local t1 = now()
  cancel2()
  t:wait()
  out("cancel", fmt("%s,%s,%.4f", tostring(r[1]), tostring(r[2]), t_end - t1))
  u:close()
  cancel()
end

-------------------------------------------------------------------------------
-- /t/sock/abort?id=ID: the request's context (from_request, cancelled when
-- the client goes away) bounds a receive from an upstream that answers
-- after 5 s; when it returns, the time and the error go to the shared dict
-------------------------------------------------------------------------------
function H.abort()
  local id = ngx.var.arg_id or "?"
  local ctx = context.from_request({ timeout = 10 })
  local sock, err = request(ctx, "/upstream/slow?delay=5")
  local line
  if sock then
    dict():set("sockabort_started:" .. id, true)
    line, err = sock:receive(ctx, "*l")
    sock:close()
  end
  dict():set("sockabort_ended:" .. id, fmt("%.4f %s %s", now(), tostring(line), tostring(err)))
  if ctx:cause() == "client aborted" then return ngx.exit(499) end
  ngx.say("not aborted")
end

function H.status()
  ngx.say(tostring(dict():get(ngx.var.arg_key or "")))
end

-------------------------------------------------------------------------------
-- /t/sock/cost?n=N: what an operation costs, in microseconds per call:
-- raw cosocket receives of buffered lines; the same through lcontext.socket
-- with background and with a cancellable context (an op thread that never
-- yields); and whole requests (connect, send, receive: the op threads
-- yield) on raw cosockets, with background and with a cancellable context
-------------------------------------------------------------------------------
function H.lines()
  local n = tonumber(ngx.var.arg_n) or 1000
  local t = {}
  for i = 1, n do t[i] = "line " .. i end
  ngx.print(table.concat(t, "\n"), "\n")
end

function H.cost()
  local n = tonumber(ngx.var.arg_n) or 2000
  local ctx, cancel = context.with_cancel(bg)
  local function lines_through(c, raw)
    local sock = assert(request(bg, "/t/sock/lines?n=" .. n))
    assert(skip_head(bg, sock))
    -- the whole body in the cosocket's buffer first (lua_socket_buffer_size
    -- is small: what does not fit is read from the kernel, without waiting)
    context.sleep(bg, 0.05)
    local t0 = mono()
    local got = 0
    if raw then
      local cos = sock:raw()
      for _ = 1, n do if cos:receive("*l") then got = got + 1 end end
    else
      for _ = 1, n do if sock:receive(c, "*l") then got = got + 1 end end
    end
    local dt = mono() - t0
    sock:close()
    assert(got == n, "got " .. got)
    return dt / n * 1e6
  end
  local s0 = socket._stats
  local fast0 = s0.fast
  out("raw_us", fmt("%.2f", lines_through(nil, true)))
  out("bg_us", fmt("%.2f", lines_through(bg)))
  out("ctx_us", fmt("%.2f", lines_through(ctx)))
  out("fast_ops", s0.fast - fast0)
  local m = tonumber(ngx.var.arg_m) or 200
  -- one request each way in turn (raw, background, cancellable), so that
  -- the machine's drift spreads over the three alike
  local function raw_req()
    local cos = ngx.socket.tcp()
    assert(cos:connect("127.0.0.1", port()))
    assert(cos:send("GET /upstream/slow?delay=0 HTTP/1.0\r\nHost: sock\r\n\r\n"))
    assert(cos:receive("*l"))
    cos:close()
  end
  local function req(c)
    local sock = assert(request(c, "/upstream/slow?delay=0"))
    assert(sock:receive(c, "*l"))
    sock:close()
  end
  local waited0 = s0.waited
  local sum = { 0, 0, 0 }
  for _ = 1, m do
    local t0 = mono()
    raw_req()
    local t1 = mono()
    req(bg)
    local t2 = mono()
    req(ctx)
    local t3 = mono()
    sum[1], sum[2], sum[3] = sum[1] + t1 - t0, sum[2] + t2 - t1, sum[3] + t3 - t2
  end
  out("req_raw_us", fmt("%.1f", sum[1] / m * 1e6))
  out("req_bg_us", fmt("%.1f", sum[2] / m * 1e6))
  out("req_ctx_us", fmt("%.1f", sum[3] / m * 1e6))
  out("waited_ops", s0.waited - waited0)
  cancel()
end

return H
