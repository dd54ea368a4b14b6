--- lcontext.observe: structured logging, request info, carrying values onto
-- another context, and timeout policies (docs/observability.md).
--
--   context.log_fields(ctx)                 -> {request_id=, trace_id=, span_id=, user_id=, remaining_ms=, ctx_err=}
--   context.logger([sink [, opts]])         -> logger: info/warn/error/debug(ctx, msg [, fields])
--   context.with_request_info(parent, info) -> ctx
--   context.request_info(ctx)               -> {request_id=, user_id=, trace_id=, start=, client_addr=} | nil
--   context.copy_values(base, source [, keys]) -> ctx
--   context.policy(settings)                -> p: p:with(parent [, operation]), p:update(new), p:settings()
--
-- Loaded by lcontext (init.lua) like the other helpers: this file returns a
-- function that takes the lcontext module and returns what it adds.
return function(context)
  local trace = require "lcontext.trace"

  local type, tostring, error, pairs, ipairs, pcall = type, tostring, error, pairs, ipairs, pcall
  local getmetatable, setmetatable = getmetatable, setmetatable
  local floor, huge = math.floor, math.huge
  local sfmt, sfind = string.format, string.find

  local E = {}

  -- {=== argument errors, reported at the user's call site ===}
  local check = require "lcontext.check"
  local argerr = check.argerr
  local mtype = check.math_type -- before 5.3: integral numbers count as integers

  local is_ctx = check.is_ctx
  local check_ctx = check.ctx

  local finite = check.finite

  local callable = check.callable

  local function show(v)
    if type(v) == "string" then return sfmt("%q", v) end
    if type(v) == "number" or type(v) == "boolean" or v == nil then return tostring(v) end
    return type(v)
  end

  -- {=== request info ===}
  local MAX_ID = 200
  local MAX_TEXT = 256
  local made = setmetatable({}, { __mode = "k" }) -- the info tables we made
  local REQUEST_INFO = context.key("request_info", function(v)
    return made[v] == true, "made by context.with_request_info only"
  end)
  E.request_info_key = REQUEST_INFO

  local function id_value(v) -- a string of visible ASCII, or an integer
    if mtype(v) == "integer" then return true end
    return type(v) == "string" and #v >= 1 and #v <= MAX_ID and not sfind(v, "[^\33-\126]")
  end

  -- an id as text: an integer's digits (before 5.3 numbers are doubles,
  -- which tostring writes with 14 significant digits: "%.0f" writes them all)
  local id_string = tostring
  if not math.type then -- compat: Lua 5.1, LuaJIT
    id_string = function(v)
      if type(v) == "number" then return sfmt("%.0f", v) end
      return tostring(v)
    end
  end

  local INFO_FIELDS = {
    request_id = { id_value, ("string of 1 to %d visible ASCII characters or integer"):format(MAX_ID) },
    user_id = { function(v)
      return mtype(v) == "integer" or (type(v) == "string" and #v >= 1 and #v <= MAX_TEXT)
    end, ("non-empty string (at most %d bytes) or integer"):format(MAX_TEXT) },
    trace_id = { function(v)
      return type(v) == "string" and #v == 32 and not sfind(v, "[^0-9a-f]") and sfind(v, "[^0]") ~= nil
    end, "32 lowercase hex digits, not all zero" },
    start = { function(v) return finite(v) and v >= 0 end, "finite non-negative number (epoch seconds)" },
    client_addr = { function(v) return type(v) == "string" and #v >= 1 and #v <= MAX_TEXT end,
      ("non-empty string (at most %d bytes)"):format(MAX_TEXT) },
  }

  local function copy_info(t)
    if not t then return nil end
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
  end

  --- context.with_request_info(parent, info) -> ctx
  -- info: request_id, user_id, trace_id, start (epoch seconds; default
  -- the parent's, else context.time()), client_addr. Fields not given are
  -- inherited from the request info already in parent. A request_id is
  -- also stored under lcontext.trace's REQUEST_ID, so trace.inject sends it.
  function E.with_request_info(parent, info)
    check_ctx(parent, "with_request_info", 1)
    if type(info) ~= "table" then
      argerr("with_request_info", 2, "table expected, got " .. type(info))
    end
    for k, v in pairs(info) do
      local rule = INFO_FIELDS[k]
      if not rule then check.unknown("with_request_info", 2, k, INFO_FIELDS, "field") end
      if not rule[1](v) then
        argerr("with_request_info", 2, ("field '%s': %s expected, got %s"):format(k, rule[2], show(v)))
      end
    end
    local merged = copy_info(parent:value(REQUEST_INFO)) or {}
    for k, v in pairs(info) do merged[k] = v end
    if merged.start == nil then merged.start = context.time() end
    made[merged] = true
    local ctx = context.with_value(parent, REQUEST_INFO, merged)
    if info.request_id ~= nil then
      ctx = context.with_value(ctx, trace.REQUEST_ID, id_string(info.request_id))
    end
    return ctx
  end

  --- context.request_info(ctx) -> a copy of the request info, or nil
  function E.request_info(ctx)
    check_ctx(ctx, "request_info", 1)
    return copy_info(ctx:value(REQUEST_INFO))
  end

  -- {=== log fields ===}
  --- context.log_fields(ctx) -> table of the well-known request values in ctx:
  -- request_id, trace_id (request info first, then lcontext.trace's keys),
  -- span_id, user_id, remaining_ms (time left before the deadline, rounded
  -- to the millisecond; negative once passed), ctx_err (once ctx is done).
  function E.log_fields(ctx)
    check_ctx(ctx, "log_fields", 1)
    local f = {}
    local ri = ctx:value(REQUEST_INFO)
    if ri then
      f.request_id, f.user_id, f.trace_id = ri.request_id, ri.user_id, ri.trace_id
    end
    if f.request_id == nil then f.request_id = ctx:value(trace.REQUEST_ID) end
    if f.trace_id == nil then f.trace_id = ctx:value(trace.TRACE_ID) end
    f.span_id = ctx:value(trace.SPAN_ID)
    local left = ctx:remaining()
    if left then f.remaining_ms = floor(left * 1000 + 0.5) end
    local err = ctx:err()
    if err then f.ctx_err = tostring(err) end
    return f
  end

  -- {=== logger ===}
  local encode -- the JSON encoder, found on first use
  local function json_encoder()
    if encode then return encode end
    local ok, cjson = pcall(require, "cjson")
    if ok and type(cjson) == "table" and cjson.new then
      local cj = cjson.new() -- a private instance: others' settings do not apply
      if cj.encode_escape_forward_slash then cj.encode_escape_forward_slash(false) end
      encode = cj.encode
    else
      local dok, dkjson = pcall(require, "dkjson")
      if not dok then
        error("lcontext logger: needs a JSON library (lua-cjson or dkjson)", 3)
      end
      encode = function(t) return dkjson.encode(t) end
    end
    return encode
  end

  -- A copy of v that a JSON encoder takes: numbers finite, tables of data
  -- (sequences or string-keyed, no cycles, depth-limited); anything else
  -- (functions, userdata, contexts, objects with __tostring) as its tostring.
  local MAX_DEPTH = 8
  local function sanitize(v, depth, seen)
    local tv = type(v)
    if tv == "string" or tv == "boolean" then return v end
    if tv == "number" then
      if v ~= v then return "NaN" end
      if v == huge then return "Infinity" end
      if v == -huge then return "-Infinity" end
      return v
    end
    if tv ~= "table" then return tostring(v) end
    local mt = getmetatable(v)
    if mt ~= nil and (type(mt) ~= "table" or mt.__tostring) then return tostring(v) end
    if seen[v] or depth >= MAX_DEPTH then return tostring(v) end
    seen[v] = true
    local n, count = #v, 0
    for _ in pairs(v) do count = count + 1 end
    local out = {}
    if n > 0 and n == count then
      for i = 1, n do out[i] = sanitize(v[i], depth + 1, seen) end
    else
      for k, x in pairs(v) do out[tostring(k)] = sanitize(x, depth + 1, seen) end
    end
    seen[v] = nil
    return out
  end

  local LEVELS = { debug = 10, info = 20, warn = 30, error = 40 }

  local function iso_time(t)
    local s = floor(t)
    local ms = floor((t - s) * 1000)
    if ms > 999 then ms = 999 end
    return os.date("!%Y-%m-%dT%H:%M:%S", s) .. sfmt(".%03dZ", ms)
  end

  local LOGGER_OPTS = check.names { "level", "fields", "clock", "time", "encode" }

  local Logger = {}
  Logger.__index = Logger
  Logger.__name = "lcontext.logger"

  --- context.logger([sink [, opts]]) -> logger
  -- sink: a function(line) (given each line without its newline) or a file
  -- handle (written line .. "\n"); default io.stderr. opts: level (the
  -- least level written: "debug", "info" (default), "warn", "error"),
  -- fields (added to every line), clock (epoch seconds; context.time),
  -- time ("iso" (default) or "epoch"), encode (table -> string; default
  -- lua-cjson, else dkjson).
  -- A line holds time, level, msg, the log_fields of ctx, opts.fields and
  -- the call's fields; a call's fields win over the others, but never over
  -- time, level and msg.
  function E.logger(sink, opts)
    if sink == nil then sink = io.stderr end
    local write
    if type(sink) == "function" then
      write = sink
    else
      local ok, w = pcall(function() return sink.write end)
      if not (ok and callable(w)) then
        argerr("logger", 1, "function or file handle expected, got " .. type(sink))
      end
      write = function(line) sink:write(line, "\n") end
    end
    if opts == nil then opts = {} end
    if type(opts) ~= "table" then argerr("logger", 2, "table expected, got " .. type(opts)) end
    check.options(opts, "logger", 2, LOGGER_OPTS)
    local level = opts.level or "info"
    if not LEVELS[level] then
      argerr("logger", 2, "level must be \"debug\", \"info\", \"warn\" or \"error\", got " .. show(level))
    end
    if opts.fields ~= nil and type(opts.fields) ~= "table" then
      argerr("logger", 2, "fields must be a table, got " .. type(opts.fields))
    end
    if opts.clock ~= nil and not callable(opts.clock) then
      argerr("logger", 2, "clock must be a function, got " .. type(opts.clock))
    end
    if opts.encode ~= nil and not callable(opts.encode) then
      argerr("logger", 2, "encode must be a function, got " .. type(opts.encode))
    end
    local time = opts.time or "iso"
    if time ~= "iso" and time ~= "epoch" then
      argerr("logger", 2, "time must be \"iso\" or \"epoch\", got " .. show(time))
    end
    local fields = {}
    for k, v in pairs(opts.fields or {}) do fields[k] = v end
    return setmetatable({
      _write = write, _min = LEVELS[level],
      _fields = fields, _clock = opts.clock or context.time, _time = time,
      _encode = opts.encode or json_encoder(),
    }, Logger)
  end

  local function check_logger(self, fname)
    if getmetatable(self) ~= Logger then
      error(("calling '%s' on bad self (logger expected, got %s)"):format(fname, type(self)), 3)
    end
  end

  local function emit(self, level, ctx, msg, fields)
    if ctx ~= nil and not is_ctx(ctx) then argerr(level, 1, "context or nil expected, got " .. type(ctx)) end
    if type(msg) ~= "string" and type(msg) ~= "number" then
      argerr(level, 2, "string expected, got " .. type(msg))
    end
    if fields ~= nil and type(fields) ~= "table" then
      argerr(level, 3, "table or nil expected, got " .. type(fields))
    end
    if LEVELS[level] < self._min then return false end
    local rec = {}
    for k, v in pairs(self._fields) do rec[k] = v end
    if ctx then
      for k, v in pairs(E.log_fields(ctx)) do rec[k] = v end
    end
    if fields then
      for k, v in pairs(fields) do rec[k] = v end
    end
    local now = self._clock()
    rec.time = self._time == "iso" and iso_time(now) or now
    rec.level = level
    rec.msg = tostring(msg)
    self._write(self._encode(sanitize(rec, 0, {})))
    return true
  end

  for name in pairs(LEVELS) do
    --- logger:debug/info/warn/error(ctx, msg [, fields]) -> written?
    Logger[name] = function(self, ctx, msg, fields)
      check_logger(self, name)
      return emit(self, name, ctx, msg, fields)
    end
  end

  --- logger:with(fields) -> a logger writing to the same sink, with fields
  -- added to every line
  function Logger.with(self, fields)
    check_logger(self, "with")
    if type(fields) ~= "table" then argerr("with", 1, "table expected, got " .. type(fields)) end
    local child = {}
    for k, v in pairs(self) do child[k] = v end
    local f = {}
    for k, v in pairs(self._fields) do f[k] = v end
    for k, v in pairs(fields) do f[k] = v end
    child._fields = f
    return setmetatable(child, Logger)
  end

  --- logger:set_level(level); logger:enabled(level) -> boolean
  function Logger.set_level(self, level)
    check_logger(self, "set_level")
    if not LEVELS[level] then
      argerr("set_level", 1, "\"debug\", \"info\", \"warn\" or \"error\" expected, got " .. show(level))
    end
    self._min = LEVELS[level]
    return self
  end

  function Logger.enabled(self, level)
    check_logger(self, "enabled")
    if not LEVELS[level] then
      argerr("enabled", 1, "\"debug\", \"info\", \"warn\" or \"error\" expected, got " .. show(level))
    end
    return LEVELS[level] >= self._min
  end

  -- {=== copy_values ===}
  local WELL_KNOWN = { trace.TRACE_ID, trace.SPAN_ID, trace.PARENT_SPAN_ID, trace.TRACE_FLAGS,
                       trace.TRACESTATE, trace.REQUEST_ID, REQUEST_INFO }

  --- context.copy_values(base, source [, keys]) -> ctx
  -- A context derived from base (its cancellation and deadline) that
  -- carries source's values for the listed keys (those source has). Without
  -- keys: the request info and lcontext.trace's keys.
  function E.copy_values(base, source, keys)
    check_ctx(base, "copy_values", 1)
    check_ctx(source, "copy_values", 2)
    if keys == nil then
      keys = WELL_KNOWN
    elseif type(keys) ~= "table" then
      argerr("copy_values", 3, "list of keys expected, got " .. type(keys))
    end
    local n = #keys
    for i = 1, n do
      local k = keys[i]
      if k ~= k then argerr("copy_values", 3, ("keys[%d] is NaN"):format(i)) end
    end
    local ctx = base
    for i = 1, n do
      local v = source:value(keys[i])
      if v ~= nil then ctx = context.with_value(ctx, keys[i], v) end
    end
    return ctx
  end

  -- {=== policy ===}
  local POLICY_FIELDS = { default_timeout = true, max_timeout = true, operations = true, rules = true }
  local RULE_FIELDS = { when = true, timeout = true, name = true }

  local function seconds_ok(v) return finite(v) and v > 0 end

  -- Validate a settings table into a fresh, private copy; raise naming the
  -- field otherwise.
  local function validate(spec, fname)
    if type(spec) ~= "table" then argerr(fname, 1, "table expected, got " .. type(spec)) end
    check.options(spec, fname, 1, POLICY_FIELDS, "field")
    local s = { operations = {}, rules = {} }
    local function seconds(v, what)
      if not seconds_ok(v) then
        argerr(fname, 1, ("%s must be a positive finite number of seconds, got %s"):format(what, show(v)))
      end
      return v
    end
    if spec.max_timeout ~= nil then s.max_timeout = seconds(spec.max_timeout, "max_timeout") end
    if spec.default_timeout ~= nil then s.default_timeout = seconds(spec.default_timeout, "default_timeout") end
    local max = s.max_timeout
    local function within_max(v, what)
      if max and v > max then
        argerr(fname, 1, ("%s (%s) exceeds max_timeout (%s)"):format(what, tostring(v), tostring(max)))
      end
    end
    if s.default_timeout then within_max(s.default_timeout, "default_timeout") end
    if spec.operations ~= nil then
      if type(spec.operations) ~= "table" then
        argerr(fname, 1, "operations must be a table of name = seconds, got " .. type(spec.operations))
      end
      for name, v in pairs(spec.operations) do
        if type(name) ~= "string" or name == "" then
          argerr(fname, 1, "operations: names must be non-empty strings, got " .. show(name))
        end
        local what = ("operations[%q]"):format(name)
        s.operations[name] = seconds(v, what)
        within_max(v, what)
      end
    end
    if spec.rules ~= nil then
      if type(spec.rules) ~= "table" then
        argerr(fname, 1, "rules must be a list, got " .. type(spec.rules))
      end
      local n = #spec.rules
      for k in pairs(spec.rules) do
        if mtype(k) ~= "integer" or k < 1 or k > n then
          argerr(fname, 1, "rules must be a list (found key " .. show(k) .. ")")
        end
      end
      for i = 1, n do
        local r = spec.rules[i]
        local what = ("rules[%d]"):format(i)
        if type(r) ~= "table" then argerr(fname, 1, what .. " must be a table, got " .. type(r)) end
        for k in pairs(r) do
          if not RULE_FIELDS[k] then check.unknown(fname, 1, k, RULE_FIELDS, "field", what .. ": ") end
        end
        if not callable(r.when) then
          argerr(fname, 1, what .. ".when must be a function, got " .. type(r.when))
        end
        if r.name ~= nil and type(r.name) ~= "string" then
          argerr(fname, 1, what .. ".name must be a string, got " .. type(r.name))
        end
        seconds(r.timeout, what .. ".timeout")
        within_max(r.timeout, what .. ".timeout")
        s.rules[i] = { when = r.when, timeout = r.timeout, name = r.name }
      end
    end
    return s
  end

  local function copy_settings(s)
    local out = { default_timeout = s.default_timeout, max_timeout = s.max_timeout,
                  operations = {}, rules = {} }
    for k, v in pairs(s.operations) do out.operations[k] = v end
    for i, r in ipairs(s.rules) do out.rules[i] = { when = r.when, timeout = r.timeout, name = r.name } end
    return out
  end

  local Policy = {}
  Policy.__index = Policy
  Policy.__name = "lcontext.policy"

  local function check_policy(self, fname)
    if getmetatable(self) ~= Policy then
      error(("calling '%s' on bad self (policy expected, got %s)"):format(fname, type(self)), 3)
    end
  end

  --- context.policy{default_timeout=, max_timeout=, operations={name=seconds}, rules={{when=, timeout=}}} -> p
  function E.policy(spec)
    return setmetatable({ _s = validate(spec, "policy") }, Policy)
  end

  --- p:with(parent [, operation]) -> ctx, cancel, timeout (seconds applied, or nil), source
  -- The timeout: the first rule whose when(parent, operation) is true, else
  -- the operation's, else (only when parent has no deadline) the default;
  -- clamped to max_timeout, which also bounds a parent with no deadline or
  -- a later one. As always, a parent's earlier deadline wins.
  -- source says where the timeout came from: "rule", "operation",
  -- "default" or "max".
  function Policy.with(self, parent, operation)
    check_policy(self, "with")
    check_ctx(parent, "with", 1)
    if operation ~= nil and type(operation) ~= "string" then
      argerr("with", 2, "string or nil expected, got " .. type(operation))
    end
    local s = self._s -- one snapshot: an update made meanwhile does not mix in
    local t, source
    for _, r in ipairs(s.rules) do
      if r.when(parent, operation) then t, source = r.timeout, "rule"; break end
    end
    if not t and operation ~= nil and s.operations[operation] then
      t, source = s.operations[operation], "operation"
    end
    local left = parent:remaining()
    if not t and left == nil and s.default_timeout then
      t, source = s.default_timeout, "default"
    end
    -- (validation keeps every configured timeout within max_timeout)
    local max = s.max_timeout
    if max and not t and (left == nil or left > max) then
      t, source = max, "max"
    end
    if t then
      local ctx, cancel = context.with_timeout(parent, t)
      return ctx, cancel, t, source
    end
    local ctx, cancel = context.with_cancel(parent)
    return ctx, cancel
  end

  --- p:update(new) -> p; validates new, then replaces every setting at once
  -- (a failed update changes nothing)
  function Policy.update(self, new)
    check_policy(self, "update")
    self._s = validate(new, "update")
    return self
  end

  --- p:settings() -> a copy of the current settings
  function Policy.settings(self)
    check_policy(self, "settings")
    return copy_settings(self._s)
  end

  return E
end
