--- lcontext.trace: W3C Trace Context (`traceparent`, `tracestate`),
-- `x-request-id` and deadline propagation across services (docs/observability.md).
--
--   local trace = require "lcontext.trace"
--   -- server side: one call turns the incoming headers into a context
--   local ctx, cancel, info = trace.extract(req.headers, parent, { reserve = 0.005 })
--   -- client side: write the trace, a new span and the time left
--   local headers, span_id = trace.inject(ctx, {})
--
-- The trace is kept in the context as values under the keys exported here
-- (TRACE_ID, SPAN_ID, PARENT_SPAN_ID, TRACE_FLAGS, TRACESTATE, REQUEST_ID);
-- trace.info(ctx) reads them all. The keys validate what is stored under
-- them, so a malformed id cannot get into a context by with_value either.
--
-- This module is not merged into lcontext: require it where it is needed.
-- It loads only the C core when required (lcontext itself may be loading
-- it, through lcontext.observe) and the public module on first use.
local core = require "lcontext.core"

local type, tostring, tonumber, error, pairs, ipairs = type, tostring, tonumber, error, pairs, ipairs
local getmetatable = getmetatable
local sfmt, sfind, ssub, slower = string.format, string.find, string.sub, string.lower
local concat, sort = table.concat, table.sort
local floor, ceil, huge = math.floor, math.ceil, math.huge

local T = {}

local context -- the public module, loaded on first use
local function lc()
  local c = context
  if not c then
    c = require "lcontext"
    context = c
  end
  return c
end

