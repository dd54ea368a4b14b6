--- lcontext.socket: LuaSocket bounded by a context (libev backend); inside
-- nginx, the same names over cosockets (lua/lcontext/ngx_socket.lua).
-- README, "I/O".
--
--   local socket = require "lcontext.socket"
--   local sock, err = socket.connect(ctx, "127.0.0.1", 8080)
--   sock:send(ctx, "GET / HTTP/1.0\r\n\r\n")
--   local line, err, partial = sock:receive(ctx, "*l")
--
-- Every call that may block takes the context first. The LuaSocket object
-- underneath is non-blocking (timeout 0): a call tries its operation, and
-- where LuaSocket says "timeout" it waits for the fd through the core
-- (check.wait_io), bounded by the context, by the spawned task's own
-- context, and by the socket's close. A task suspends there; on the main
-- thread the loop runs. When the context ends the call returns
-- nil, ctx:err() and what LuaSocket returns beside an error: the partial
-- data of a receive, the last index sent of a send.
--
-- Closing is safe while tasks wait on the socket: close() first cancels
-- the socket's own context (its "closer"), which detaches every wait on the
-- fd, then closes the fd; those calls return nil, "closed".
--
-- Name resolution (socket.dns.getaddrinfo) blocks, as in LuaSocket: use
-- addresses, or names from /etc/hosts, where that matters.
if type(ngx) == "table" and type(ngx.config) == "table" and ngx.config.ngx_lua_version then
  return require "lcontext.ngx_socket"
end

local context = require "lcontext"
local check = require "lcontext.check"
local ls = require "socket"

local type, tostring, setmetatable, getmetatable = type, tostring, setmetatable, getmetatable
local floor, huge = math.floor, math.huge
local sfind = string.find
local wait_io = check.wait_io
local argerr, check_ctx, tname = check.argerr, check.ctx, check.tname
local with_cancel, background = context.with_cancel, context.background

local S = {}

-- {=== the wrapper ===}

local Sock = {}      -- TCP connections
Sock.__index = Sock
Sock.__name = "lcontext.socket"
local Server = {}    -- listening TCP sockets
Server.__index = Server
Server.__name = "lcontext.socket.server"
local Udp = {}       -- UDP sockets
Udp.__index = Udp
Udp.__name = "lcontext.socket.udp"

local function self_check(self, mt, fname)
  if getmetatable(self) ~= mt then
    error(("calling '%s' on bad self (%s expected, got %s)")
      :format(fname, mt.__name, tname(self)), 3)
  end
end

-- the context its close() cancels: made on the first wait
local function closer(self)
  local c = self._closer
  if c == nil then
    c, self._cancel = with_cancel(background())
    self._closer = c
  end
  return c
end

local function new(mt, raw)
  local fd = raw:getfd()
  raw:settimeout(0)
  return setmetatable({ _raw = raw, _fd = fd, _closed = false,
    _r = { fd = fd, mode = "r" }, _w = { fd = fd, mode = "w" } }, mt)
end

-- wait(self, fname, ctx, spec) -> true | nil, err
local function wait(self, fname, ctx, spec)
  return wait_io(fname, ctx, spec, self._closer or closer(self))
end

local function close(self)
  if self._closed then return 1 end
  self._closed = true
  -- waits first (their watchers are stopped as they are detached), then the fd
  if self._cancel then self._cancel() end
  self._raw:close()
  return 1
end

-- A wrapper collected without close() (Lua 5.2+: tables have __gc): its
-- closer context ends with it (no wait can be pending: a waiting task holds
-- the wrapper); LuaSocket's own __gc closes the fd.
local function collected(self)
  local cancel = rawget(self, "_cancel")
  if cancel then cancel() end
end
Sock.__gc, Server.__gc, Udp.__gc = collected, collected, collected

local function is_closed_raw(raw)
  local ok, fd = pcall(raw.getfd, raw)
  return not ok or type(fd) ~= "number" or fd < 0
