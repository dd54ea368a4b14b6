-- bench/io_bench.lua: lcontext.socket beside blocking LuaSocket, for `make bench`.
--
--   LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" LUA_CPATH="./build/?.so;;" \
--     lua5.4 bench/io_bench.lua
--
-- A loopback echo of 1 KiB messages, one message in flight at a time:
--   * lcontext: a client task and an echo-server task in one process, every
--     call through lcontext.socket, bounded by a context with a deadline
--     (the call suspends its task when the data is not there yet);
--   * blocking LuaSocket: the same client, blocking calls, against the same
--     echo server written with blocking calls, run in a second process (the
--     only way two blocking parties talk);
--   * the floor, informative: one process doing the four blocking calls
--     of a round trip in sequence (no party ever waits: the data is always
--     there), so the syscalls alone.
-- Each figure is the median of 5 runs, in messages per second (a message
-- is a round trip: 1 KiB out, 1 KiB back). Target: lcontext >= 0.8x the
-- blocking LuaSocket figure.
local ls = require "socket"
local context = require "lcontext"
local lsock = require "lcontext.socket"

local SCALE = tonumber(os.getenv("BENCH_SCALE")) or 1
local N = math.max(200, math.floor(20000 * SCALE))
local MSG = string.rep("m", 1023) .. "\n"
local HOST = "127.0.0.1"
local now = ls.gettime

local function median(xs)
  table.sort(xs)
  return xs[math.ceil(#xs / 2)]
end

-- lcontext: both parties are tasks
local function run_lcontext(n)
  local bg = context.background()
  local ctx, cancel = context.with_timeout(bg, 600)
  local server = assert(lsock.bind(HOST, 0))
  local _, port = server:getsockname()
  context.go(function()
    local c = assert(server:accept(ctx))
    while true do
      local m = c:receive(ctx, 1024)
      if not m then break end
      c:send(ctx, m)
    end
    c:close()
    server:close()
  end)
  local t0, t1
  context.go(function()
    local c = assert(lsock.connect(ctx, HOST, port))
    t0 = now()
    for _ = 1, n do
      c:send(ctx, MSG)
      local m = c:receive(ctx, 1024)
      assert(m and #m == 1024)
    end
    t1 = now()
    c:close()
  end)
  context.run()
  cancel()
  return n / (t1 - t0)
end

-- the blocking echo server, in a second process: prints its port
local SERVER = [[
local ls = require "socket"
local s = assert(ls.bind("127.0.0.1", 0))
local _, port = s:getsockname()
io.stdout:write(port, "\n"); io.stdout:flush()
local c = assert(s:accept())
c:setoption("tcp-nodelay", true)
while true do
  local m = c:receive(1024)
  if not m then break end
  c:send(m)
end
]]

local function run_blocking(n)
  local lua = os.getenv("LUA") or "lua5.4"
  local path = os.tmpname()
  local fh = assert(io.open(path, "w"))
  fh:write(SERVER)
  fh:close()
  local p = assert(io.popen(lua .. " " .. path, "r"))
  local port = tonumber(p:read("*l"))
  local c = assert(ls.connect(HOST, port))
  c:setoption("tcp-nodelay", true)
  local t0 = now()
  for _ = 1, n do
    c:send(MSG)
    local m = c:receive(1024)
    assert(m and #m == 1024)
  end
  local t1 = now()
  c:close()
  p:close()
  os.remove(path)
  return n / (t1 - t0)
end

local function run_floor(n)
  local s = assert(ls.bind(HOST, 0))
  local _, port = s:getsockname()
  local c = assert(ls.connect(HOST, port))
  local a = assert(s:accept())
  c:setoption("tcp-nodelay", true)
  a:setoption("tcp-nodelay", true)
  local t0 = now()
  for _ = 1, n do
    c:send(MSG)
    a:send(a:receive(1024))
    local m = c:receive(1024)
    assert(m and #m == 1024)
  end
  local t1 = now()
  c:close(); a:close(); s:close()
  return n / (t1 - t0)
end

local function best(f)
  local xs = {}
  for i = 1, 5 do xs[i] = f(N) end
  return median(xs)
end

local lc, bl, fl = best(run_lcontext), best(run_blocking), best(run_floor)
print("")
print(("loopback echo of 1 KiB messages (%d round trips, median of 5), messages/s"):format(N))
print(("  lcontext.socket, two tasks, every call context-bound  %8.0f"):format(lc))
print(("  blocking LuaSocket, client and server processes      %8.0f"):format(bl))
print(("  floor: the 4 blocking calls in sequence, one process  %8.0f"):format(fl))
print(("  lcontext / blocking LuaSocket = %.2fx (target >= 0.8x: %s); / floor = %.2fx")
  :format(lc / bl, lc / bl >= 0.8 and "met" or "short", lc / fl))
