-- socket_spec.lua — lcontext.socket: LuaSocket (libev) or cosockets (nginx)
-- bounded by a context. Backend-neutral (spec/ngx/shared.sh runs it in
-- nginx too); the peer is tools/peer.lua, a plain-LuaSocket process: this
-- file starts it on libev, and in nginx shared.sh does and passes its
-- ports in LCONTEXT_PEER ("<tcp port> <udp port>").
local context = require "lcontext"
local socket = require "lcontext.socket"
local S = require "spec.sched_helpers"
local B = require "spec.backend"

local bg = context.background()
local HOST = "127.0.0.1"

-- {=== the peer ===}
local peer_proc, TPORT, UPORT
local function start_peer()
  local env = os.getenv("LCONTEXT_PEER")
  if env then
    TPORT, UPORT = env:match("^(%d+)%s+(%d+)")
    TPORT, UPORT = tonumber(TPORT), tonumber(UPORT)
    return
  end
  peer_proc = assert(io.popen("lua5.4 tools/peer.lua 120", "r"))
  local line = assert(peer_proc:read("*l"), "tools/peer.lua printed no ports")
  TPORT, UPORT = line:match("^(%d+) (%d+)$")
  TPORT, UPORT = tonumber(TPORT), tonumber(UPORT)
  assert(TPORT and UPORT, "tools/peer.lua: " .. line)
end

local function stop_peer()
  if not peer_proc then return end
  local ls = require "socket"
  local c = ls.tcp()
  c:settimeout(2)
  if c:connect(HOST, TPORT) then c:send("QUIT\n") end
  c:close()
  peer_proc:close()
  peer_proc = nil
end

