-- client.lua PORT — the HTTP side of spec/ngx/run.sh: checks the handlers
-- of examples/openresty/ in a running nginx on 127.0.0.1:PORT. Lua 5.4 +
-- LuaSocket; loopback only; every wait bounded. Prints `ok - ...` /
-- `not ok - ...` lines, then `N passed, N failed`; exits non-zero on a
-- failure.
local socket = require "socket"

local PORT = assert(tonumber(arg[1]), "usage: client.lua PORT")
local now = socket.gettime
local passed, failed = 0, 0

local function check(name, ok, detail)
  if ok then
    passed = passed + 1
    print("ok - " .. name .. (detail and ("  (" .. detail .. ")") or ""))
  else
    failed = failed + 1
    print("not ok - " .. name .. (detail and ("  (" .. detail .. ")") or ""))
  end
end

local function connect(timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 5)
  local ok, err = c:connect("127.0.0.1", PORT)
  if not ok then return nil, err end
  return c
end

local function send_get(c, path, headers)
  local lines = { "GET " .. path .. " HTTP/1.0", "Host: lcontext-test" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  return c:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
end

-- GET path -> status, body, seconds (nil, err on a transport error)
local function get(path, headers, timeout)
  local t0 = now()
  local c, err = connect(timeout)
  if not c then return nil, err end
  send_get(c, path, headers)
  local data, rerr, partial = c:receive("*a")
  c:close()
  data = data or partial
  if not data or data == "" then return nil, rerr end
  local status = tonumber(data:match("^HTTP/%d%.%d (%d+)"))
  local body = (data:match("\r\n\r\n(.*)$") or ""):gsub("%s+$", "")
  return status, body, now() - t0
end

local function sleep(s) socket.sleep(s) end

-- poll /api/status?key=K until it says `want` (or `timeout` seconds pass)
local function wait_status(key, want, timeout)
  local stop = now() + (timeout or 2)
  local last
  repeat
    local _, body = get("/api/status?key=" .. key)
    last = body
    if body == want then return true, body end
    sleep(0.01)
  until now() > stop
  return false, last
end

local run_id = tostring(os.time()) .. tostring(math.random(1e6))

-------------------------------------------------------------------------------
-- 1. the request deadline wins over a slow upstream: 504 within the deadline
-------------------------------------------------------------------------------
local BUDGET = 0.3
-- scheduling noise on a loaded machine; the slow upstream takes 1 s, so
-- an answer before BUDGET + SLACK still shows the deadline ended it
local SLACK = 0.4

do
  local status, body, secs = get("/api/deadline?delay=1", { ["x-request-timeout-ms"] = ("%d"):format(BUDGET * 1000) })
  check("deadline propagated to the upstream: 504 within the request deadline",
    status == 504 and secs and secs < BUDGET + SLACK and secs > BUDGET - 0.05,
    ("status %s in %.3f s: %s"):format(tostring(status), secs or -1, tostring(body)))

  status, body, secs = get("/api/deadline?delay=1&propagate=0", { ["x-request-timeout-ms"] = ("%d"):format(BUDGET * 1000) })
  check("deadline not propagated: our own wait ends it, 504 within the request deadline",
    status == 504 and secs and secs < BUDGET + SLACK and secs > BUDGET - 0.05
      and body == "deadline: context deadline exceeded",
    ("status %s in %.3f s: %s"):format(tostring(status), secs or -1, tostring(body)))

  local ok, cause = wait_status("slow_last_cause", "client aborted", 2)
  check("the abandoned upstream request is cancelled when we hang up", ok,
    "its cause: " .. tostring(cause))

  status, body, secs = get("/api/deadline?delay=0.05", { ["x-request-timeout-ms"] = ("%d"):format(BUDGET * 1000) })
  check("a fast upstream answers inside the deadline: 200",
    status == 200 and body == "upstream: slow reply",
    ("status %s in %.3f s: %s"):format(tostring(status), secs or -1, tostring(body)))
end

-------------------------------------------------------------------------------
-- 2. a client that disconnects cancels the request context
-------------------------------------------------------------------------------
do
  local id = run_id .. "a"
  local c = assert(connect())
  send_get(c, "/api/abortable?id=" .. id)
  local started = wait_status("started:" .. id, "true", 2)
  local t0 = now()
  c:close()
  local ok, cause = wait_status("done:" .. id, "client aborted", 2)
  check("a client that disconnects cancels the request context (cause \"client aborted\")",
    started and ok, ("started %s, cause %s, %.3f s after the close"):format(
      tostring(started), tostring(cause), now() - t0))
end

-------------------------------------------------------------------------------
-- 3. parallel light threads under one context all stop when it is cancelled
-------------------------------------------------------------------------------
do
  local status, body, secs = get("/api/fanout?n=12")
  local n, total, cause, last = (body or ""):match("^stopped (%d+) of (%d+), cause (%S+), last ([%d.]+) s")
  check("parallel light threads under one context all stop when it is cancelled",
    status == 200 and n == "12" and total == "12" and cause == "enough"
      and tonumber(last) < 0.25 and secs < 0.1 + SLACK + 0.2,
    ("status %s in %.3f s: %s"):format(tostring(status), secs or -1, tostring(body)))
end

-------------------------------------------------------------------------------
-- 4. retry with backoff inside a request
-------------------------------------------------------------------------------
do
  local status, body = get("/api/retry?key=" .. run_id .. "r&fail=2")
  local elapsed = tonumber((body or ""):match("elapsed ([%d.]+)"))
  check("retry with backoff inside a request: 3 attempts, delays 0.05 then 0.10",
    status == 200 and (body or ""):find("^attempts 3, result ok on call 3, delays 0.05,0.10,")
      and elapsed and elapsed >= 0.15 - 0.002,
    tostring(body))

  status, body = get("/api/retry?key=" .. run_id .. "d&fail=99", { ["x-request-timeout-ms"] = "250" })
  elapsed = tonumber((body or ""):match("elapsed ([%d.]+)"))
  check("retry gives up when the next backoff would pass the request deadline",
    status == 200 and (body or ""):find("result nil %(status 503, deadline%)")
      and elapsed and elapsed < 0.25,
    tostring(body))
end

-------------------------------------------------------------------------------
-- 5. a breaker shared by two workers opens for both
-------------------------------------------------------------------------------
do
  local states = {}
  for _ = 1, 3 do
    local _, body = get("/api/breaker?fail=1")
    states[#states + 1] = body
  end
  local opened = (states[3] or ""):find("breaker open$") ~= nil
  local w0 = wait_status("breaker:0", "open", 2)
  local w1 = wait_status("breaker:1", "open", 2)
  -- and calls on new connections, whichever worker takes them, are refused
  local workers, refused, calls = {}, 0, 20
  for _ = 1, calls do
    local _, body = get("/api/breaker")
    local w = (body or ""):match("^worker (%d+): circuit breaker is open, breaker open$")
    if w then
      refused = refused + 1
      workers[w] = true
    end
  end
  local seen = {}
  for w in pairs(workers) do seen[#seen + 1] = w end
  table.sort(seen)
  check("a breaker shared by two workers opens for both",
    opened and w0 and w1 and refused == calls,
    ("after 3 failures: %s; worker 0 sees open: %s, worker 1: %s; %d/%d calls refused, by workers %s")
      :format(tostring(states[3]), tostring(w0), tostring(w1), refused, calls, table.concat(seen, ",")))
end

-------------------------------------------------------------------------------
-- 6. many deadlines, one driver timer per worker (lua_max_pending_timers 64)
-------------------------------------------------------------------------------
do
  local status, body = get("/api/many?n=300")
  local d, n, cb, starts = (body or ""):match("^deadlines (%d+) of (%d+), callbacks (%d+), driver starts (%d+)")
  check("300 deadlines and after_funcs fire with lua_max_pending_timers 64",
    status == 200 and d == "300" and n == "300" and cb == "300",
    tostring(body))
  local _, metrics = get("/metrics")
  metrics = "\n" .. (metrics or "") .. "\n"
  -- (waits and tasks of light threads that ngx.exit killed are counted
  -- until the garbage collector takes them: not checked here)
  check("/metrics: the lcontext_ngx_* families, no driver failure",
    metrics:find("\nlcontext_ngx_driver_failures_total 0\n") ~= nil
      and metrics:find("\nlcontext_ngx_driver_starts_total %d+\n") ~= nil,
    (metrics:match("\n(lcontext_ngx_driver_failures_total [^\n]*)") or "?") .. ", "
      .. (metrics:match("\n(lcontext_tasks_waiting [^\n]*)") or "?") .. ", "
      .. (metrics:match("\n(lcontext_tasks [^\n]*)") or "?"))
  local _ = starts
end

-------------------------------------------------------------------------------
-- 7. requests that die while their light threads wait in lcontext: every
-- wait is released, and each worker's figures go back to idle
-------------------------------------------------------------------------------
-- a flat JSON object of numbers and booleans -> table
local function parse_json(body)
  local t = {}
  for k, v in (body or ""):gmatch('"([%w_]+)":([%w%.%-]+)') do
    if v == "true" then t[k] = true
    elseif v == "false" then t[k] = false
    else t[k] = tonumber(v) end
  end
  return t
end

-- the figures of each worker (/t/metrics: after two full collections, once
-- idle or after `wait` seconds), by worker id; new connections until both
-- workers have answered (reuseport spreads them), bounded
local function worker_metrics(wait)
  local seen, n = {}, 0
  for _ = 1, 60 do
    local status, body = get("/t/metrics?wait=" .. (wait or 3), nil, 10)
    if status == 200 then
      local m = parse_json(body)
      if m.worker and not seen[m.worker] then
        seen[m.worker] = m
        n = n + 1
        if n == 2 then break end
      end
    end
  end
  return seen, n
end

local IDLE = { live_contexts = 0, ngx_watch_errors = 0, tasks = 0, tasks_waiting = 0, callbacks_pending = 0, ngx_watches = 0,
  ngx_sema_waiters = 0, ngx_driver_running = false, timers_pending = 0 }

-- "" if every worker is idle, else what is not
local function not_idle(ms)
  local bad = {}
  for w, m in pairs(ms) do
    for k, want in pairs(IDLE) do
      if m[k] ~= want then bad[#bad + 1] = ("worker %d: %s=%s"):format(w, k, tostring(m[k])) end
    end
  end
  table.sort(bad)
  return table.concat(bad, ", ")
end

local function summary(ms)
  local out = {}
  for w, m in pairs(ms) do
    out[#out + 1] = ("worker %d: tasks %s, waiting %s, callbacks %s, watches %s, contexts %s, "
      .. "driver %s, %d tries"):format(w, tostring(m.tasks), tostring(m.tasks_waiting),
      tostring(m.callbacks_pending), tostring(m.ngx_watches), tostring(m.live_contexts),
      tostring(m.ngx_driver_running), m.tries or -1)
  end
  table.sort(out)
  return table.concat(out, "; ")
end

local before, nb = worker_metrics()
check("/t/metrics: both workers idle before the load", nb == 2 and not_idle(before) == "",
  nb .. " workers; " .. not_idle(before))

-- Requests that die mid-wait (LCONTEXT_NGX_ABORTS=0 leaves them out). They
-- once met a worker that spun (docs/openresty.md, "A worker that spun");
-- make ngx-spin repeats this whole run as its stress test.
if os.getenv("LCONTEXT_NGX_ABORTS") ~= "0" then
  -- 200 requests whose light threads wait every way (done, sleep, select,
  -- task:wait, group, after_func; with deadlines), closed by the client a
  -- few ms after sending; half with the request's context cancelled by
  -- ngx.on_abort, half killed by ngx_lua mid-wait (no on_abort handler).
  -- Interleaved: on_abort-cancelled and killed requests side by side, 10
  -- open at a time (what met the spinning worker most often);
  -- LCONTEXT_NGX_MIX=0 sends the first half, then the second.
  local MIX = os.getenv("LCONTEXT_NGX_MIX") ~= "0"
  local ways = { "done", "sleep", "select", "task", "group", "all" }
  local N, CONC = 200, 10
  local open, sent, failed_connect = {}, 0, 0
  local t0 = now()
  local _, started0 = get("/api/status?key=hold_started")
  local _, ended1_0 = get("/api/status?key=hold_ended:1")
  local second_half = false
  while sent < N and now() - t0 < 60 do
    if not MIX and sent == N / 2 and not second_half then
      -- the first half closed and ended (on_abort cancels their contexts):
      -- then the second, alone
      if #open == 0 then
        local stop = now() + 5
        repeat
          local _, e = get("/api/status?key=hold_ended:1")
          if (tonumber(e) or 0) - (tonumber(ended1_0) or 0) >= N / 2 * 0.8 then break end
          sleep(0.02)
        until now() > stop
        second_half = true
      end
    end
    while #open < CONC and sent < N and (MIX or sent ~= N / 2 or second_half) do
      sent = sent + 1
      local c = connect(2)
      if c then
        local abort = MIX and sent % 2 or (sent <= N / 2 and 1 or 0)
        send_get(c, ("/t/hold?how=%s&abort=%d"):format(ways[(sent // 2) % #ways + 1], abort))
        open[#open + 1] = { c = c, at = now() + 0.001 * (1 + sent % 8) }
      else
        failed_connect = failed_connect + 1
      end
    end
    sleep(0.001)
    for i = #open, 1, -1 do
      if now() >= open[i].at then
        open[i].c:close()
        table.remove(open, i)
      end
    end
  end
  for _, o in ipairs(open) do o.c:close() end
  -- every request reached its handler (nginx reads the request before it
  -- notices the close)
  local ok_started, last
  local stop = now() + 10
  repeat
    local _, body = get("/api/status?key=hold_started")
    last = (tonumber(body) or 0) - (tonumber(started0) or 0)
    ok_started = last >= N - failed_connect
    if not ok_started then sleep(0.05) end
  until ok_started or now() > stop
  -- the half whose context on_abort cancels end the ordinary way; most of
  -- the other half are killed mid-wait by ngx_lua (a close that came before
  -- the handler watched for it is missed: those end at their deadline)
  local _, e1 = get("/api/status?key=hold_ended:1")
  local _, e0 = get("/api/status?key=hold_ended:0")
  local killed = N / 2 - (tonumber(e0) or 0)
  check("200 requests closed by the client while their light threads wait in lcontext",
    ok_started and failed_connect == 0 and killed >= N / 4,
    ("%d handlers started, %d connects failed, %s ended by on_abort, %d of %d not ended (killed mid-wait), %.2f s")
      :format(last, failed_connect, tostring(e1), killed, N / 2, now() - t0))

  -- ngx.exit while light threads wait
  local exits, n_exit = 0, 30
  for _ = 1, n_exit do
    local status, body = get("/t/exit", nil, 5)
    if status == 200 and (body or ""):find("^exit with %d+ light threads waiting$") then
      exits = exits + 1
    end
  end
  check("ngx.exit while light threads wait: 30 requests answered", exits == n_exit,
    exits .. " of " .. n_exit)

  -- nginx's own timeout (client_body_timeout 100ms) ends requests whose
  -- light threads wait while the entry thread reads a body that never comes
  -- (nginx closes the connection without a response: its log phase counts)
  local n_body = 20
  local _, b0 = get("/api/status?key=body_status:408")
  b0 = tonumber(b0) or 0
  local t1 = now()
  for _ = 1, n_body do
    local c = connect(5)
    if c then
      c:send("POST /t/body HTTP/1.0\r\nHost: lcontext-test\r\nContent-Length: 100\r\n\r\n0123456789")
      c:receive("*a") -- until nginx closes it
      c:close()
    end
  end
  local _, b1 = get("/api/status?key=body_status:408")
  local timeouts = (tonumber(b1) or 0) - b0
  check("client_body_timeout (100 ms) ends 20 requests whose light threads wait: 408 each",
    timeouts == n_body, ("%d of %d in %.2f s"):format(timeouts, n_body, now() - t1))

  local after, na = worker_metrics(5)
  local bad = not_idle(after)
  check("after the dead requests, both workers are idle again: no task, wait, watch, "
    .. "semaphore waiter, callback, deadline or context of theirs left; the driver stopped",
    na == 2 and bad == "", na .. " workers; " .. (bad ~= "" and bad or summary(after)))
end

-------------------------------------------------------------------------------
-- 8. no worker spins: under load (16 concurrent /api/many, 300 deadlines
-- and after_funcs each, lua_max_pending_timers 64), then idle: the loop
-- pass counters stand still and the workers use next to no CPU
-------------------------------------------------------------------------------
-- a process's CPU seconds (user + system), from /proc
local function cpu_seconds(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local stat = f:read("*a")
  f:close()
  local rest = stat:match("%) (.*)$") -- after the command name
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  -- utime and stime are fields 14 and 15; `rest` starts at field 3
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- (USER_HZ)
end

do
  local N, CONC = 32, 16
  local live, started, answered, good = {}, 0, 0, 0
  local t0 = now()
  while answered < N and now() - t0 < 60 do
    while #live < CONC and started < N do
      started = started + 1
      local c = connect(5)
      if c then
        send_get(c, "/api/many?n=300")
        c:settimeout(0)
        live[#live + 1] = { c = c, buf = {} }
      else
        answered = answered + 1
      end
    end
    local socks = {}
    for i, l in ipairs(live) do socks[i] = l.c end
    socket.select(socks, nil, 0.5)
    for i = #live, 1, -1 do
      local l = live[i]
      local data, err, part = l.c:receive(8192)
      local d = data or part
      if d and #d > 0 then l.buf[#l.buf + 1] = d end
      if err == "closed" then
        local body = table.concat(l.buf)
        if body:match("^HTTP/%d%.%d 200") and body:find("deadlines 300 of 300", 1, true) then
          good = good + 1
        end
        l.c:close()
        table.remove(live, i)
        answered = answered + 1
      end
    end
  end
  for _, l in ipairs(live) do l.c:close() end
  check("32 /api/many (300 deadlines and after_funcs each), 16 at a time, all answer",
    good == N, ("%d of %d in %.2f s"):format(good, N, now() - t0))

  local a, na = worker_metrics(5)
  local cpu0 = {}
  for w, m in pairs(a) do cpu0[w] = cpu_seconds(m.pid) end
  sleep(1)
  local b, nb2 = worker_metrics(5)
  local bad = {}
  for w, m in pairs(b) do
    local before_m = a[w]
    local c1 = cpu_seconds(m.pid)
    if not before_m or before_m.pid ~= m.pid then
      bad[#bad + 1] = ("worker %d: a new pid"):format(w)
    else
      for _, k in ipairs({ "ngx_wait_passes", "ngx_driver_passes" }) do
        if m[k] ~= before_m[k] then
          bad[#bad + 1] = ("worker %d: %s %s -> %s while idle"):format(w, k, tostring(before_m[k]), tostring(m[k]))
        end
      end
      local used = (c1 or 99) - (cpu0[w] or 0)
      -- a spinning worker burns ~1 s of CPU in this second; an idle one, a
      -- few ms (the metrics requests' collections), more on a loaded machine
      if used > 0.3 then bad[#bad + 1] = ("worker %d: %.2f s of CPU in 1 s idle"):format(w, used) end
    end
  end
  table.sort(bad)
  local forced = 0
  for _, m in pairs(b) do forced = forced + (m.ngx_yields_forced or 0) end
  check("then idle: both workers settle, their loops stand still, they use next to no CPU",
    na == 2 and nb2 == 2 and not_idle(b) == "" and #bad == 0,
    ("%s%s; %d forced yields so far"):format(table.concat(bad, ", "),
      not_idle(b) ~= "" and (" " .. not_idle(b)) or "", forced))
end

print(("%d passed, %d failed"):format(passed, failed))
os.exit(failed == 0 and 0 or 1)
