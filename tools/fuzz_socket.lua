--- tools/fuzz_socket.lua — lcontext.socket's ops for the API fuzzer
-- (tools/fuzz_api.lua, libev), against tools/peer.lua started on first use:
-- a local peer that misbehaves at random (each connection asks it for one
-- behaviour: echo, slow echo, a partial line then a stall, stall, read
-- nothing, close, reset, a burst then close).
--
--   local FK = dofile("tools/fuzz_socket.lua")(context, E)
--   E.violate(fmt, ...)   report a violation
--   E.ctx()               a context that ends within ~30 ms (sometimes done)
--   FK.ops                { name, weight, fn } entries for the op table
--   FK.check(final)       invariants; final: the loop ran dry
--   FK.finish()           close everything, stop the peer
--
-- What must hold: every call returns (never hangs: each is bounded by a
-- short context, and the op's budget), with a string, or nil and an error
-- that is a string or the context's own err (then the context is done), and
-- a partial result of the right type; a byte count received is exactly that
-- many bytes; an echo connection echoes what one task sent, in order; a
-- close while tasks wait on the socket ends their calls with "closed" at
-- once (no fd wait survives it); bad arguments raise, never crash; at the
-- end no fd wait is left.
return function(context, E)
  local R = math.random
  local violate = E.violate
  local ok_sock, socket = pcall(require, "lcontext.socket")
  local FK = { ops = {} }
  if not ok_sock or type(socket) ~= "table" then
    function FK.check() end
    function FK.finish() end
    return FK
  end
  local core = require "lcontext.core"
  local show = function(v) return type(v) == "string" and ("%q"):format(v:sub(1, 60)) or tostring(v) end
  local pcall = require("lcontext.check").pcall
  local bg = context.background()

  local peer, TPORT
  local function start_peer()
    if peer ~= nil then return TPORT ~= nil end
    local lua = os.getenv("FUZZ_PEER_LUA") or "lua5.4"
    peer = io.popen(lua .. " tools/peer.lua 30", "r")
    local line = peer and peer:read("*l")
    TPORT = line and tonumber(line:match("^(%d+)"))
    return TPORT ~= nil
  end

  local conns = {}   -- { sock, mode, closed, users, sent = {}, got = "" }
  local tasks = {}
  local MODES = { "ECHO", "ECHO", "SLOW 5", "PARTIAL", "STALL", "NOREAD", "CLOSE", "RESET", "SEND 3000", "LINES 5" }

  local function is_ctx_err(e, ctx) return e ~= nil and rawequal(e, ctx:err()) end

  local function check_result(what, ctx, r, partial_type)
    local a, err, partial = r[1], r[2], r[3]
    if a ~= nil then return true end
    if type(err) ~= "string" and not is_ctx_err(err, ctx) then
      violate("socket %s: nil and %s (neither a string nor the context's err)", what, show(err))
    end
    if is_ctx_err(err, ctx) and not ctx:is_done() then
      violate("socket %s: the context's err while it is live", what)
    end
    if partial_type and partial ~= nil and type(partial) ~= partial_type then
      violate("socket %s: partial %s is not a %s", what, show(partial), partial_type)
    end
    return false
  end

  local function open_one()
    if #conns >= 12 or not start_peer() then return end
    local ctx = E.ctx()
    local mode = MODES[R(#MODES)]
    local sock, err = socket.connect(ctx, "127.0.0.1", TPORT)
    if not sock then
      check_result("connect", ctx, { nil, err })
      return
    end
    local c = { sock = sock, mode = mode, id = #conns + 1, echo = {}, users = 0 }
    local okk, serr = sock:send(ctx, mode .. "\n")
    if not okk then
      check_result("send", ctx, { nil, serr })
      sock:close()
      return
    end
    conns[#conns + 1] = c
  end

  local function pick_conn()
    if #conns == 0 then return nil end
    return conns[R(#conns)]
  end

  -- one call on c, from the running coroutine (a task or the main thread)
  local function call(c)
    local ctx = E.ctx()
    local sock = c.sock
    local r = R(7)
    if r <= 3 then
      local line = ("m%d-%d"):format(c.id, R(1e6))
      local data = R(10) == 1 and string.rep("b", R(200000)) .. "\n" or line .. "\n"
      local res = { sock:send(ctx, data) }
      if res[1] ~= nil and res[1] ~= #data then
        violate("send of %d bytes returned %s", #data, show(res[1]))
      end
      if res[1] == nil then
        check_result("send", ctx, res, "number")
        if type(res[3]) == "number" and (res[3] < 0 or res[3] > #data) then
          violate("send: last index %s outside 0..%d", show(res[3]), #data)
        end
      end
    elseif r <= 5 then
      local n = R(3)
      local pat = n == 1 and "*l" or n == 2 and R(0, 64) or "*a"
      local res = { sock:receive(ctx, pat) }
      if res[1] ~= nil then
        if type(res[1]) ~= "string" then violate("receive gave %s", show(res[1])) end
        if type(pat) == "number" and #res[1] ~= pat then
          violate("receive(%d) gave %d bytes", pat, #res[1])
        end
        if pat == "*l" and res[1]:find("\n", 1, true) then violate("receive('*l') kept the newline") end
      else
        check_result("receive", ctx, res, "string")
      end
    elseif r == 6 then
      local okk, e = pcall(sock.receive, sock, ctx, -R(5))
      if okk then violate("receive with a negative count did not raise") end
      if not tostring(e):find("bad argument #2 to 'receive'", 1, true) then
        violate("receive with a negative count raised %s", show(e))
      end
      okk, e = pcall(sock.send, sock, ctx, {})
      if okk or not tostring(e):find("bad argument #2 to 'send'", 1, true) then
        violate("send of a table: %s", show(e))
      end
    else
      sock:getpeername()
      sock:dirty()
    end
  end

  local function task_call()
    local c = pick_conn()
    if not c then return end
    local t = E.go(function()
      c.users = c.users + 1
      call(c)
      c.users = c.users - 1
    end)
    if t then tasks[#tasks + 1] = t end
  end

  local function main_call()
    if context.in_task() then return end
    local c = pick_conn()
    if c then call(c) end
  end

  -- close a connection, maybe while tasks wait on it: they end at once
  local function close_one()
    local c = pick_conn()
    if not c then return end
    local waiting = {}
    if R(2) == 1 and not c.sock:is_closed() then -- make sure a task waits on it
      local t = E.go(function()
        local res = { c.sock:receive(bg, 1 + R(10)) }
        if res[1] == nil and res[2] ~= "closed" and type(res[2]) ~= "string" then
          violate("a receive ended by close gave %s", show(res[2]))
        end
      end)
      context.step(0)
      waiting[1] = t
    end
    c.sock:close()
    if c.sock:receive(bg, 1) ~= nil then violate("receive on a closed socket gave data") end
    for i = #conns, 1, -1 do if conns[i] == c then table.remove(conns, i) end end
    -- the waits on it are released at once: the task ends in this step
    context.step(0)
    for _, t in ipairs(waiting) do
      if t:status() == "running" then
        violate("a task waiting on a closed socket still runs\n%s", context.dump())
      end
    end
  end

  local function wrap_closed()
    local ls = require "socket"
    local raw = ls.tcp()
    raw:close()
    local okk, e = pcall(socket.wrap, raw)
    if okk or not tostring(e):find("bad argument #1 to 'wrap'", 1, true) then
      violate("wrap of a closed socket: %s", show(e))
    end
  end

  FK.ops = {
    { "sock_open", 3, open_one },
    { "sock_task", 6, task_call },
    { "sock_main", 2, main_call },
    { "sock_close", 1.5, close_one },
    { "sock_wrap_closed", 0.2, wrap_closed },
  }

  function FK.check(final)
    if not final then return end
    for _, t in ipairs(tasks) do
      if t:status() == "running" then violate("a socket task still runs at the end") end
    end
    tasks = {}
    -- close what is left; the loop must then hold no fd wait of ours
    for _, c in ipairs(conns) do c.sock:close() end
    conns = {}
  end

  function FK.finish()
    for _, c in ipairs(conns) do c.sock:close() end
    conns = {}
    if peer and TPORT then
      local ls = require "socket"
      local q = ls.tcp()
      q:settimeout(1)
      if q:connect("127.0.0.1", TPORT) then q:send("QUIT\n") end
      q:close()
    end
    if peer then peer:close() end
    peer = nil
    local s = core.sched_stats()
    return s.fd_waits
  end

  return FK
end
