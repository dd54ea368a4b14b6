--- lcontext.ngx_socket: cosockets (ngx.socket.tcp / udp) bounded by a
-- context, inside nginx. `require "lcontext.socket"` gives this module
-- there (lua/lcontext/socket.lua); the API is that module's (README, "I/O";
-- docs/openresty.md, "Sockets (cosockets)").
--
--   local socket = require "lcontext.socket"
--   local sock, err = socket.connect(ctx, "127.0.0.1", 8080)
--   sock:send(ctx, "GET / HTTP/1.0\r\n\r\n")
--   local line, err, partial = sock:receive(ctx, "*l")
--
-- How a call is bounded by its context:
--   * Its timeout: before each operation the cosocket's timeout is set to
--     what is left of the context (and of the running task's own context,
--     when it runs in a spawned task), so a sequence of calls fits one
--     budget. Without a deadline, nginx's own defaults apply
--     (lua_socket_connect_timeout, lua_socket_send_timeout,
--     lua_socket_read_timeout: 60 s each unless configured).
--   * An early end (a cancel, a client abort, the task's bound): the
--     operation runs in a light thread of its own (the "op thread",
--     ngx.thread.spawn), while the caller waits on a child of the context
--     that the op thread cancels when it is done. When the context ends
--     first, the caller kills the op thread (ngx.thread.kill: ngx_lua
--     aborts the pending operation) and closes the cosocket, which cannot
--     be trusted any more, and returns nil, ctx:err(). An operation that
--     completes without yielding (data already buffered, a send the kernel
--     takes at once) costs one spawn and one ngx.thread.wait, no lcontext
--     wait. Even on a context that can never end (background) the op
--     thread is needed: close() from another light thread must end it;
--     there the caller waits on a plain ngx.semaphore that the op thread
--     and close() post, not in lcontext.
--   * A deadline: the op thread's own timeout ends the operation at the
--     deadline, with what a cosocket returns then (the partial data); the
--     caller reports ctx:err() in place of "timeout".
--   * close() from another light thread while a call waits: the waiting
--     caller is woken, kills its op thread, closes the cosocket, and returns
--     nil, "closed".
--
-- Written for LuaJIT / Lua 5.1 (ngx_lua).
local ngx = ngx
if type(ngx) ~= "table" or type(ngx.socket) ~= "table" or type(ngx.thread) ~= "table" then
  error("lcontext.ngx_socket needs ngx_lua (OpenResty); outside nginx use require \"lcontext.socket\"", 2)
end

local context = require "lcontext.ngx"
local check = require "lcontext.check"

local type, tostring, setmetatable, getmetatable, pairs, next = type, tostring, setmetatable,
  getmetatable, pairs, next
local error, pcall, tonumber = error, pcall, tonumber
local floor, ceil, huge = math.floor, math.ceil, math.huge
local ssub = string.sub
local running = coroutine.running
local argerr, check_ctx, tname = check.argerr, check.ctx, check.tname
local bound = check.bound
local bound_ctx, MAIN = bound.ctx, bound.MAIN

local ngx_tcp, ngx_udp = ngx.socket.tcp, ngx.socket.udp
local spawn, kill, twait = ngx.thread.spawn, ngx.thread.kill, ngx.thread.wait
local ngx_now, update_time = ngx.now, ngx.update_time

local with_cancel = context.with_cancel
local DEADLINE = context.deadline_exceeded
local BG, TODO = context.background(), context.todo()
local semaphore = require "ngx.semaphore"

local S = {}

-- figures (the tests read them): operations, and how they went
local stats = {
  ops = 0,        -- operations started (connect, send, receive)
  fast = 0,       -- op thread that finished without yielding
  waited = 0,     -- op thread that yielded: the caller waited for it
  killed = 0,     -- op threads killed (the context ended first, or close)
  own_timeout = 0, -- ended by the cosocket's own timeout at the deadline
}
S._stats = stats

-- the longest timeout a cosocket takes (ms: a C int); 0 = nginx's default
local MAX_MS = 2147483647
-- a deadline that ended the wait while the op thread's own timer is due
-- within this many seconds: let that timer end it (the partial data)
local OWN_TIMER_SLACK = 0.02
-- sends larger than this go in chunks of it: the last index known to be
-- sent can then be told when the send ends early
local CHUNK = 65536

-------------------------------------------------------------------------------
-- Argument checks, in luaL_argerror's words (the same as the libev version's)
-------------------------------------------------------------------------------
local Sock, Udp = {}, {}
Sock.__index, Sock.__name = Sock, "lcontext.socket"
Udp.__index, Udp.__name = Udp, "lcontext.socket.udp"