end

-- {=== arguments ===}

local check_pattern, check_string, check_index = check.recv_pattern, check.data, check.index
local check_port, check_host = check.port, check.host

-- {=== TCP connections ===}

--- sock:receive(ctx [, pattern [, prefix]]) -> data | nil, err, partial
function Sock:receive(ctx, pattern, prefix)
  self_check(self, Sock, "receive")
  check_ctx(ctx, "receive", 1)
  pattern = check_pattern(pattern, "receive", 2)
  if prefix ~= nil then prefix = check_string(prefix, "receive", 3) end
  local raw = self._raw
  -- "*a": LuaSocket says "closed" when a call got no new byte before the
  -- close, and what came before is in our prefix: success if anything came
  local all = pattern == "*a"
  local given = prefix and #prefix or 0
  while true do
    if self._closed then return nil, "closed", prefix or "" end
    local err = ctx:err()
    if err ~= nil then return nil, err, prefix or "" end
    local data, rerr, partial = raw:receive(pattern, prefix)
    if data ~= nil then return data end
    if all and rerr == "closed" and #partial > given then return partial end
    if rerr ~= "timeout" then return nil, rerr, partial end
    prefix = partial
    local ok, werr = wait(self, "receive", ctx, self._r)
    if not ok then return nil, werr, prefix end
  end
end

