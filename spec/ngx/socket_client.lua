-- socket_client.lua PORT — the HTTP side of spec/ngx/run.sh for
-- lcontext.socket in nginx (cosockets bounded by a context): asks the
-- locations of spec/ngx/sock.conf (spec/ngx/sock_handlers.lua) and checks
-- their answers. Lua 5.4 + LuaSocket; loopback only; every wait bounded.
-- Prints `ok - ...` / `not ok - ...`, then `N passed, N failed`.
local socket = require "socket"

local PORT = assert(tonumber(arg[1]), "usage: socket_client.lua PORT")
local now = socket.gettime
local passed, failed = 0, 0

local function check(name, ok, detail)
  if ok then passed = passed + 1 else failed = failed + 1 end
  print((ok and "ok - " or "not ok - ") .. name .. (detail and ("  (" .. detail .. ")") or ""))
end

local function connect(timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 10)
  local ok, err = c:connect("127.0.0.1", PORT)
  if not ok then return nil, err end
  return c
end

local function send_get(c, path)
  return c:send("GET " .. path .. " HTTP/1.0\r\nHost: sock-test\r\n\r\n")
end

-- GET path -> status, {key = value} (the handlers' "key value" lines), body
local function get(path)
  local c, err = connect()
  if not c then return nil, {}, err end
  send_get(c, path)
  local data, _, partial = c:receive("*a")
  c:close()
  data = data or partial or ""
  local status = tonumber(data:match("^HTTP/%d%.%d (%d+)"))
  local body = data:match("\r\n\r\n(.*)$") or ""
  local kv = {}
  for k, v in body:gmatch("([%w_]+) ([^\n]*)\n") do kv[k] = v end
  return status, kv, body
end

local function n(v) return tonumber(v) or -1 end

-- 1. one deadline for a sequence of calls
do
  local t0 = now()
  local status, kv, body = get("/t/sock/seq?budget=0.2&delay=0.15")
  local whole = now() - t0
  local e = n(kv.elapsed)
  check("three sequential calls to a slow upstream under one 200 ms deadline: the request ends at ~200 ms",
    status == 200 and kv.results == "200|context deadline exceeded" and e >= 0.19 and e < 0.4
      and whole < 0.4,
    ("calls %s s, the whole request %.3f s, results %s"):format(tostring(kv.elapsed), whole,
      tostring(kv.results or body)))
end

-- 2. early ends of a blocked receive
for _, case in ipairs({
  { "cancel", "context canceled", "a context cancelled from another light thread" },
  { "close", "closed", "sock:close() from another light thread" },
  { "bound", "context canceled", "the spawned task's own context, cancelled" },
}) do
  local status, kv, body = get("/t/sock/cancel?how=" .. case[1])
  local took = n(kv.took)
  check(case[3] .. " ends a blocked receive within a few ms: nil, " .. case[2],
    status == 200 and kv.err == case[2] and took >= 0 and took < 0.1
      and kv.partial == '""' and kv.after == "nil,closed",
    ("took %s s, err %s, partial %s, then %s"):format(tostring(kv.took), tostring(kv.err),
      tostring(kv.partial), tostring(kv.after or body)))
end

-- 2b. close with a receive and a send in progress
do
  local status, kv, body = get("/t/sock/close2")
  local rd, re, rt = (kv.receive or ""):match("^([^,]*),([^,]*),([%d.%-]+)$")
  local sd, se, sl, st = (kv.send or ""):match("^([^,]*),([^,]*),([^,]*),([%d.%-]+)$")
  check("close() with a receive and a 16 MiB send in progress (two light threads) ends both at once",
    status == 200 and rd == "nil" and re == "closed" and n(rt) < 0.1 and sd == "nil"
      and se == "closed" and n(st) < 0.1 and n(sl) >= 0 and n(sl) < 16 * 1024 * 1024,
    ("receive: %s; send: %s"):format(tostring(kv.receive), tostring(kv.send or body)))
end

-- 2c. requests that die while light threads wait in socket calls: ngx.exit,
-- and clients gone with no on_abort handler (ngx_lua kills the threads);
-- the idle check at the end must still hold
do
  local ok = 0
  for _ = 1, 10 do
    local status, _, body = get("/t/sock/exit")
    if status == 200 and body:match("^exit") then ok = ok + 1 end
  end
  local _, _, s0 = get("/t/sock/status?key=sockexit_started")
  s0 = tonumber(s0) or 0
  local conns = {}
  for i = 1, 10 do
    conns[i] = assert(connect())
    send_get(conns[i], "/t/sock/exit?abort=0")
  end
  local started = 0
  local stop = now() + 3
  repeat
    local _, _, b = get("/t/sock/status?key=sockexit_started")
    started = (tonumber(b) or 0) - s0
    if started < 10 then socket.sleep(0.01) end
  until started >= 10 or now() > stop
  for i = 1, 10 do conns[i]:close() end
  check("ngx.exit (10) and clients gone with no on_abort handler (10) while light threads wait in "
    .. "socket calls", ok == 10 and started == 10, ("%d exits answered, %d killed requests started")
      :format(ok, started))
end

-- 2d. in a timer (ngx.timer.at)
do
  local id = tostring(os.time()) .. tostring(math.random(1e6))
  local status, _, tbody = get("/t/sock/timer?id=" .. id)
  local res
  local stop = now() + 3
  repeat
    local _, _, b = get("/t/sock/status?key=sock_timer:" .. id)
    if b ~= "nil\n" and b ~= "" then res = b:gsub("%s+$", "") end
    if not res then socket.sleep(0.02) end
  until res or now() > stop
  local st, d, e, late = (res or ""):match("^([^|]*)|([^,]*),([^,]*),([%d.%-]+)$")
  check("in a timer: a request under a deadline, and a receive cancelled from another light thread",
    status == 200 and st == "HTTP/1.1 200 OK" and d == "nil" and e == "context canceled"
      and n(late) < 0.1, ("%s; %s"):format(tostring(tbody):gsub("%s+$", ""), tostring(res)))
end

-- 3. partial data at the deadline
do
  local status, kv, body = get("/t/sock/partial")
  local e = n(kv.elapsed)
  check("a receive ended by its deadline gives nil, deadline exceeded, the partial line",
    status == 200 and kv.data == "nil" and kv.err == "context deadline exceeded"
      and kv.partial == "par" and e >= 0.19 and e < 0.4 and kv.closed_after == "false"
      and kv.second == "nil,context deadline exceeded,ab",
    ("%.3f s: %s, %s, %s; closed after: %s; then %s"):format(e, tostring(kv.data),
      tostring(kv.err), tostring(kv.partial), tostring(kv.closed_after), tostring(kv.second or body)))
end

-- 4. faults and bad arguments
do
  local status, kv, body = get("/t/sock/faults")
  local want = {
    refused = "^nil,connection refused$",
    unresolvable = "^nil,no resolver defined to resolve \"nonexistent.invalid\"$",
    done_connect = "^nil,context canceled$",
    done_receive = '^nil,context canceled,""$',
    done_send = "^nil,context canceled,0$",
    still_usable = "^HTTP/1.1 200 OK$",
    bad_ctx = "^bad argument #1 to 'receive' %(context expected, got string%)$",
    bad_count = "^bad argument #2 to 'receive' %(invalid receive pattern",
    bad_pattern = "^bad argument #2 to 'receive' %(invalid receive pattern",
    bad_data = "^bad argument #2 to 'send' %(string expected, got table%)$",
    bad_self = "^calling 'receive' on bad self",
    bad_port = "^bad argument #3 to 'connect' %(port expected",
    bad_host = "^bad argument #2 to 'connect' %(host expected",
    bad_opts = "^bad argument #4 to 'connect' %(unknown option 'pol'; did you mean 'pool'%?%)$",
    bad_wrap = "^bad argument #1 to 'wrap' %(the socket is closed",
    closed_receive = '^nil,closed,""$',
    closed_send = "^nil,closed,0$",
    close_again = "^1$",
    bind = "^lcontext.socket.bind: not available in OpenResty %(",
    http_request = "^lcontext.socket.http_request: not available in OpenResty %(",
    sendto = "^lcontext.socket.sendto: not available in OpenResty %(",
    getpeername = "^works$",
    wrapped = "^HTTP/1.1 200 OK$",
    raw_is_cos = "^true$",
    nodelay = "^true$",
  }
  local bad = {}
  for k, pat in pairs(want) do
    if not (kv[k] or ""):find(pat) then
      if not (k == "getpeername" and (kv[k] or ""):find("^lcontext.socket.getpeername: not available")) then
        bad[#bad + 1] = k .. "=" .. tostring(kv[k])
      end
    end
  end
  table.sort(bad)
  check("refused, unresolvable, done contexts, closed sockets, bad arguments, what OpenResty lacks",
    status == 200 and #bad == 0, #bad > 0 and table.concat(bad, "; ") .. (status ~= 200 and body or "")
      or ("getpeername: " .. tostring(kv.getpeername)))
end

-- 4b. nginx's defaults without a deadline; the cap
do
  local status, kv, body = get("/t/sock/defaults")
  local bd, be, bt = (kv.background or ""):match("^([^,]*),([^,]*),([%d.]+)$")
  local ld, le, lt = (kv.longer or ""):match("^([^,]*),([^,]*),([%d.]+)$")
  check("without a deadline nginx's lua_socket_read_timeout applies (150 ms: \"timeout\"); "
      .. "a deadline overrides it (300 ms); a 40-day deadline is capped, not refused",
    status == 200 and bd == "nil" and be == "timeout" and n(bt) >= 0.14 and n(bt) < 0.3
      and ld == "nil" and le == "context deadline exceeded" and n(lt) >= 0.29 and n(lt) < 0.5
      and kv.far == "HTTP/1.1 200 OK",
    ("background: %s; 300 ms deadline: %s; far: %s"):format(tostring(kv.background),
      tostring(kv.longer), tostring(kv.far or body)))
end

-- 5. UDP
do
  local status, kv, body = get("/t/sock/udp")
  local d, derr, dt = (kv.deadline or ""):match("^([^,]*),([^,]*),([%d.]+)$")
  local c, cerr, ct = (kv.cancel or ""):match("^([^,]*),([^,]*),([%d.]+)$")
  check("udp: a receive ends at its 100 ms deadline, and within a few ms of a cancel",
    status == 200 and kv.peer == "1" and d == "nil" and derr == "context deadline exceeded"
      and n(dt) >= 0.09 and n(dt) < 0.3 and c == "nil" and cerr == "context canceled" and n(ct) < 0.1,
    ("deadline: %s; cancel: %s"):format(tostring(kv.deadline), tostring(kv.cancel or body)))
end

-- 6. a client that goes away ends the upstream call (the request context)
do
  local id = tostring(os.time()) .. tostring(math.random(1e6))
  local c = assert(connect())
  send_get(c, "/t/sock/abort?id=" .. id)
  local started = false
  local stop = now() + 3
  repeat
    local _, _, body = get("/t/sock/status?key=sockabort_started:" .. id)
    started = body:match("^true") ~= nil
    if not started then socket.sleep(0.01) end
  until started or now() > stop
  socket.sleep(0.05) -- (the receive is blocked by now)
  local t_close = now()
  c:close()
  local ended
  stop = now() + 3
  repeat
    local _, _, body = get("/t/sock/status?key=sockabort_ended:" .. id)
    if body:match("^[%d.]+ ") then ended = body:gsub("%s+$", "") end
    if not ended then socket.sleep(0.01) end
  until ended or now() > stop
  local at, line, err = (ended or ""):match("^([%d.]+) (%S+) (.*)$")
  local after = n(at) - t_close
  check("a client abort ends the upstream receive at once (the request context, from_request)",
    started and line == "nil" and err == "context canceled" and after < 0.1,
    ("started %s; ended %.4f s after the close: %s"):format(tostring(started), after, tostring(ended)))
end

-- 7. what it costs
do
  local status, kv, body = get("/t/sock/cost?n=20000&m=500")
  check("costs measured (us per call)", status == 200 and kv.raw_us ~= nil
      and n(kv.fast_ops) >= 40000,
    ("buffered line: raw cosocket %s, background %s, cancellable ctx %s (op threads that "
      .. "never yielded: %s); whole request (connect+send+receive): raw cosocket %s, background %s, "
      .. "cancellable ctx %s; op threads that yielded %s (the connects and receives)"):format(tostring(kv.raw_us), tostring(kv.bg_us),
      tostring(kv.ctx_us), tostring(kv.fast_ops), tostring(kv.req_raw_us), tostring(kv.req_bg_us), tostring(kv.req_ctx_us),
      tostring(kv.waited_ops or body)))
end

-- 8. each worker idle afterwards (abort_handlers' /t/metrics)
do
  local seen, count = {}, 0
  for _ = 1, 40 do
    local status, _, body = get("/t/metrics?wait=3")
    if status == 200 then
      local w = body:match('"worker":(%d+)')
      if w and not seen[w] then
        seen[w] = body
        count = count + 1
        if count == 2 then break end
      end
    end
  end
  local bad = {}
  for w, body in pairs(seen) do
    if not body:find('"settled":true', 1, true) then bad[#bad + 1] = "worker " .. w .. ": " .. body end
  end
  check("afterwards both workers are idle: no task, wait, watch or deadline left",
    count == 2 and #bad == 0, table.concat(bad, "; "))
end

print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