local function self_check(self, mt, fname)
  if getmetatable(self) ~= mt then
    error(("calling '%s' on bad self (%s expected, got %s)"):format(fname, mt.__name, tname(self)), 3)
  end
end

local check_pattern, check_string, check_index = check.recv_pattern, check.data, check.index
local check_port, check_host = check.port, check.host

local CONNECT_OPTS = check.names { "pool", "pool_size", "backlog", "nodelay" }

-------------------------------------------------------------------------------
-- Timeouts
-------------------------------------------------------------------------------

-- the running task's bound (context.spawn), or nil
local function task_bound()
  if not bound.active then return nil end
  return bound_ctx[running() or MAIN]
end

-- seconds left before ctx or the task's bound b ends by a deadline, or nil
local function left(ctx, b)
  local r = ctx:remaining()
  if b then
    local br = b:remaining()
    if br and (not r or br < r) then r = br end
  end
  return r
end

-- the milliseconds for settimeout: what is left (at least 1, at most
-- MAX_MS), or 0 (nginx's configured defaults) without a deadline
local function timeout_ms(r)
  if not r then return 0 end
  local ms = ceil(r * 1000)
  if ms < 1 then ms = 1 elseif ms > MAX_MS then ms = MAX_MS end
  return ms
end

-------------------------------------------------------------------------------
-- Running an operation
-------------------------------------------------------------------------------

-- close the cosocket of a wrapper that was closed, once no op thread of
-- its own still runs (those close it when they end)
local function settle_close(self)
  if self._closed and not next(self._ops) and not self._released then
    self._released = true
    self._cos:close()
  end
end

-- the body of an op thread: fn(cos, a, b, c) into rec, then wake the
-- caller (nothing here refers to the caller's frame: a kill of either
-- thread leaves the other's state whole)
local function op_body(rec, cos, fn, a, b, c)
  -- (an error the cosocket raises, "bad request" when the socket is used
  -- from another request for one, is raised again in the caller)
  local ok, r1, r2, r3 = pcall(fn, cos, a, b, c)
  if ok then
    rec.r1, rec.r2, rec.r3 = r1, r2, r3
  else
    rec.raised = r1
  end
  rec.done = true
  local owner = rec.owner
  owner._ops[rec] = nil
  local wake = rec.wake
  if wake then
    rec.wake = nil
    wake()
  end
  if rec.sema then rec.sema:post(1) end
  -- closed meanwhile (its caller may be gone: a killed light thread):
  -- the last op thread to end closes the cosocket
  if owner._closed then settle_close(owner) end
end

-- the wrapper can no longer trust its cosocket (an op thread was killed
-- mid-operation): closed
local function broken(self)
  self._closed = true
  settle_close(self)
end

-- the third value of run_op when it killed the op thread
local KILLED = setmetatable({}, { __tostring = function() return "killed" end })

-- run_op(self, ctx, fn, a, b, c) -> what fn(cos, a, b, c) returned, or
-- nil, err, KILLED when the context (or the task's bound, or close)
-- ended it first: err is that context's err, or "closed".
-- The caller has checked that ctx is not done and the wrapper not closed.
local function run_op(self, ctx, fn, a, b, c)
  stats.ops = stats.ops + 1
  local cos = self._cos
  local b_ctx = task_bound()
  local r = left(ctx, b_ctx)
  local ms = timeout_ms(r)
  cos:settimeout(ms)
  local rec = { owner = self }
  local due = ngx_now() + ms / 1000 -- (nginx's cached time: its timers' clock)
  local co, serr = spawn(op_body, rec, cos, fn, a, b, c)
  if not co then error("lcontext.socket: cannot start the op thread: " .. tostring(serr), 3) end
  if rec.done then -- it never yielded
    stats.fast = stats.fast + 1
    twait(co)
    if rec.raised ~= nil then error(rec.raised, 0) end
    return rec.r1, rec.r2, rec.r3
  end
  stats.waited = stats.waited + 1
  if b_ctx == nil and (ctx == BG or ctx == TODO) then
    -- nothing but the op thread or close() can end this wait: a semaphore
    -- of its own, which they post (no context, no core watch: cheaper)
    local sema = semaphore.new()
    rec.sema = sema
    self._ops[rec] = true
    while not rec.done and not rec.closed do
      local ok, werr = sema:wait(3600)
      if not ok and werr ~= "timeout" then
        rec.sema = nil
        self._ops[rec] = nil
        kill(co)
        broken(self)
        error("lcontext.socket: cannot wait: " .. tostring(werr), 3)
      end
    end
    rec.sema = nil
    self._ops[rec] = nil
    if rec.done then
      twait(co)
      if rec.raised ~= nil then error(rec.raised, 0) end
      return rec.r1, rec.r2, rec.r3
    end
    stats.killed = stats.killed + 1
    kill(co)
    broken(self)
    return nil, "closed", KILLED
  end
  local octx, ocancel = with_cancel(ctx)
  rec.wake = ocancel
  local ops = self._ops
  ops[rec] = true
  local reaped = false
  -- ctx's err, the bound's err, or canceled: by rec.wake (the op is done) or close
  local werr = octx:done()
  rec.wake = nil
  ocancel()
  if not rec.done and not rec.closed and werr == DEADLINE and r then
    -- a deadline: the op thread's own timer (set to it) is due now or
    -- within a few ms: it ends the operation with what a cosocket
    -- returns at a timeout (a receive's partial data), and keeps the
    -- connection when only a read timed out
    update_time()
    if ngx_now() >= due - OWN_TIMER_SLACK then
      stats.own_timeout = stats.own_timeout + 1
      twait(co)
      reaped = true
    end
  end
  ops[rec] = nil
  if rec.done then
    if not reaped then twait(co) end -- (a zombie thread until then)
    if rec.raised ~= nil then error(rec.raised, 0) end
    return rec.r1, rec.r2, rec.r3
  end
  stats.killed = stats.killed + 1
  kill(co)
  broken(self)
  if rec.closed then return nil, "closed", KILLED end
  return nil, werr, KILLED
end

-- the error a call returns for a cosocket's err: when the cosocket timed
-- out at a deadline of ctx (or of the task's bound), ctx's err (its timers
-- may fire a few ms before lcontext's clock reaches the deadline: wait for it)
local function outcome(ctx, err)
  if err ~= "timeout" then return err end
  local e = ctx:err()
  if e ~= nil then return e end
  local b = task_bound()
  if b ~= nil and b:err() ~= nil then return b:err() end
  local r = left(ctx, b)
  if r and r < OWN_TIMER_SLACK + 0.03 then return ctx:done() end -- (honours the bound too)
  return err
end

-- ctx's err, or the running task's bound's, if either is done
local function ended(ctx)
  local b = task_bound()
  if b ~= nil then
    local be = b:err()
    if be ~= nil then return be end
  end
  return ctx:err()
end

-------------------------------------------------------------------------------
-- TCP
-------------------------------------------------------------------------------
local function new_sock(cos)
  return setmetatable({ _cos = cos, _closed = false, _ops = {} }, Sock)
end

local function do_connect(cos, host, port, opts)
  if opts then return cos:connect(host, port, opts) end
  return cos:connect(host, port)
end

-- opts without lcontext's own (nodelay), for the cosocket; nil if empty
local function pool_opts(opts)
  if opts == nil or opts.nodelay == nil then return opts end
  local o, any = {}, false
  for k, v in pairs(opts) do
    if k ~= "nodelay" then o[k] = v; any = true end
  end
  return any and o or nil
end

--- socket.connect(ctx, host, port [, opts]) -> sock | nil, err
-- opts (nginx's cosocket connect options): pool, pool_size, backlog; and
-- nodelay = true, as on libev (tcpsock:setoption("tcp-nodelay", true),
-- where ngx_lua has setoption).
function S.connect(ctx, host, port, opts)
  check_ctx(ctx, "connect", 1)
  check_host(host, "connect", 2)
  port = check_port(port, "connect", 3)
  local nodelay
  if opts ~= nil then
    opts = check.options(opts, "connect", 4, CONNECT_OPTS)
    nodelay = opts.nodelay
    opts = pool_opts(opts)
  end
  local e = ended(ctx)
  if e ~= nil then return nil, e end
  local cos, cerr = ngx_tcp()
  if not cos then return nil, cerr end
  local sock = new_sock(cos)
  local ok, err = run_op(sock, ctx, do_connect, host, port, opts)
  if not ok then
    if not sock._closed then
      sock._closed = true
      settle_close(sock)
    end
    return nil, outcome(ctx, err)
  end
  if nodelay and cos.setoption then cos:setoption("tcp-nodelay", true) end
  return sock
end

local function do_receive(cos, pattern)
  return cos:receive(pattern)
end

--- sock:receive(ctx [, pattern [, prefix]]) -> data | nil, err, partial
function Sock:receive(ctx, pattern, prefix)
  self_check(self, Sock, "receive")
  check_ctx(ctx, "receive", 1)
  pattern = check_pattern(pattern, "receive", 2)
  if prefix ~= nil then prefix = check_string(prefix, "receive", 3) end
  if self._closed then return nil, "closed", prefix or "" end
  local e = ended(ctx)
  if e ~= nil then return nil, e, prefix or "" end
  if type(pattern) == "number" and prefix then -- a prefix counts toward a byte count
    pattern = pattern - #prefix
    if pattern <= 0 then return prefix end -- (LuaSocket's: the prefix alone)
  end
  if pattern == 0 then return prefix or "" end
  local data, err, partial = run_op(self, ctx, do_receive, pattern)
  if data ~= nil then
    -- "*a" that got no byte before the close: LuaSocket's nil, "closed"
    -- (a cosocket returns "")
    if data == "" and pattern == "*a" then return nil, "closed", prefix or "" end
    if prefix then return prefix .. data end
    return data
  end
  if partial == KILLED then partial = nil end
  partial = partial or ""
  if prefix then partial = prefix .. partial end
  return nil, outcome(ctx, err), partial
end

-- send data (the whole string) in chunks of CHUNK bytes, counting in
-- rec-less state: the count of bytes sent is returned with an error
local function do_send(cos, data, progress)
  local n = #data
  if n <= CHUNK then
    local bytes, err = cos:send(data)
    if bytes then return n end
    return nil, err, 0
  end
  local pos = 1
  while pos <= n do
    local last = pos + CHUNK - 1
    if last > n then last = n end
    local bytes, err = cos:send(ssub(data, pos, last))
    if not bytes then return nil, err, pos - 1 end
    progress.sent = last
    pos = last + 1
  end
  return n
end

--- sock:send(ctx, data [, i [, j]]) -> last | nil, err, last
-- last: the index of the last byte sent (LuaSocket's); after an error,
-- the last byte known to be sent (sends over 64 KiB go in chunks of it,
-- and a chunk that failed counts as unsent)
function Sock:send(ctx, data, i, j)
  self_check(self, Sock, "send")
  check_ctx(ctx, "send", 1)
  data = check_string(data, "send", 2)
  i = check_index(i, "send", 3)
  j = check_index(j, "send", 4)
  local len = #data
  local start, stop = i or 1, j or len
  if start < 0 then start = len + start + 1 end
  if start < 1 then start = 1 end
  if stop < 0 then stop = len + stop + 1 end
  if stop > len then stop = len end
  local before = start - 1
  if self._closed then return nil, "closed", before end
  local e = ended(ctx)
  if e ~= nil then return nil, e, before end
  if stop < start then return before end
  if start ~= 1 or stop ~= len then data = ssub(data, start, stop) end
  local progress = { sent = 0 }
  local n, err, sent = run_op(self, ctx, do_send, data, progress)
  if n then return before + n end
  if sent == KILLED or sent == nil then sent = progress.sent end
  return nil, outcome(ctx, err), before + sent
end

-- close(self) -> 1: wakes the calls in progress (each kills its op
-- thread); the cosocket is closed once none is left
local function close(self)
  if self._closed then return 1 end
  self._closed = true
  for rec in pairs(self._ops) do
    rec.closed = true
    local wake = rec.wake
    if wake then
      rec.wake = nil
      wake()
    end
    if rec.sema then rec.sema:post(1) end
  end
  settle_close(self)
  return 1
end

--- sock:close() -> 1. Safe while other light threads wait on the socket:
-- their calls end at once with nil, "closed".
function Sock:close()
  self_check(self, Sock, "close")
  return close(self)
end

function Sock:is_closed()
  self_check(self, Sock, "is_closed")
  return self._closed
end

--- sock:raw() -> the cosocket (its timeouts are set by each call)
function Sock:raw()
  self_check(self, Sock, "raw")
  return self._cos
end

--- sock:setoption(name, value): the cosocket's (ngx_lua 0.10.18+)
function Sock:setoption(name, value)
  self_check(self, Sock, "setoption")
  if self._closed then return nil, "closed" end
  local cos = self._cos
  if not cos.setoption then
    error("lcontext.socket.setoption: not available in OpenResty (this ngx_lua has no "
      .. "tcpsock:setoption; ngx_lua 0.10.18 and later have it)", 2)
  end
  return cos:setoption(name, value)
end

--- sock:getpeername(): the cosocket's where ngx_lua has it; it raises where not
function Sock:getpeername()
  self_check(self, Sock, "getpeername")
  local cos = self._cos
  if not cos.getpeername then
    error("lcontext.socket.getpeername: not available in OpenResty (this ngx_lua's cosockets "
      .. "do not tell their peer; remember the host and port given to connect)", 2)
  end
  if self._closed then return nil, "closed" end
  return cos:getpeername()
end

--- sock:setkeepalive([timeout [, size]]): nginx only — puts the connection
-- in the cosocket pool (the wrapper is closed then)
function Sock:setkeepalive(...)
  self_check(self, Sock, "setkeepalive")
  if self._closed then return nil, "closed" end
  if next(self._ops) then return nil, "busy" end
  local ok, err = self._cos:setkeepalive(...)
  self._closed, self._released = true, true
  return ok, err
end

--- sock:getreusedtimes(): nginx only (the cosocket pool's count)
function Sock:getreusedtimes()
  self_check(self, Sock, "getreusedtimes")
  if self._closed then return nil, "closed" end
  return self._cos:getreusedtimes()
end

function Sock:__tostring()
  return self._closed and "lcontext.socket (closed)" or "lcontext.socket (cosocket)"
end

-------------------------------------------------------------------------------
-- UDP
-------------------------------------------------------------------------------
local function new_udp(cos)
  return setmetatable({ _cos = cos, _closed = false, _ops = {} }, Udp)
end

--- socket.udp() -> usock | nil, err
function S.udp(family)
  if family ~= nil and family ~= "inet" and family ~= "inet6" then
    argerr("udp", 1, "\"inet\" or \"inet6\" expected, got " .. tostring(family))
  end
  local cos, err = ngx_udp()
  if not cos then return nil, err end
  return new_udp(cos)
end

--- usock:setpeername(host, port) -> 1 | nil, err (a name is resolved with
-- nginx's resolver, bounded by nginx's default timeouts)
function Udp:setpeername(host, port)
  self_check(self, Udp, "setpeername")
  check_host(host, "setpeername", 1)
  port = check_port(port, "setpeername", 2)
  if self._closed then return nil, "closed" end
  return self._cos:setpeername(host, port)
end

local function do_udp_send(cos, data)
  return cos:send(data)
end

--- usock:send(ctx, data) -> true | nil, err (after setpeername)
function Udp:send(ctx, data)
  self_check(self, Udp, "send")
  check_ctx(ctx, "send", 1)
  data = check_string(data, "send", 2)
  if self._closed then return nil, "closed" end
  local e = ended(ctx)
  if e ~= nil then return nil, e end
  -- a datagram is sent at once or not at all: no op thread needed
  local ok, err = do_udp_send(self._cos, data)
  if ok then return true end
  return nil, err
end

local function do_udp_receive(cos, size)
  if size then return cos:receive(size) end
  return cos:receive()
end

--- usock:receive(ctx [, size]) -> data | nil, err (after setpeername)
function Udp:receive(ctx, size)
  self_check(self, Udp, "receive")
  check_ctx(ctx, "receive", 1)
  if size ~= nil then
    if type(size) ~= "number" or size ~= size or size <= 0 or size == huge then
      argerr("receive", 2, "size expected (a number > 0), got "
        .. (type(size) == "number" and tostring(size) or tname(size)))
    end
    size = floor(size)
  end
  if self._closed then return nil, "closed" end
  local e = ended(ctx)
  if e ~= nil then return nil, e end
  local data, err = run_op(self, ctx, do_udp_receive, size)
  if data ~= nil then return data end
  return nil, outcome(ctx, err)
end

function Udp:close()
  self_check(self, Udp, "close")
  return close(self)
end

function Udp:is_closed()
  self_check(self, Udp, "is_closed")
  return self._closed
end

function Udp:raw()
  self_check(self, Udp, "raw")
  return self._cos
end

function Udp:setoption()
  self_check(self, Udp, "setoption")
  error("lcontext.socket.setoption: not available in OpenResty (udp cosockets have no options)", 2)
end

function Udp:getpeername()
  self_check(self, Udp, "getpeername")
  error("lcontext.socket.getpeername: not available in OpenResty (udp cosockets do not tell "
    .. "their peer; remember the host and port given to setpeername)", 2)
end

function Udp:__tostring()
  return self._closed and "lcontext.socket.udp (closed)" or "lcontext.socket.udp (cosocket)"
end

-------------------------------------------------------------------------------
-- Wrapping cosockets
-------------------------------------------------------------------------------

--- socket.wrap(obj) -> sock | usock: an ngx.socket.tcp() that is connected,
-- or an ngx.socket.udp(); close it through what wrap returns.
function S.wrap(obj)
  local ot = type(obj)
  if ot == "table" and type(obj.receiveuntil) == "function" then -- tcp
    local ok, n = pcall(obj.getreusedtimes, obj)
    if not ok or n == nil then argerr("wrap", 1, "the socket is closed (or not connected)") end
    return new_sock(obj)
  elseif ot == "table" and type(obj.setpeername) == "function" then -- udp
    return new_udp(obj)
  end
  argerr("wrap", 1, "ngx.socket.tcp() or ngx.socket.udp() object expected, got " .. tname(obj))
end

-------------------------------------------------------------------------------
-- What OpenResty cannot do
-------------------------------------------------------------------------------
local function unavailable(name, why)
  return function()
    error(("lcontext.socket.%s: not available in OpenResty (%s)"):format(name, why), 2)
  end
end

S.bind = unavailable("bind", "cosockets cannot listen: nginx accepts the connections; "
  .. "use a server block, or ngx.req.socket() for the request's own connection")
S.accept = unavailable("accept", "cosockets cannot listen: nginx accepts the connections")
S.http_create = unavailable("http_create", "socket.http is LuaSocket's and blocks the worker; "
  .. "send HTTP over socket.connect's cosockets, or use lua-resty-http with "
  .. "timeouts from context.timeout_ms(ctx)")
S.http_request = unavailable("http_request", "socket.http is LuaSocket's and blocks the worker; "
  .. "send HTTP over socket.connect's cosockets, or use lua-resty-http with "
  .. "timeouts from context.timeout_ms(ctx)")
Udp.sendto = unavailable("sendto", "udp cosockets are connected: usock:setpeername(host, port), "
  .. "then usock:send(ctx, data)")
Udp.receivefrom = unavailable("receivefrom", "udp cosockets are connected: "
  .. "usock:setpeername(host, port), then usock:receive(ctx [, size])")
Udp.setsockname = unavailable("setsockname", "udp cosockets cannot bind a local address")

S.backend = "ngx"
return S