-- {=== argument errors, reported at the user's call site ===}
local check = require "lcontext.check"
local argerr = check.argerr
local mtype = check.math_type

local is_ctx = check.is_ctx

local check_ctx = check.ctx

-- {=== grammar ===}
local function lowhex(s, n)
  return #s == n and not sfind(s, "[^0-9a-f]")
end
local function nonzero(s) return sfind(s, "[^0]") ~= nil end

local function trim(s) -- HTTP optional whitespace: spaces and tabs
  return (s:match("^[ \t]*(.-)[ \t]*$"))
end

local function valid_trace_id(v) return type(v) == "string" and lowhex(v, 32) and nonzero(v) end
local function valid_span_id(v) return type(v) == "string" and lowhex(v, 16) and nonzero(v) end

-- tracestate key: simple-key = lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")
-- multi-tenant-key = tenant-id "@" system-id, where
-- tenant-id = (lcalpha / DIGIT) 0*240(...), system-id = lcalpha 0*13(...)
local function valid_key(k)
  local at = sfind(k, "@", 1, true)
  if not at then
    return #k <= 256 and sfind(k, "^[a-z][a-z0-9_%-%*/]*$") ~= nil
  end
  local tenant, system = ssub(k, 1, at - 1), ssub(k, at + 1)
  return #tenant >= 1 and #tenant <= 241 and sfind(tenant, "^[a-z0-9][a-z0-9_%-%*/]*$") ~= nil
    and #system >= 1 and #system <= 14 and sfind(system, "^[a-z][a-z0-9_%-%*/]*$") ~= nil
end

-- tracestate value: 1 to 256 printable ASCII characters but ',' and '=',
-- spaces allowed except as the last one
local function valid_value(v)
  return #v >= 1 and #v <= 256 and not sfind(v, "[^\32-\126]") and not sfind(v, "[,=]")
    and ssub(v, -1) ~= " "
end

local MAX_MEMBERS = 32

-- Parse a combined tracestate (the values of every tracestate header, in
-- order, joined by ","). Returns a list of {key, value}, or nil and why.
-- Empty members are allowed and skipped. The whole header is dropped when a
-- member is malformed, a key repeats, or there are more than 32 members.
local function parse_tracestate(s)
  local members, seen = {}, {}
  for raw in (s .. ","):gmatch("([^,]*),") do
    local m = trim(raw)
    if m ~= "" then
      if #members == MAX_MEMBERS then
        return nil, "more than " .. MAX_MEMBERS .. " members"
      end
      local eq = sfind(m, "=", 1, true)
      if not eq then return nil, ("member %q has no '='"):format(m) end
      local k, v = ssub(m, 1, eq - 1), ssub(m, eq + 1)
      if not valid_key(k) then return nil, ("invalid key %q"):format(k) end
      if not valid_value(v) then return nil, ("invalid value for key %q"):format(k) end
      if seen[k] then return nil, ("duplicate key %q"):format(k) end
      seen[k] = true
      members[#members + 1] = { k, v }
    end
  end
  return members
end

local function join_members(members)
  local parts = {}
  for i, m in ipairs(members) do parts[i] = m[1] .. "=" .. m[2] end
  return concat(parts, ",")
end

local MAX_REQUEST_ID = 200
local function valid_request_id(v)
  return type(v) == "string" and #v >= 1 and #v <= MAX_REQUEST_ID and not sfind(v, "[^\33-\126]")
end

-- {=== the keys: each validates what is stored under it ===}
T.TRACE_ID = core.key("trace_id", function(v)
  return valid_trace_id(v), "32 lowercase hex digits, not all zero, expected"
end)
T.SPAN_ID = core.key("span_id", function(v)
  return valid_span_id(v), "16 lowercase hex digits, not all zero, expected"
end)
T.PARENT_SPAN_ID = core.key("parent_span_id", function(v)
  return valid_span_id(v), "16 lowercase hex digits, not all zero, expected"
end)
T.TRACE_FLAGS = core.key("trace_flags", function(v)
  return mtype(v) == "integer" and v >= 0 and v <= 255, "integer from 0 to 255 expected"
end)
T.TRACESTATE = core.key("tracestate", function(v)
  if type(v) ~= "string" then return false, "string expected, got " .. type(v) end
  local ok, why = parse_tracestate(v)
  if not ok then return false, why end
  return true
end)
T.REQUEST_ID = core.key("request_id", function(v)
  return valid_request_id(v),
    "1 to " .. MAX_REQUEST_ID .. " visible ASCII characters expected"
end)

T.FLAG_SAMPLED = 0x01

-- flags & FLAG_SAMPLED, for flags an integer from 0 to 255 (Lua 5.1 and
-- LuaJIT have no & operator)
local function sampled_bit(flags) return flags % 2 end

-- {=== ids ===}
-- new_hex64() -> 16 lowercase hex digits, random.
local new_hex64

if math.type then -- compat: 64-bit integers (5.3+)
  -- Lua 5.3+: xoshiro256** on 64-bit integers, seeded once from
  -- /dev/urandom. Compiled from a string: its operators (~ >> << | and
  -- string.unpack) do not parse on Lua 5.1 and LuaJIT.
  new_hex64 = assert(load([==[
local sfmt, floor = string.format, math.floor
local s0, s1, s2, s3

local function splitmix(x)
  x = x + 0x9e3779b97f4a7c15
  local z = x
  z = (z ~ (z >> 30)) * 0xbf58476d1ce4e5b9
  z = (z ~ (z >> 27)) * 0x94d049bb133111eb
  return x, z ~ (z >> 31)
end

local function seed()
  local a, b
  local f = io.open("/dev/urandom", "rb")
  if f then
    local bytes = f:read(16)
    f:close()
    if bytes and #bytes == 16 then a, b = string.unpack("<i8i8", bytes) end
  end
  if not a then -- no /dev/urandom: Lua's own generator (randomly seeded at startup)
    if pcall(math.random, 0) then -- 5.4: math.random(0) is a random integer
      a = math.random(0)
      b = math.random(0) ~ floor(os.time()) ~ floor(os.clock() * 1e9)
    else -- 5.3
      a = math.random(0, 0x7fffffff) << 32 | math.random(0, 0x7fffffff)
      b = math.random(0, 0x7fffffff) ~ floor(os.time()) ~ floor(os.clock() * 1e9)
    end
  end
  local x = a
  x, s0 = splitmix(x)
  x, s1 = splitmix(x)
  x = x ~ b
  x, s2 = splitmix(x)
  x, s3 = splitmix(x)
end

local function rotl(x, k) return (x << k) | (x >> (64 - k)) end

local function next64()
  if not s0 then seed() end
  local result = rotl(s1 * 5, 7) * 9
  local t = s1 << 17
  s2 = s2 ~ s0
  s3 = s3 ~ s1
  s1 = s1 ~ s2
  s0 = s0 ~ s3
  s2 = s2 ~ t
  s3 = rotl(s3, 45)
  return result
end

return function() return sfmt("%016x", next64()) end
]==], "=lcontext/trace.lua (ids)"))()
else
  -- Lua 5.1 and LuaJIT (no 64-bit integers): bytes from /dev/urandom, read
  -- 4 KiB at a time; Lua's generator where /dev/urandom is missing.
  local buf, pos = "", 1
  local function refill()
    local f = io.open("/dev/urandom", "rb")
    local b = f and f:read(4096)
    if f then f:close() end
    if not b or #b < 8 then
      local t = {}
      for i = 1, 4096 do t[i] = string.char(math.random(0, 255)) end
      b = concat(t)
    end
    buf, pos = b, 1
  end
  local function hexbyte(c) return sfmt("%02x", c:byte()) end
  new_hex64 = function()
    if pos + 7 > #buf then refill() end
    local s = ssub(buf, pos, pos + 7)
    pos = pos + 8
    return (s:gsub(".", hexbyte))
  end
end

local ZERO64 = "0000000000000000"

--- trace.new_trace_id() -> 32 lowercase hex digits, random, never all zero
function T.new_trace_id()
  local a, b
  repeat a, b = new_hex64(), new_hex64() until a ~= ZERO64 or b ~= ZERO64
  return a .. b
end

--- trace.new_span_id() -> 16 lowercase hex digits, random, never all zero
function T.new_span_id()
  local a
  repeat a = new_hex64() until a ~= ZERO64
  return a
end

-- {=== grpc-timeout ===}
-- TimeoutValue: 1 to 8 ASCII digits; TimeoutUnit: H M S m u n.
local UNITS = { { "n", 1e-9, 1e9 }, { "u", 1e-6, 1e6 }, { "m", 1e-3, 1e3 },
                { "S", 1, 1 }, { "M", 60, 1 / 60 }, { "H", 3600, 1 / 3600 } }
local UNIT_SECONDS = {}
for _, u in ipairs(UNITS) do UNIT_SECONDS[u[1]] = u[2] end
local MAX_VALUE = 99999999

-- ceil(x) that ignores floating-point noise just above an integer
-- (0.2 s is 200000.00000000003 us: that is 200000 us, not 200001)
local function ceil_clean(x)
  return ceil(x - 1e-7)
end

--- trace.format_timeout(seconds) -> the grpc-timeout text
-- The finest unit whose value fits in 8 digits, rounded up; a positive time
-- is never written as zero; zero or less is "0n" (the deadline has passed).
function T.format_timeout(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds then
    argerr("format_timeout", 1, "number expected, got " .. (seconds ~= seconds and "NaN" or type(seconds)))
  end
  if seconds <= 0 then return "0n" end
  for _, u in ipairs(UNITS) do
    local v = ceil_clean(seconds * u[3])
    if v < 1 then v = 1 end
    if v <= MAX_VALUE then return sfmt("%d%s", v, u[1]) end
  end
  return MAX_VALUE .. "H" -- about 11 400 years: the most the format can say
end

--- trace.parse_timeout(text) -> seconds | nil, why
function T.parse_timeout(s)
  if type(s) ~= "string" then return nil, "string expected" end
  local digits, unit = s:match("^(%d+)([HMSmun])$")
  if not digits then return nil, ("malformed grpc-timeout %q"):format(s) end
  if #digits > 8 then return nil, ("grpc-timeout %q has more than 8 digits"):format(s) end
  return tonumber(digits) * UNIT_SECONDS[unit]
end

local function format_ms(seconds)
  if seconds <= 0 then return "0" end
  local ms = ceil_clean(seconds * 1000)
  if ms < 1 then ms = 1 end
  if ms > 2 ^ 53 then ms = 2 ^ 53 end
  return sfmt("%.0f", ms)
end

local function parse_ms(s)
  if not s:match("^%d+$") or #s > 15 then
    return nil, ("malformed x-request-timeout-ms %q"):format(s)
  end
  return tonumber(s) / 1000
end

-- {=== headers ===}
local H_TRACEPARENT, H_TRACESTATE = "traceparent", "tracestate"
local H_REQUEST_ID, H_GRPC_TIMEOUT, H_TIMEOUT_MS = "x-request-id", "grpc-timeout", "x-request-timeout-ms"
local WANTED = { [H_TRACEPARENT] = true, [H_TRACESTATE] = true, [H_REQUEST_ID] = true,
                 [H_GRPC_TIMEOUT] = true, [H_TIMEOUT_MS] = true }
T.HEADERS = { traceparent = H_TRACEPARENT, tracestate = H_TRACESTATE, request_id = H_REQUEST_ID,
              grpc_timeout = H_GRPC_TIMEOUT, timeout_ms = H_TIMEOUT_MS }

-- The values of the headers this module reads: lowercase name -> list of
-- strings (entries whose name is not a string are not headers: ignored). A name given in several spellings contributes every spelling's
-- values, spellings taken in sorted order (give a list to fix the order).
local function collect(headers, fname)
  local spellings = {}
  for name, v in pairs(headers) do
    local l = type(name) == "string" and slower(name)
    if l and WANTED[l] then
      if type(v) ~= "string" and type(v) ~= "table" then
        argerr(fname, 1, ("header '%s' must be a string or a list of strings, got %s"):format(name, type(v)))
      end
      local list = spellings[l]
      if not list then list = {}; spellings[l] = list end
      list[#list + 1] = name
    end
  end
  local found = {}
  for l, names in pairs(spellings) do
    sort(names)
    local values = {}
    for _, name in ipairs(names) do
      local v = headers[name]
      if type(v) == "string" then
        values[#values + 1] = v
      else
        for i = 1, #v do
          if type(v[i]) ~= "string" then
            argerr(fname, 1, ("header '%s' must be a string or a list of strings (item %d is a %s)")
              :format(name, i, type(v[i])))
          end
          values[#values + 1] = v[i]
        end
      end
    end
    if #values > 0 then found[l] = values end
  end
  return found
end

-- One header's single value, or nil and why (duplicates are invalid).
local function single(found, name)
  local v = found[name]
  if not v then return nil end
  if #v > 1 then return nil, ("%d %s headers (duplicates are invalid)"):format(#v, name) end
  return trim(v[1])
end

--- trace.parse_traceparent(text) -> {version, trace_id, parent_id, flags} | nil, why
-- Version 00 must be exactly 55 characters. A later version (not ff) is
-- read as far as version 00's fields go; whatever follows must start with '-'.
function T.parse_traceparent(s)
  if type(s) ~= "string" then return nil, "string expected" end
  if #s < 55 then return nil, "too short" end
  local version = ssub(s, 1, 2)
  if not lowhex(version, 2) then return nil, "version is not 2 lowercase hex digits" end
  if version == "ff" then return nil, "version ff is invalid" end
  if version == "00" and #s ~= 55 then return nil, "version 00 must be exactly 55 characters" end
  if #s > 55 and ssub(s, 56, 56) ~= "-" then return nil, "data after the flags must start with '-'" end
  if ssub(s, 3, 3) ~= "-" or ssub(s, 36, 36) ~= "-" or ssub(s, 53, 53) ~= "-" then
    return nil, "fields must be separated by '-'"
  end
  local trace_id, parent_id, flags = ssub(s, 4, 35), ssub(s, 37, 52), ssub(s, 54, 55)
  if not lowhex(trace_id, 32) then return nil, "trace-id is not 32 lowercase hex digits" end
  if not nonzero(trace_id) then return nil, "trace-id is all zeros" end
  if not lowhex(parent_id, 16) then return nil, "parent-id is not 16 lowercase hex digits" end
  if not nonzero(parent_id) then return nil, "parent-id is all zeros" end
  if not lowhex(flags, 2) then return nil, "trace-flags is not 2 lowercase hex digits" end
  return { version = version, trace_id = trace_id, parent_id = parent_id,
           flags = tonumber(flags, 16) }
end

--- trace.parse_tracestate(text) -> list of {key, value} | nil, why
function T.parse_tracestate(s)
  if type(s) ~= "string" then return nil, "string expected" end
  local members, why = parse_tracestate(s)
  if not members then return nil, why end
  local out = {}
  for i, m in ipairs(members) do out[i] = { key = m[1], value = m[2] } end
  return out
end

local EXTRACT_OPTS = check.names { "reserve", "max_timeout", "new_trace", "sampled", "request_id" }
local START_OPTS = check.names { "sampled", "request_id" }

local function check_seconds(v, fname, n, field, allow_zero)
  if type(v) ~= "number" or v ~= v or v == huge or v == -huge or v < 0 or (v == 0 and not allow_zero) then
    argerr(fname, n, ("%s must be a %s finite number of seconds, got %s"):format(
      field, allow_zero and "non-negative" or "positive", type(v) == "number" and tostring(v) or type(v)))
  end
  return v
end

local DEFAULT_RESERVE = 0.005
T.DEFAULT_RESERVE = DEFAULT_RESERVE

--- trace.extract(headers [, parent [, opts]]) -> ctx, cancel, info
-- opts: reserve (seconds taken off the propagated timeout for the transit
-- and the reply; 0.005), max_timeout (seconds: the most a caller may ask
-- for), new_trace (start a trace when traceparent is missing or invalid;
-- true), sampled (the flag of such a new trace; true), request_id (make an
-- x-request-id when none valid came; true).
-- info: what trace.info(ctx) says, plus timeout (the propagated seconds,
-- before the reserve), restarted (a new trace was started), and problems
-- (header name -> why it was ignored) when a header was ignored.
function T.extract(headers, parent, opts)
  if type(headers) ~= "table" then argerr("extract", 1, "table expected, got " .. type(headers)) end
  local C = lc()
  if parent == nil then parent = C.background() else check_ctx(parent, "extract", 2) end
  opts = check.options(opts, "extract", 3, EXTRACT_OPTS)
  local reserve = opts.reserve
  if reserve == nil then reserve = DEFAULT_RESERVE else check_seconds(reserve, "extract", 3, "reserve", true) end
  local max_timeout = opts.max_timeout
  if max_timeout ~= nil then check_seconds(max_timeout, "extract", 3, "max_timeout") end

  local found = collect(headers, "extract")
  local problems
  local function problem(name, why)
    problems = problems or {}
    problems[name] = why
  end

  local with_value = C.with_value
  local ctx = parent
  local restarted = false

  -- traceparent, then tracestate (read only when traceparent is valid)
  local tp, why = single(found, H_TRACEPARENT)
  if tp then tp, why = T.parse_traceparent(tp) end
  if why then problem(H_TRACEPARENT, why) end
  if tp then
    ctx = with_value(ctx, T.TRACE_ID, tp.trace_id)
    ctx = with_value(ctx, T.SPAN_ID, tp.parent_id)
    ctx = with_value(ctx, T.TRACE_FLAGS, sampled_bit(tp.flags))
    if found[H_TRACESTATE] then
      local members, swhy = parse_tracestate(concat(found[H_TRACESTATE], ","))
      if not members then
        problem(H_TRACESTATE, swhy)
      elseif #members > 0 then
        ctx = with_value(ctx, T.TRACESTATE, join_members(members))
      end
    end
  else
    if found[H_TRACESTATE] then problem(H_TRACESTATE, "dropped with the traceparent") end
    if opts.new_trace ~= false then
      restarted = true
      ctx = with_value(ctx, T.TRACE_ID, T.new_trace_id())
      ctx = with_value(ctx, T.SPAN_ID, T.new_span_id())
      ctx = with_value(ctx, T.TRACE_FLAGS, opts.sampled == false and 0 or T.FLAG_SAMPLED)
    end
  end

  -- x-request-id
  local rid, rwhy = single(found, H_REQUEST_ID)
  if rid and not valid_request_id(rid) then
    rid, rwhy = nil, ("invalid x-request-id %q"):format(rid)
  end
  if rwhy then problem(H_REQUEST_ID, rwhy) end
  if not rid and opts.request_id ~= false then rid = T.new_trace_id() end
  if rid then ctx = with_value(ctx, T.REQUEST_ID, rid) end

  -- the deadline: the smaller of the valid timeout headers
  local timeout
  local g, gwhy = single(found, H_GRPC_TIMEOUT)
  if g then g, gwhy = T.parse_timeout(g) end
  if gwhy then problem(H_GRPC_TIMEOUT, gwhy) end
  local ms, mwhy = single(found, H_TIMEOUT_MS)
  if ms then ms, mwhy = parse_ms(ms) end
  if mwhy then problem(H_TIMEOUT_MS, mwhy) end
  if g and ms then timeout = g < ms and g or ms else timeout = g or ms end

  local cancel
  if timeout then
    local t = timeout
    if max_timeout and t > max_timeout then t = max_timeout end
    ctx, cancel = C.with_timeout(ctx, t - reserve)
  else
    ctx, cancel = C.with_cancel(ctx)
  end

  local info = T.info(ctx) or {}
  info.timeout = timeout
  info.restarted = restarted
  info.problems = problems
  return ctx, cancel, info
end

--- trace.inject(ctx [, headers]) -> headers, span_id
-- Writes into headers (a new table if nil): traceparent for a new span
-- whose parent is ctx's span (a new trace if ctx has none), tracestate,
-- x-request-id, and the time left before ctx's deadline as grpc-timeout and
-- x-request-timeout-ms (both rounded up). Any spelling of these names
-- already in headers is replaced; a deadline header is removed when ctx
-- has no deadline.
function T.inject(ctx, headers)
  check_ctx(ctx, "inject", 1)
  if headers == nil then
    headers = {}
  elseif type(headers) ~= "table" then
    argerr("inject", 2, "table expected, got " .. type(headers))
  end
  for name in pairs(headers) do
    if type(name) == "string" and WANTED[slower(name)] then headers[name] = nil end
  end
  local trace_id = ctx:value(T.TRACE_ID)
  local flags = T.FLAG_SAMPLED
  if trace_id then
    flags = sampled_bit(ctx:value(T.TRACE_FLAGS) or 0)
    local state = ctx:value(T.TRACESTATE)
    if state and state ~= "" then headers[H_TRACESTATE] = state end
  else
    trace_id = T.new_trace_id()
  end
  local span_id = T.new_span_id()
  headers[H_TRACEPARENT] = sfmt("00-%s-%s-%02x", trace_id, span_id, flags)
  local rid = ctx:value(T.REQUEST_ID)
  if rid then headers[H_REQUEST_ID] = rid end
  local left = ctx:remaining()
  if left then
    headers[H_GRPC_TIMEOUT] = T.format_timeout(left)
    headers[H_TIMEOUT_MS] = format_ms(left)
  end
  return headers, span_id
end

--- trace.info(ctx) -> {trace_id, span_id, parent_span_id, flags, sampled,
-- tracestate, request_id} | nil when ctx carries neither a trace nor a request id
function T.info(ctx)
  check_ctx(ctx, "info", 1)
  local trace_id, rid = ctx:value(T.TRACE_ID), ctx:value(T.REQUEST_ID)
  if not trace_id and not rid then return nil end
  local flags = ctx:value(T.TRACE_FLAGS)
  local sampled
  if flags then sampled = sampled_bit(flags) ~= 0 end
  return {
    trace_id = trace_id,
    span_id = ctx:value(T.SPAN_ID),
    parent_span_id = ctx:value(T.PARENT_SPAN_ID),
    flags = flags,
    sampled = sampled,
    tracestate = ctx:value(T.TRACESTATE),
    request_id = rid,
  }
end

--- trace.start(parent [, opts]) -> ctx with a new trace and root span
-- opts: sampled (true), request_id (a string to use, true to make one
-- (default), false for none).
function T.start(parent, opts)
  check_ctx(parent, "start", 1)
  opts = check.options(opts, "start", 2, START_OPTS)
  local C = lc()
  local ctx = C.with_value(parent, T.TRACE_ID, T.new_trace_id())
  ctx = C.with_value(ctx, T.SPAN_ID, T.new_span_id())
  ctx = C.with_value(ctx, T.TRACE_FLAGS, opts.sampled == false and 0 or T.FLAG_SAMPLED)
  local rid = opts.request_id
  if rid == nil or rid == true then rid = T.new_trace_id() end
  if rid then
    if not valid_request_id(rid) then
      argerr("start", 2, "request_id must be 1 to " .. MAX_REQUEST_ID .. " visible ASCII characters")
    end
    ctx = C.with_value(ctx, T.REQUEST_ID, rid)
  end
  return ctx
end

--- trace.new_span(ctx) -> child ctx whose span is new and whose parent
-- span is ctx's (a new trace if ctx has none), span_id
function T.new_span(ctx)
  check_ctx(ctx, "new_span", 1)
  local C = lc()
  local parent_span = ctx:value(T.SPAN_ID)
  if not ctx:value(T.TRACE_ID) then
    ctx = C.with_value(ctx, T.TRACE_ID, T.new_trace_id())
    ctx = C.with_value(ctx, T.TRACE_FLAGS, T.FLAG_SAMPLED)
  end
  local span_id = T.new_span_id()
  if parent_span then ctx = C.with_value(ctx, T.PARENT_SPAN_ID, parent_span) end
  ctx = C.with_value(ctx, T.SPAN_ID, span_id)
  return ctx, span_id
end

--- trace.tracestate(ctx) -> list of {key =, value =} (empty when none)
function T.tracestate(ctx)
  check_ctx(ctx, "tracestate", 1)
  local s = ctx:value(T.TRACESTATE)
  return s and T.parse_tracestate(s) or {}
end

--- trace.with_tracestate(ctx, key, value) -> ctx whose tracestate has
-- key=value first (as the spec says a vendor updates its entry); value nil
-- removes key. Beyond 32 members the rightmost ones are dropped.
function T.with_tracestate(ctx, key, value)
  check_ctx(ctx, "with_tracestate", 1)
  if type(key) ~= "string" or not valid_key(key) then
    argerr("with_tracestate", 2, "invalid tracestate key " .. (type(key) == "string" and ("%q"):format(key) or type(key)))
  end
  if value ~= nil and (type(value) ~= "string" or not valid_value(value)) then
    argerr("with_tracestate", 3, "invalid tracestate value " .. (type(value) == "string" and ("%q"):format(value) or type(value)))
  end
  local old = ctx:value(T.TRACESTATE)
  local members = old and parse_tracestate(old) or {}
  local out = {}
  if value ~= nil then out[1] = { key, value } end
  for _, m in ipairs(members) do
    if m[1] ~= key and #out < MAX_MEMBERS then out[#out + 1] = m end
  end
  return lc().with_value(ctx, T.TRACESTATE, join_members(out))
end

return T