-- a free port with nothing listening on it
local function dead_port()
  if B.ngx then return 1 end -- (port 1: nothing listens there on loopback)
  local ls = require "socket"
  local s = assert(ls.bind(HOST, 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- connect and say how the peer behaves
local function open(ctx, mode)
  local sock = assert(socket.connect(ctx or bg, HOST, TPORT))
  assert(sock:send(ctx or bg, mode .. "\n"))
  return sock
end

local now = context.now

local guard_start, guard_check = S.task_guard()

describe("lcontext.socket", function()
  setup(start_peer)
  teardown(stop_peer)
  before_each(guard_start)
  after_each(function()
    guard_check()
    S.idle("after the test")
  end)

  describe("a connection", function()
    it("connects, sends and receives lines and byte counts", function()
      local sock = open(bg, "ECHO")
      assert.are.equal(6, sock:send(bg, "hello\n"))
      assert.are.equal("hello", sock:receive(bg))
      assert.are.equal(8, sock:send(bg, "abcdefg\n"))
      assert.are.equal("abc", sock:receive(bg, 3))
      assert.are.equal("defg", sock:receive(bg, "*l"))
      -- a prefix counts toward a byte count, as in LuaSocket
      sock:send(bg, "12345\n")
      assert.are.equal("xy123", sock:receive(bg, 5, "xy"))
      assert.are.equal("45\n", sock:receive(bg, 3))
      assert.are.equal(1, sock:close())
      assert.are.equal(1, sock:close()) -- again: nothing
    end)

    it("receives everything up to the peer's close with *a", function()
      local sock = open(bg, "LINES 3")
      assert.are.equal("line 1\nline 2\nline 3\n", sock:receive(bg, "*a"))
      sock:close()
    end)

    it("*a: what came before the close is the result, even across waits", function()
      local sock = open(bg, "LATECLOSE 3 100") -- "xxx" now, the close 100 ms later
      assert.are.equal("xxx", sock:receive(bg, "*a"))
      sock:close()
      -- nothing before the close: nil, "closed" and the prefix, as LuaSocket
      sock = open(bg, "CLOSE")
      assert.are.same({ nil, "closed", "pre" }, { sock:receive(bg, "*a", "pre") })
      sock:close()
    end)

    it("returns nil, 'closed' and the partial line when the peer closes mid-line", function()
      local sock = open(bg, "SEND 5")
      local data, err, partial = sock:receive(bg, "*l")
      assert.is_nil(data)
      assert.are.equal("closed", err)
      assert.are.equal("xxxxx", partial)
      sock:close()
    end)

    it("sends from i to j, and a large buffer whole", function()
      local sock = open(bg, "ECHO")
      assert.are.equal(6, sock:send(bg, "--abc\n---", 3, 6))
      assert.are.equal("abc", sock:receive(bg))
      local big = string.rep("y", 300000) .. "\n"
      -- the peer echoes as it reads: a task reads while the main thread sends
      local got
      local t = context.go(function() got = sock:receive(bg, #big) end)
      assert.are.equal(#big, sock:send(bg, big))
      t:wait()
      assert.are.equal(big, got)
      sock:close()
    end)
  end)

  describe("the context", function()
    it("ends a receive at its deadline, with ctx:err() and the partial data", function()
      local sock = open(bg, "PARTIAL")
      local ctx, cancel = context.with_timeout(bg, 0.2)
      local t0 = now()
      local data, err, partial = sock:receive(ctx, "*l")
      local dt = now() - t0
      assert.is_nil(data)
      assert.are.equal(ctx:err(), err)
      assert.are.equal("par", partial)
      S.at_least(dt, 0.2 - 0.01, "receive")
      S.at_most(dt, 0.2 + S.SLACK, "receive")
      cancel()
      sock:close()
    end)

    it("ends a receive at once when cancelled from another task", function()
      local sock = open(bg, "STALL")
      local ctx, cancel = context.with_cancel(bg)
      local t0, dt, r
      local t = context.go(function()
        t0 = now()
        r = { sock:receive(ctx, 10) }
        dt = now() - t0
      end)
      context.go(function()
        context.sleep(bg, 0.05)
        cancel("client went away")
      end)
      B.run()
      assert.is_nil(r[1])
      assert.are.equal(ctx:err(), r[2])
      assert.are.equal("", r[3])
      S.at_most(dt, 0.05 + S.SLACK, "cancelled receive")
      assert.are_not.equal("running", t:status())
      sock:close()
    end)

    it("bounds a sequence of calls by one deadline, not each call", function()
      local ctx, cancel = context.with_timeout(bg, 0.3)
      local t0 = now()
      local sock = open(ctx, "SLOW 200")
      local got = {}
      for i = 1, 3 do
        local ok, err = sock:send(ctx, "n" .. i .. "\n")
        if not ok then got[#got + 1] = err; break end
        local line, rerr = sock:receive(ctx)
        got[#got + 1] = line or rerr
        if not line then break end
      end
      local dt = now() - t0
      assert.are.same({ "n1", ctx:err() }, got)
      S.at_most(dt, 0.3 + S.SLACK, "three calls")
      S.at_least(dt, 0.3 - 0.01, "three calls")
      cancel()
      sock:close()
    end)

    it("ends a send that fills the buffers, with the last index sent", function()
      local sock = open(bg, "NOREAD")
      local ctx, cancel = context.with_timeout(bg, 0.2)
      local big = string.rep("z", 16 * 1024 * 1024)
      local last, err, sent = sock:send(ctx, big)
      assert.is_nil(last)
      assert.are.equal(ctx:err(), err)
      assert.is_true(sent >= 0 and sent < #big, "sent " .. tostring(sent))
      cancel()
      sock:close()
    end)

    it("fails at once on a context that is done already", function()
      local sock = open(bg, "ECHO")
      local ctx, cancel = context.with_cancel(bg)
      cancel()
      assert.are.same({ nil, ctx:err(), "" }, { sock:receive(ctx) })
      assert.are.same({ nil, ctx:err(), 0 }, { sock:send(ctx, "x\n") })
      assert.are.same({ nil, ctx:err() }, { socket.connect(ctx, HOST, TPORT) })
      -- the connection is still usable with a live context
      sock:send(bg, "still\n")
      assert.are.equal("still", sock:receive(bg))
      sock:close()
    end)

    it("ends a spawned task's receive when the task's own context ends", function()
      local sock = open(bg, "STALL")
      local tctx, tcancel = context.with_cancel(bg)
      local r
      context.spawn(tctx, function()
        r = { sock:receive(bg) }
      end)
      context.go(function() context.sleep(bg, 0.05); tcancel() end)
      B.run()
      assert.is_nil(r[1])
      assert.are.equal(tctx:err(), r[2])
      sock:close()
    end)
  end)

  describe("closing", function()
    it("is safe while a task waits on the socket: the wait ends with 'closed'", function()
      local sock = open(bg, "STALL")
      local r
      context.go(function() r = { sock:receive(bg) } end)
      context.go(function()
        context.sleep(bg, 0.05)
        sock:close()
      end)
      B.run()
      assert.are.same({ nil, "closed", "" }, r)
      assert.are.same({ nil, "closed", "" }, { sock:receive(bg) })
      assert.are.same({ nil, "closed", 0 }, { sock:send(bg, "x") })
    end)
  end)

  describe("faults", function()
    it("a refused connection is nil, err", function()
      local sock, err = socket.connect(bg, HOST, dead_port())
      assert.is_nil(sock)
      assert.matches("refused", err)
    end)

    it("a name that does not resolve is nil, err", function()
      local sock, err = socket.connect(context.with_timeout(bg, 5), "nonexistent.invalid", 80)
      assert.is_nil(sock)
      assert.are.equal("string", type(err))
    end)

    it("a reset peer is nil, err", function()
      local sock = open(bg, "RESET")
      local data, err = sock:receive(bg)
      assert.is_nil(data)
      assert.are.equal("string", type(err))
      sock:close()
    end)
  end)

  describe("bad arguments", function()
    it("are errors naming the function and argument", function()
      local sock = open(bg, "ECHO")
      assert.has_error(function() sock:receive("x") end,
        "bad argument #1 to 'receive' (context expected, got string)")
      assert.error_matches(function() sock:receive(bg, -1) end,
        "bad argument #2 to 'receive' %(invalid receive pattern")
      assert.error_matches(function() sock:receive(bg, "*x") end,
        "bad argument #2 to 'receive' %(invalid receive pattern")
      assert.error_matches(function() sock:send(bg, {}) end,
        "bad argument #2 to 'send' %(string expected, got table%)")
      assert.error_matches(function() socket.connect(bg, HOST, -5) end,
        "bad argument #3 to 'connect' %(port expected")
      assert.error_matches(function() socket.connect(nil, HOST, 80) end,
        "bad argument #1 to 'connect' %(context expected, got nil%)")
      assert.error_matches(function() socket.connect(bg, 42, 80) end,
        "bad argument #2 to 'connect' %(host expected")
      assert.error_matches(function() sock.receive({}, bg) end,
        "calling 'receive' on bad self")
      assert.error_matches(function() socket.connect(bg, HOST, TPORT, 5) end,
        "bad argument #4 to 'connect' %(table expected, got number%)")
      assert.error_matches(function() socket.connect(bg, HOST, TPORT, { nodelya = true }) end,
        "bad argument #4 to 'connect'")
      sock:close()
    end)
  end)
end)

B.describe_libev("lcontext.socket on LuaSocket", "cosockets cannot listen, and socket.http is LuaSocket's", function()
  setup(start_peer)
  teardown(stop_peer)
  before_each(guard_start)
  after_each(function()
    guard_check()
    S.idle("after the test")
  end)

  it("serves: bind, accept and a round trip between two tasks", function()
    local server = assert(socket.bind(HOST, 0))
    local _, port = server:getsockname()
    local serving, stop = context.with_cancel(bg)
    local served = 0
    context.go(function()
      while true do
        local c = server:accept(serving)
        if not c then break end
        served = served + 1
        context.go(function()
          local line = c:receive(serving)
          if line then c:send(serving, line:upper() .. "\n") end
          c:close()
        end)
      end
      server:close()
    end)
    local replies = {}
    for i = 1, 3 do
      context.go(function()
        local c = assert(socket.connect(bg, HOST, port))
        c:send(bg, "hi " .. i .. "\n")
        replies[i] = c:receive(bg)
        c:close()
      end)
    end
    context.go(function()
      while #replies < 3 or replies[1] == nil or replies[2] == nil or replies[3] == nil do
        context.sleep(bg, 0.01)
      end
      stop()
    end)
    B.run()
    assert.are.same({ "HI 1", "HI 2", "HI 3" }, replies)
    assert.are.equal(3, served)
    assert.is_true(server:is_closed())
  end)

  it("closing a server ends its accept", function()
    local server = assert(socket.bind(HOST, 0))
    local r
    context.go(function() r = { server:accept(bg) } end)
    context.go(function() context.sleep(bg, 0.02); server:close() end)
    B.run()
    assert.are.same({ nil, "closed" }, r)
  end)

  it("UDP: sendto and receivefrom, bounded by the context", function()
    local u = assert(socket.udp())
    assert(u:setsockname(HOST, 0))
    assert.is_true(u:sendto(bg, "ping", HOST, UPORT))
    local data, ip, port = u:receivefrom(bg)
    assert.are.same({ "ping", HOST, UPORT }, { data, ip, port })
    -- a datagram the peer drops: the deadline ends the wait
    u:sendto(bg, "DROP", HOST, UPORT)
    local ctx = context.with_timeout(bg, 0.05)
    local r = { u:receivefrom(ctx) }
    assert.are.same({ nil, ctx:err() }, r)
    assert.is_not_nil(r[2])
    -- connected: send and receive
    assert(u:setpeername(HOST, UPORT))
    assert.is_true(u:send(bg, "pong"))
    assert.are.equal("pong", u:receive(bg))
    assert.error_matches(function() u:receive(bg, 0) end, "bad argument #2 to 'receive'")
    u:close()
    assert.are.same({ nil, "closed" }, { u:receive(bg) })
  end)

  it("connect options: nodelay; the cosocket pool's are nginx's", function()
    local sock = assert(socket.connect(bg, HOST, TPORT, { nodelay = true }))
    assert.is_true(sock:raw():getoption("tcp-nodelay"))
    sock:close()
    assert.error_matches(function() socket.connect(bg, HOST, TPORT, { pool = "x" }) end,
      "bad argument #4 to 'connect' %(option 'pool' is the cosocket pool's: nginx only%)")
  end)

  it("wraps LuaSocket objects, and refuses closed ones", function()
    local ls = require "socket"
    local raw = ls.tcp()
    assert(raw:connect(HOST, TPORT))
    local sock = socket.wrap(raw)
    sock:send(bg, "ECHO\n")
    sock:send(bg, "wrapped\n")
    assert.are.equal("wrapped", sock:receive(bg))
    sock:close()
    assert.error_matches(function() socket.wrap(raw) end, "bad argument #1 to 'wrap' %(the socket is closed%)")
    assert.error_matches(function() socket.wrap({}) end, "bad argument #1 to 'wrap'")
  end)

  it("socket.http: a request bounded by the context, with trace headers when asked", function()
    local url = ("http://%s:%d"):format(HOST, TPORT)
    local body, code = socket.http_request(bg, url .. "/hello")
    assert.are.same({ "hello", 200 }, { body, code })
    -- the deadline ends a slow answer, and is the error
    local ctx = context.with_timeout(bg, 0.1)
    local t0 = now()
    local r, err = socket.http_request(ctx, url .. "/slow/2000")
    assert.is_nil(r)
    assert.are.equal(ctx:err(), err)
    S.at_most(now() - t0, 0.1 + S.SLACK, "http_request")
    -- trace headers: traceparent and the deadline
    local tctx = context.with_timeout(require("lcontext.trace").start(bg), 5)
    local chunks = {}
    local ok, c2 = socket.http_request(tctx, { url = url .. "/headers", trace = true,
      sink = require("ltn12").sink.table(chunks) })
    assert.are.same({ 1, 200 }, { ok, c2 })
    local got = table.concat(chunks)
    assert.matches("traceparent: 00%-%x+%-%x+%-0%d", got)
    assert.matches("grpc%-timeout: %d+", got)
    -- trace = a table: the same, and what was sent comes back in it
    local sent = {}
    chunks = {}
    socket.http_request(tctx, { url = url .. "/headers", trace = sent,
      sink = require("ltn12").sink.table(chunks) })
    assert.matches("^%x+$", sent.span_id)
    assert.matches(sent.span_id, sent.headers.traceparent, 1, true)
    assert.matches("traceparent: " .. sent.headers.traceparent:gsub("%-", "%%-"), table.concat(chunks))
    assert.error_matches(function() socket.http_request(bg, { url = url, trace = 1 }) end,
      "bad argument #2 to 'http_request' %(reqt.trace: true or a table expected")
    -- socket.http.request itself, with our create
    local t = {}
    local one = require("socket.http").request{ url = url .. "/hello",
      create = socket.http_create(bg), sink = require("ltn12").sink.table(t) }
    assert.are.same({ 1, "hello" }, { one, table.concat(t) })
  end)

  it("socket.http inside tasks, on every runtime (Lua 5.1 and LuaJIT included)", function()
    local url = ("http://%s:%d"):format(HOST, TPORT)
    local r = {}
    for i = 1, 3 do
      context.go(function()
        local ctx = context.with_timeout(bg, i == 3 and 0.05 or 5)
        r[i] = { socket.http_request(ctx, url .. (i == 3 and "/slow/2000" or "/hello")) }
        if i == 3 then r[i][3] = ctx:err() end
      end)
    end
    B.run()
    assert.are.same({ "hello", 200 }, { r[1][1], r[1][2] })
    assert.are.same({ "hello", 200 }, { r[2][1], r[2][2] })
    assert.is_nil(r[3][1])
    assert.are.equal(r[3][3], r[3][2])
    -- an error that is not LuaSocket's own still reaches the caller
    assert.is_nil((socket.http_request(bg, "http://" .. HOST .. ":" .. dead_port() .. "/")))
  end)
end)
