-- tools/peer.lua — a local peer for the socket specs and the fuzzer, written
-- with plain LuaSocket (socket.select), independent of lcontext.
--
--   lua5.4 tools/peer.lua [idle_seconds]
--
-- Listens on 127.0.0.1 (TCP and UDP, free ports) and prints one line:
-- `<tcp port> <udp port>`. Exits after `idle_seconds` (default 120) with
-- no connection, or on a connection whose first line is QUIT.
--
-- A TCP connection's first line says how the peer behaves:
--   ECHO            echo every line back (with its "\n")
--   SLOW ms         echo every line back, ms milliseconds later
--   PARTIAL         send "par" (no newline) and then nothing
--   STALL           read everything, never answer
--   NOREAD          read nothing at all (the client's sends fill the buffers)
--   CLOSE           close at once
--   RESET           close with a reset (SO_LINGER 0)
--   SEND n          send n bytes ("x"...), then close
--   LINES n         send n lines "line <i>", then close
--   LATECLOSE n ms  send n bytes ("x"...) at once, close ms milliseconds later
--   GET /path ...   HTTP/1.x: read the head, then answer
--                   /hello -> "hello"; /slow/<ms> -> "slow" after ms;
--                   /headers -> the request's headers, one per line
-- UDP: every datagram is sent back to its sender, except "DROP".
local socket = require "socket"

local idle = tonumber(arg and arg[1]) or 120

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local udp = assert(socket.udp())
assert(udp:setsockname("127.0.0.1", 0))
udp:settimeout(0)
local _, tport = server:getsockname()
local _, uport = udp:getsockname()
io.stdout:write(tport, " ", uport, "\n")
io.stdout:flush()

local conns = {}   -- sock -> state
local timers = {}  -- {at, fn}
local last_activity = socket.gettime()
local quit = false

local function later(ms, fn)
  timers[#timers + 1] = { at = socket.gettime() + ms / 1000, fn = fn }
end

local function drop(c)
  conns[c.sock] = nil
  c.sock:close()
  c.dead = true
end

local function out(c, s)
  if c.dead then return end
  c.out = c.out .. s
end

local function http(c, head)
  local path = head[1]:match("^%u+ (%S+)") or "/"
  local function answer(body)
    out(c, "HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body)
    c.close_after = true
  end
  local ms = path:match("^/slow/(%d+)")
  if ms then
    later(tonumber(ms), function() answer("slow") end)
  elseif path == "/headers" then
    local lines = {}
    for i = 2, #head do lines[#lines + 1] = head[i]:lower() end
    answer(table.concat(lines, "\n") .. "\n")
  else
    answer("hello")
  end
end

local function on_line(c, line)
  if c.mode == nil then
    local cmd, a = line:match("^(%u+)%s*(%S*)")
    c.mode = cmd
    if cmd == "QUIT" then quit = true; drop(c)
    elseif cmd == "PARTIAL" then out(c, "par")
    elseif cmd == "CLOSE" then drop(c)
    elseif cmd == "RESET" then c.sock:setoption("linger", { on = true, timeout = 0 }); drop(c)
    elseif cmd == "SEND" then out(c, string.rep("x", tonumber(a) or 0)); c.close_after = true
    elseif cmd == "LATECLOSE" then
      local ms = tonumber(line:match("^%u+%s+%d+%s+(%d+)")) or 50
      out(c, string.rep("x", tonumber(a) or 0))
      later(ms, function() c.close_after = true end)
    elseif cmd == "LINES" then
      for i = 1, tonumber(a) or 0 do out(c, "line " .. i .. "\n") end
      c.close_after = true
    elseif cmd == "SLOW" then c.delay = tonumber(a) or 100
    elseif cmd == "GET" or cmd == "POST" or cmd == "HEAD" then
      c.mode = "HTTP"; c.head = { line }
    end
    return
  end
  if c.mode == "ECHO" then out(c, line .. "\n")
  elseif c.mode == "SLOW" then later(c.delay, function() out(c, line .. "\n") end)
  elseif c.mode == "HTTP" and c.head then
    if line == "" or line == "\r" then
      local head = c.head
      c.head = nil
      http(c, head)
    else
      c.head[#c.head + 1] = (line:gsub("\r$", ""))
    end
  end
end

while not quit do
  local now = socket.gettime()
  -- timers due
  local i = 1
  while i <= #timers do
    if timers[i].at <= now then
      local t = table.remove(timers, i)
      t.fn()
    else
      i = i + 1
    end
  end
  local rd, wr = { server, udp }, {}
  for s, c in pairs(conns) do
    if c.mode ~= "NOREAD" then rd[#rd + 1] = s end
    if #c.out > 0 then wr[#wr + 1] = s end
    if #c.out == 0 and c.close_after and not c.dead then drop(c) end
  end
  local wait = 0.05
  for _, t in ipairs(timers) do wait = math.min(wait, math.max(0, t.at - now)) end
  local r, w = socket.select(rd, wr, wait)
  if next(conns) ~= nil or #r > 0 then last_activity = socket.gettime() end
  if socket.gettime() - last_activity > idle then break end
  for _, s in ipairs(r) do
    if s == server then
      local cs = server:accept()
      if cs then
        cs:settimeout(0)
        conns[cs] = { sock = cs, out = "", buf = "" }
      end
    elseif s == udp then
      local data, ip, port = udp:receivefrom()
      if data and data ~= "DROP" then udp:sendto(data, ip, port) end
    else
      local c = conns[s]
      if c then
        local data, err, partial = s:receive(8192)
        data = data or partial
        if data and #data > 0 and c.mode ~= "STALL" then
          c.buf = c.buf .. data
          while not c.dead do
            local nl = c.buf:find("\n", 1, true)
            if not nl then break end
            local line = c.buf:sub(1, nl - 1)
            c.buf = c.buf:sub(nl + 1)
            on_line(c, line)
            if c.mode == "STALL" then c.buf = "" break end
          end
        end
        if err == "closed" and not c.dead then drop(c) end
      end
    end
  end
  for _, s in ipairs(w) do
    local c = conns[s]
    if c and #c.out > 0 then
      local last, err, sent = s:send(c.out)
      local n = last or sent or 0
      c.out = c.out:sub(n + 1)
      if err == "closed" then drop(c) end
    end
  end
end
server:close()
udp:close()