--- sock:send(ctx, data [, i [, j]]) -> last | nil, err, last
function Sock:send(ctx, data, i, j)
  self_check(self, Sock, "send")
  check_ctx(ctx, "send", 1)
  data = check_string(data, "send", 2)
  i = check_index(i, "send", 3)
  j = check_index(j, "send", 4)
  local raw = self._raw
  -- where a call that sent nothing stands (LuaSocket's own arithmetic)
  local len = #data
  local start = i or 1
  if start < 0 then start = len + start + 1 end
  if start < 1 then start = 1 end
  local before = start - 1
  while true do
    if self._closed then return nil, "closed", before end
    local err = ctx:err()
    if err ~= nil then return nil, err, before end
    local last, serr, sent = raw:send(data, i, j)
    if last ~= nil then return last end
    if serr ~= "timeout" then return nil, serr, sent end
    before = sent
    i = sent + 1
    local ok, werr = wait(self, "send", ctx, self._w)
    if not ok then return nil, werr, before end
  end
end

--- sock:close() -> 1 (safe while tasks wait on it: they get nil, "closed")
function Sock:close()
  self_check(self, Sock, "close")
  return close(self)
end

function Sock:is_closed() self_check(self, Sock, "is_closed"); return self._closed end

--- sock:shutdown([how]): LuaSocket's ("both", "send" or "receive")
function Sock:shutdown(how)
  self_check(self, Sock, "shutdown")
  if self._closed then return nil, "closed" end
  return self._raw:shutdown(how)
end

function Sock:getpeername()
  self_check(self, Sock, "getpeername")
  if self._closed then return nil, "closed" end
  return self._raw:getpeername()
end

function Sock:getsockname()
  self_check(self, Sock, "getsockname")
  if self._closed then return nil, "closed" end
  return self._raw:getsockname()
end

function Sock:setoption(name, value)
  self_check(self, Sock, "setoption")
  if self._closed then return nil, "closed" end
  return self._raw:setoption(name, value)
end

function Sock:getfd()
  self_check(self, Sock, "getfd")
  if self._closed then return -1 end
  return self._fd
end

--- sock:dirty() -> data is buffered already (LuaSocket's buffer)
function Sock:dirty()
  self_check(self, Sock, "dirty")
  return not self._closed and self._raw:dirty()
end

--- sock:raw() -> the LuaSocket object (non-blocking; close it through sock)
function Sock:raw() self_check(self, Sock, "raw"); return self._raw end

function Sock:__tostring()
  if self._closed then return "lcontext.socket (closed)" end
  local h, p = self._raw:getpeername()
  return ("lcontext.socket (%s:%s)"):format(tostring(h), tostring(p))
end

-- connect one address of a resolved name: sock | nil, err
local function connect_addr(ctx, addr, family, port)
  local raw, err
  if family == "inet6" then raw, err = ls.tcp6() else raw, err = ls.tcp4() end
  if not raw then return nil, err end
  local sock = new(Sock, raw)
  local ok, cerr = raw:connect(addr, port)
  while not ok do
    if cerr == "already connected" then break end
    if cerr ~= "timeout" and not sfind(cerr, "in progress", 1, true) then
      close(sock)
      return nil, cerr
    end
    local waited, werr = wait(sock, "connect", ctx, sock._w)
    if not waited then close(sock); return nil, werr end
    ok, cerr = raw:connect(addr, port)
  end
  return sock
end

local CONNECT_OPTS = check.names { "nodelay", "pool", "pool_size", "backlog" }

--- socket.connect(ctx, host, port [, opts]) -> sock | nil, err
-- Each address of host is tried in turn (as LuaSocket does), all within ctx.
-- opts.nodelay = true sets TCP_NODELAY. (pool, pool_size and backlog are
-- the cosocket pool's, inside nginx: a bad argument here.)
function S.connect(ctx, host, port, opts)
  check_ctx(ctx, "connect", 1)
  check_host(host, "connect", 2)
  port = check_port(port, "connect", 3)
  opts = check.options(opts, "connect", 4, CONNECT_OPTS)
  for _, k in ipairs({ "pool", "pool_size", "backlog" }) do
    if opts[k] ~= nil then
      argerr("connect", 4, "option '" .. k .. "' is the cosocket pool's: nginx only")
    end
  end
  local err = ctx:err()
  if err ~= nil then return nil, err end
  local addrs, rerr = ls.dns.getaddrinfo(host)
  if not addrs then return nil, rerr end
  local sock, cerr
  for _, a in ipairs(addrs) do
    if a.family == "inet" or a.family == "inet6" then
      sock, cerr = connect_addr(ctx, a.addr, a.family, port)
      if sock then
        if opts.nodelay then sock._raw:setoption("tcp-nodelay", true) end
        return sock
      end
      err = ctx:err()
      if err ~= nil then return nil, err end
    end
  end
  return nil, cerr or ("connect: no address for " .. host)
end

-- {=== listening sockets ===}

--- socket.bind(host, port [, backlog]) -> server | nil, err
function S.bind(host, port, backlog)
  check_host(host, "bind", 1)
  port = check_port(port, "bind", 2)
  if backlog ~= nil and (type(backlog) ~= "number" or backlog < 0 or backlog ~= floor(backlog)) then
    argerr("bind", 3, "backlog expected (an integer >= 0), got " .. tname(backlog))
  end
  local raw, err = ls.bind(host, port, backlog)
  if not raw then return nil, err end
  return new(Server, raw)
end

--- server:accept(ctx) -> sock | nil, err
function Server:accept(ctx)
  self_check(self, Server, "accept")
  check_ctx(ctx, "accept", 1)
  local raw = self._raw
  while true do
    if self._closed then return nil, "closed" end
    local err = ctx:err()
    if err ~= nil then return nil, err end
    local c, aerr = raw:accept()
    if c then return new(Sock, c) end
    if aerr ~= "timeout" then return nil, aerr end
    local ok, werr = wait(self, "accept", ctx, self._r)
    if not ok then return nil, werr end
  end
end

function Server:close() self_check(self, Server, "close"); return close(self) end
function Server:is_closed() self_check(self, Server, "is_closed"); return self._closed end
function Server:getsockname()
  self_check(self, Server, "getsockname")
  if self._closed then return nil, "closed" end
  return self._raw:getsockname()
end
function Server:getfd() self_check(self, Server, "getfd"); return self._closed and -1 or self._fd end
function Server:raw() self_check(self, Server, "raw"); return self._raw end
function Server:__tostring()
  if self._closed then return "lcontext.socket.server (closed)" end
  local h, p = self._raw:getsockname()
  return ("lcontext.socket.server (%s:%s)"):format(tostring(h), tostring(p))
end

-- {=== UDP ===}

--- socket.udp([family]) -> usock | nil, err  ("inet" (default) or "inet6")
function S.udp(family)
  if family ~= nil and family ~= "inet" and family ~= "inet6" then
    argerr("udp", 1, "\"inet\" or \"inet6\" expected, got " .. tostring(family))
  end
  local raw, err
  if family == "inet6" then raw, err = ls.udp6() else raw, err = ls.udp4() end
  if not raw then return nil, err end
  return new(Udp, raw)
end

local function udp_size(size, fname, n)
  if size == nil then return nil end
  if type(size) ~= "number" or size ~= size or size <= 0 or size == huge then
    argerr(fname, n, "size expected (a number > 0), got "
      .. (type(size) == "number" and tostring(size) or tname(size)))
  end
  return floor(size)
end

-- a UDP operation: op() until it does not say "timeout"
local function udp_io(self, fname, ctx, spec, op, ...)
  while true do
    if self._closed then return nil, "closed" end
    local err = ctx:err()
    if err ~= nil then return nil, err end
    local a, b, c = op(self._raw, ...)
    if a ~= nil or b ~= "timeout" then return a, b, c end
    local ok, werr = wait(self, fname, ctx, spec)
    if not ok then return nil, werr end
  end
end

--- usock:sendto(ctx, data, ip, port) -> true | nil, err
function Udp:sendto(ctx, data, ip, port)
  self_check(self, Udp, "sendto")
  check_ctx(ctx, "sendto", 1)
  data = check_string(data, "sendto", 2)
  check_host(ip, "sendto", 3)
  port = check_port(port, "sendto", 4)
  local ok, err = udp_io(self, "sendto", ctx, self._w, self._raw.sendto, data, ip, port)
  if ok then return true end
  return nil, err
end

--- usock:receivefrom(ctx [, size]) -> data, ip, port | nil, err
function Udp:receivefrom(ctx, size)
  self_check(self, Udp, "receivefrom")
  check_ctx(ctx, "receivefrom", 1)
  size = udp_size(size, "receivefrom", 2)
  return udp_io(self, "receivefrom", ctx, self._r, self._raw.receivefrom, size)
end

--- usock:send(ctx, data) -> true | nil, err (after setpeername)
function Udp:send(ctx, data)
  self_check(self, Udp, "send")
  check_ctx(ctx, "send", 1)
  data = check_string(data, "send", 2)
  local ok, err = udp_io(self, "send", ctx, self._w, self._raw.send, data)
  if ok then return true end
  return nil, err
end

--- usock:receive(ctx [, size]) -> data | nil, err (after setpeername)
function Udp:receive(ctx, size)
  self_check(self, Udp, "receive")
  check_ctx(ctx, "receive", 1)
  size = udp_size(size, "receive", 2)
  return udp_io(self, "receive", ctx, self._r, self._raw.receive, size)
end

function Udp:setsockname(host, port)
  self_check(self, Udp, "setsockname")
  check_host(host, "setsockname", 1)
  port = check_port(port, "setsockname", 2)
  if self._closed then return nil, "closed" end
  return self._raw:setsockname(host, port)
end

function Udp:setpeername(host, port)
  self_check(self, Udp, "setpeername")
  check_host(host, "setpeername", 1)
  if host ~= "*" then port = check_port(port, "setpeername", 2) end
  if self._closed then return nil, "closed" end
  return self._raw:setpeername(host, port)
end

function Udp:getsockname()
  self_check(self, Udp, "getsockname")
  if self._closed then return nil, "closed" end
  return self._raw:getsockname()
end
function Udp:getpeername()
  self_check(self, Udp, "getpeername")
  if self._closed then return nil, "closed" end
  return self._raw:getpeername()
end
function Udp:setoption(name, value)
  self_check(self, Udp, "setoption")
  if self._closed then return nil, "closed" end
  return self._raw:setoption(name, value)
end
function Udp:close() self_check(self, Udp, "close"); return close(self) end
function Udp:is_closed() self_check(self, Udp, "is_closed"); return self._closed end
function Udp:getfd() self_check(self, Udp, "getfd"); return self._closed and -1 or self._fd end
function Udp:raw() self_check(self, Udp, "raw"); return self._raw end
function Udp:__tostring()
  return self._closed and "lcontext.socket.udp (closed)" or "lcontext.socket.udp"
end

-- {=== wrapping LuaSocket objects ===}

--- socket.wrap(obj) -> sock | server | usock: an existing LuaSocket object
-- (a connected TCP socket, a listening one, or a UDP one), made
-- non-blocking; close it through what wrap returns.
function S.wrap(obj)
  local mt = getmetatable(obj)
  local name = type(mt) == "table" and type(mt.__index) == "table" and mt.__index.class
  name = name or (pcall(tostring, obj) and tostring(obj)) or ""
  if type(name) ~= "string" then name = "" end
  if sfind(name, "^tcp{client}") then
    if is_closed_raw(obj) then argerr("wrap", 1, "the socket is closed") end
    return new(Sock, obj)
  elseif sfind(name, "^tcp{server}") then
    if is_closed_raw(obj) then argerr("wrap", 1, "the socket is closed") end
    return new(Server, obj)
  elseif sfind(name, "^udp{") then
    if is_closed_raw(obj) then argerr("wrap", 1, "the socket is closed") end
    return new(Udp, obj)
  elseif sfind(name, "closed") then
    argerr("wrap", 1, "the socket is closed")
  end
  argerr("wrap", 1, "LuaSocket tcp{client}, tcp{server} or udp object expected, got "
    .. (name ~= "" and name or tname(obj)))
end

-- {=== socket.http ===}

-- the object socket.http drives: LuaSocket's methods, each bound to ctx
local function http_socket(ctx)
  local sock
  local o = {}
  function o.settimeout() return 1 end -- the context is the timeout
  function o.connect(_, host, port)
    local s, err = S.connect(ctx, host, port)
    if not s then return nil, err end
    sock = s
    return 1
  end
  function o.send(_, data, i, j)
    if not sock then return nil, "closed" end
    return sock:send(ctx, data, i, j)
  end
  function o.receive(_, pattern, prefix)
    if not sock then return nil, "closed" end
    return sock:receive(ctx, pattern, prefix)
  end
  function o.close()
    if sock then sock:close() end
    return 1
  end
  function o.getfd() return sock and sock:getfd() or -1 end
  function o.dirty() return sock ~= nil and sock:dirty() end
  function o.setoption(_, name, value)
    if not sock then return nil, "closed" end
    return sock:setoption(name, value)
  end
  function o.shutdown(_, how)
    if not sock then return nil, "closed" end
    return sock:shutdown(how)
  end
  return o
end

--- socket.http_create(ctx) -> a `create` function for socket.http.request
-- (reqt.create): the request's connect, sends and reads are bounded by ctx
function S.http_create(ctx)
  check_ctx(ctx, "http_create", 1)
  return function() return http_socket(ctx) end
end

local http -- socket.http, loaded on first use

-- socket.http for http_request. LuaSocket's request runs inside
-- socket.protect, a pcall made in C: Lua 5.2+ can yield across it
-- (lua_pcallk), Lua 5.1 and LuaJIT cannot, so a task could not wait inside
-- a request there. On those runtimes http_request loads a private copy of
-- socket.http whose protect is written in Lua, on check.pcall (which a
-- task may wait in); socket.http itself stays as it is.
local function load_http()
  if _VERSION ~= "Lua 5.1" then return require "socket.http" end
  local path = check.searchpath("socket.http", package.path)
  local chunk = path and loadfile(path)
  if not chunk then return require "socket.http" end
  -- what socket.try raises: a table with LuaSocket's own metatable
  local _, probe = pcall(ls.try, nil, "probe")
  -- (its __metatable hides it from getmetatable)
  local dgetmt = debug.getmetatable
  local marker = type(probe) == "table" and dgetmt(probe) or nil
  local pcall_, pack, unpack = check.pcall, check.pack, check.unpack
  local function protect(f)
    return function(...)
      local r = pack(pcall_(f, ...))
      if r[1] then return unpack(r, 2, r.n) end
      local e = r[2]
      if marker ~= nil and type(e) == "table" and dgetmt(e) == marker then return nil, e[1] end
      error(e, 0)
    end
  end
  local psocket = setmetatable({ protect = protect }, { __index = ls })
  local env = setmetatable({ require = function(name)
    if name == "socket" then return psocket end
    return require(name)
  end }, { __index = _G })
  setfenv(chunk, env)
  chunk("socket.http")
  return psocket.http
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

--- socket.http_request(ctx, url [, body]) -> body, code, headers, status
--- socket.http_request(ctx, reqt) -> 1, code, headers, status
-- socket.http.request, bounded by ctx. reqt.trace = true adds the
-- deadline and trace headers of lcontext.trace (its inject) to the request;
-- reqt.trace = a table does the same and puts in it what was sent:
-- trace.headers (every header of the request) and trace.span_id.
-- Returns nil, err when ctx ends first (err: ctx:err()).
function S.http_request(ctx, req, body)
  check_ctx(ctx, "http_request", 1)
  if type(req) ~= "string" and type(req) ~= "table" then
    argerr("http_request", 2, "URL or request table expected, got " .. tname(req))
  end
  if body ~= nil and type(req) ~= "string" then
    argerr("http_request", 3, "a body goes with a URL; a request table carries its own source")
  end
  if body ~= nil and type(body) ~= "string" then
    argerr("http_request", 3, "string expected, got " .. tname(body))
  end
  if type(req) == "table" and req.create ~= nil then
    argerr("http_request", 2, "reqt.create is lcontext's (use socket.http.request for your own)")
  end
  http = http or load_http()
  local ltn12 = require "ltn12"
  local err = ctx:err()
  if err ~= nil then return nil, err end
  local simple = type(req) == "string"
  local reqt
  local chunks
  if simple then
    chunks = {}
    reqt = { url = req, sink = ltn12.sink.table(chunks) }
    if body ~= nil then
      reqt.source = ltn12.source.string(body)
      reqt.headers = { ["content-length"] = tostring(#body),
        ["content-type"] = "application/x-www-form-urlencoded" }
      reqt.method = "POST"
    end
  else
    reqt = copy(req)
    if req.headers then reqt.headers = copy(req.headers) end
  end
  local trace = reqt.trace
  reqt.trace = nil
  if trace ~= nil and trace ~= false and trace ~= true and type(trace) ~= "table" then
    argerr("http_request", 2, "reqt.trace: true or a table expected, got " .. tname(trace))
  end
  if trace then
    reqt.headers = reqt.headers or {}
    local _, span = require("lcontext.trace").inject(ctx, reqt.headers)
    if type(trace) == "table" then -- what was sent, for the caller's logs
      trace.headers, trace.span_id = copy(reqt.headers), span
    end
  end
  reqt.create = S.http_create(ctx)
  local r, code, headers, status = http.request(reqt)
  if r == nil then
    -- the context's own error, where it is what ended the request
    local cerr = ctx:err()
    return nil, cerr ~= nil and cerr or code
  end
  if simple then return table.concat(chunks), code, headers, status end
  return r, code, headers, status
end

return S
