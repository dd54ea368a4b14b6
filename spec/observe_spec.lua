-- observe_spec.lua — lcontext.observe: log_fields, logger, request info,
-- copy_values, policy (docs/observability.md).
local context = require "lcontext"
local trace = require "lcontext.trace"
local helpers = require "spec.helpers"
-- merged into lcontext by init.lua once "observe" is in its module list;
-- until then, the module's exports are used directly
local E = context.policy and context or require("lcontext.observe")(context)

local bg = context.background()
local TID = "4bf92f3577b34da6a3ce929d0e0e4736"
local PID = "00f067aa0ba902b7"
local TP = "00-" .. TID .. "-" .. PID .. "-01"

local function raises(pat, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pat)
  err = tostring(err)
  assert(err:find(pat, 1, true), ("error %q does not contain %q"):format(err, pat))
end

local decode
do
  local ok, cjson = pcall(require, "cjson")
  if ok then decode = cjson.decode else decode = require("dkjson").decode end
end

-- a logger writing into a list; returns logger, lines
local function capture(opts)
  local lines = {}
  local log = E.logger(function(line) lines[#lines + 1] = line end, opts)
  return log, lines
end

describe("lcontext.observe", function()
  it("exports its functions", function()
    for _, name in ipairs({ "log_fields", "logger", "with_request_info", "request_info",
                            "copy_values", "policy", "request_info_key" }) do
      assert.is_not_nil(E[name], name)
    end
  end)

  describe("log_fields", function()
    it("is empty for background", function()
      assert.are.same({}, E.log_fields(bg))
    end)

    it("finds the trace and request id that lcontext.trace stored", function()
      local ctx = trace.extract({ traceparent = TP, ["x-request-id"] = "r-1" })
      local f = E.log_fields(ctx)
      assert.are.same({ trace_id = TID, span_id = PID, request_id = "r-1" }, f)
    end)

    it("finds the request info, which wins over the trace's values", function()
      local ctx = trace.extract({ traceparent = TP, ["x-request-id"] = "r-1" })
      local other = "11111111111111111111111111111111"
      ctx = E.with_request_info(ctx, { request_id = "r-2", user_id = 7, trace_id = other })
      local f = E.log_fields(ctx)
      assert.are.equal("r-2", f.request_id)
      assert.are.equal(7, f.user_id)
      assert.are.equal(other, f.trace_id)
      assert.are.equal(PID, f.span_id)
    end)

    it("gives the remaining time in ms, and the error once done", function()
      local ctx, cancel = context.with_timeout(bg, 1)
      local f = E.log_fields(ctx)
      assert.are.equal("integer", helpers.math_type(f.remaining_ms))
      assert.is_true(f.remaining_ms <= 1000 and f.remaining_ms > 800, tostring(f.remaining_ms))
      assert.is_nil(f.ctx_err)
      cancel()
      assert.are.equal("context canceled", E.log_fields(ctx).ctx_err)
      local late = context.with_timeout(bg, -1)
      local g = E.log_fields(late)
      assert.are.equal("context deadline exceeded", g.ctx_err)
      assert.is_true(g.remaining_ms <= 0)
    end)

    it("rejects a non-context", function()
      raises("bad argument #1 to 'log_fields' (context expected, got nil)", E.log_fields)
    end)
  end)

  describe("logger", function()
    it("writes one JSON object per event to a function sink, with time, level, msg and the log fields", function()
      local log, lines = capture({ clock = function() return 86400.25 end })
      local ctx = E.with_request_info(trace.extract({ traceparent = TP }), { request_id = "abc", user_id = "u1" })
      assert.is_true(log:info(ctx, "hello", { status = 200 }))
      assert.are.equal(1, #lines)
      assert.is_nil(lines[1]:find("\n", 1, true))
      local rec = decode(lines[1])
      assert.are.equal("1970-01-02T00:00:00.250Z", rec.time)
      assert.are.equal("info", rec.level)
      assert.are.equal("hello", rec.msg)
      assert.are.equal(200, rec.status)
      assert.are.equal("abc", rec.request_id)
      assert.are.equal("u1", rec.user_id)
      assert.are.equal(TID, rec.trace_id)
      assert.are.equal(PID, rec.span_id)
    end)

    it("writes lines ending in a newline to a file handle", function()
      local f = assert(io.tmpfile())
      local log = E.logger(f)
      log:warn(nil, "one\ntwo")
      log:error(bg, "three")
      f:seek("set")
      local text = f:read("*a")
      f:close()
      local lines = {}
      for line in text:gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
      assert.are.equal(2, #lines)
      assert.is_true(text:sub(-1) == "\n")
      assert.are.equal("one\ntwo", decode(lines[1]).msg)
      assert.are.equal("warn", decode(lines[1]).level)
      assert.are.equal("error", decode(lines[2]).level)
    end)

    it("writes to io.stderr by default", function()
      local stderr = io.stderr
      local got = {}
      io.stderr = { write = function(_, ...) got[#got + 1] = table.concat({ ... }) end }
      local ok, err = pcall(function() E.logger():info(nil, "to stderr") end)
      io.stderr = stderr
      assert.is_true(ok, err)
      assert.are.equal(1, #got)
      assert.are.equal("to stderr", decode(got[1]).msg)
    end)

    it("drops events below its level (info by default)", function()
      local log, lines = capture()
      assert.is_false(log:debug(nil, "hidden"))
      assert.is_true(log:info(nil, "shown"))
      assert.are.equal(1, #lines)
      local dlog, dlines = capture({ level = "debug" })
      dlog:debug(nil, "d")
      assert.are.equal("debug", decode(dlines[1]).level)
      local elog, elines = capture({ level = "error" })
      elog:info(nil, "no")
      elog:warn(nil, "no")
      elog:error(nil, "yes")
      assert.are.equal(1, #elines)
      assert.is_false(elog:enabled("warn"))
      assert.is_true(elog:enabled("error"))
      elog:set_level("warn")
      elog:warn(nil, "now yes")
      assert.are.equal(2, #elines)
    end)

    it("lets the call's fields win over log fields and static fields, but not over time, level, msg", function()
      local log, lines = capture({ fields = { service = "api", request_id = "static" } })
      local ctx = E.with_request_info(bg, { request_id = "from-ctx" })
      log:info(ctx, "m")
      local rec = decode(lines[1])
      assert.are.equal("api", rec.service)
      assert.are.equal("from-ctx", rec.request_id)
      log:info(ctx, "m", { request_id = "from-call", level = "x", msg = "y", time = "z" })
      rec = decode(lines[2])
      assert.are.equal("from-call", rec.request_id)
      assert.are.equal("info", rec.level)
      assert.are.equal("m", rec.msg)
      assert.are_not.equal("z", rec.time)
    end)

    it("with() adds fields for a child logger and leaves the parent alone", function()
      local log, lines = capture({ fields = { a = 1 } })
      local child = log:with({ b = 2 })
      child:info(nil, "c")
      log:info(nil, "p")
      assert.are.equal(1, decode(lines[1]).a)
      assert.are.equal(2, decode(lines[1]).b)
      assert.is_nil(decode(lines[2]).b)
    end)

    it("writes values JSON cannot hold as text instead of failing", function()
      local log, lines = capture()
      local cyc = {}
      cyc.self = cyc
      log:info(nil, "odd", { fn = print, nan = 0 / 0, inf = math.huge, ctx = bg, err = context.canceled,
                             cyc = cyc, list = { 1, 2, 3 }, sparse = { [1] = 1, [10] = 10 }, mixed = { 1, x = 2 } })
      local rec = decode(lines[1])
      assert.truthy(rec.fn:find("^function"))
      assert.are.equal("NaN", rec.nan)
      assert.are.equal("Infinity", rec.inf)
      assert.are.equal("context.Background", rec.ctx)
      assert.are.equal("context canceled", rec.err)
      assert.truthy(type(rec.cyc.self) == "string" and rec.cyc.self:find("^table"))
      assert.are.same({ 1, 2, 3 }, rec.list)
      assert.are.equal(10, rec.sparse["10"])
      assert.are.equal(2, rec.mixed.x)
      assert.are.equal(1, rec.mixed["1"])
    end)

    it("takes an epoch time and a custom encoder", function()
      local log, lines = capture({ time = "epoch", clock = function() return 12.5 end })
      log:info(nil, "e")
      assert.are.equal(12.5, decode(lines[1]).time)
      local seen
      local log2, lines2 = capture({ encode = function(t) seen = t; return "ENCODED" end })
      log2:info(nil, "x", { k = 1 })
      assert.are.equal("ENCODED", lines2[1])
      assert.are.equal(1, seen.k)
    end)

    it("falls back to dkjson when lua-cjson is missing", function()
      local loaded, preload = package.loaded.cjson, package.preload.cjson
      package.loaded.cjson = nil
      package.preload.cjson = function() error("no cjson here") end
      local ok, res = pcall(function()
        local fresh = dofile(package.searchpath("lcontext.observe", package.path))(context)
        local got = {}
        fresh.logger(function(l) got[#got + 1] = l end):info(nil, "via dkjson", { n = 1 })
        return got
      end)
      package.loaded.cjson, package.preload.cjson = loaded, preload
      assert.is_true(ok, tostring(res))
      local rec = require("dkjson").decode(res[1])
      assert.are.equal("via dkjson", rec.msg)
      assert.are.equal(1, rec.n)
    end)

    it("rejects bad arguments", function()
      raises("bad argument #1 to 'logger' (function or file handle expected, got number)", E.logger, 5)
      raises("bad argument #2 to 'logger' (level must be", E.logger, print, { level = "verbose" })
      raises("bad argument #2 to 'logger' (fields must be a table", E.logger, print, { fields = 1 })
      raises("bad argument #2 to 'logger' (time must be", E.logger, print, { time = "local" })
      raises("bad argument #2 to 'logger' (clock must be a function", E.logger, print, { clock = 1 })
      local log = capture()
      raises("bad argument #1 to 'info' (context or nil expected, got string)", log.info, log, "ctx", "m")
      raises("bad argument #2 to 'warn' (string expected, got nil)", log.warn, log, bg)
      raises("bad argument #3 to 'error' (table or nil expected, got string)", log.error, log, bg, "m", "f")
      raises("calling 'info' on bad self", log.info, {}, bg, "m")
      raises("bad argument #1 to 'set_level'", log.set_level, log, "loud")
    end)
  end)

  describe("request info", function()
    it("is stored and read back as a copy", function()
      local t0 = context.time()
      local ctx = E.with_request_info(bg, { request_id = "r", user_id = 42, client_addr = "10.0.0.1:5555",
                                            trace_id = TID })
      local info = E.request_info(ctx)
      assert.are.equal("r", info.request_id)
      assert.are.equal(42, info.user_id)
      assert.are.equal("10.0.0.1:5555", info.client_addr)
      assert.are.equal(TID, info.trace_id)
      assert.is_true(info.start >= t0 and info.start <= context.time())
      info.user_id = 1
      assert.are.equal(42, E.request_info(ctx).user_id)
      assert.is_nil(E.request_info(bg))
    end)

    it("takes a given start time", function()
      local ctx = E.with_request_info(bg, { start = 1000.5 })
      assert.are.equal(1000.5, E.request_info(ctx).start)
    end)

    it("merges with the request info already in the parent", function()
      local a = E.with_request_info(bg, { request_id = "r", start = 5 })
      local b = E.with_request_info(a, { user_id = "alice" })
      assert.are.same({ request_id = "r", user_id = "alice", start = 5 }, E.request_info(b))
      assert.are.same({ request_id = "r", start = 5 }, E.request_info(a))
    end)

    it("makes the request id the one trace.inject sends", function()
      local ctx = E.with_request_info(bg, { request_id = 123 })
      assert.are.equal("123", ctx:value(trace.REQUEST_ID))
      assert.are.equal("123", trace.inject(ctx)["x-request-id"])
    end)

    it("cannot be forged with with_value", function()
      raises("invalid value for key 'request_info'", context.with_value, bg, E.request_info_key, { user_id = 1 })
    end)

    it("rejects bad values, naming the field", function()
      local bad = {
        { { usr_id = 1 }, "unknown field \"usr_id\"" },
        { { request_id = "a b" }, "field 'request_id'" },
        { { request_id = "" }, "field 'request_id'" },
        { { request_id = 1.5 }, "field 'request_id'" },
        { { request_id = ("r"):rep(201) }, "field 'request_id'" },
        { { user_id = {} }, "field 'user_id': non-empty string (at most 256 bytes) or integer expected, got table" },
        { { user_id = "" }, "field 'user_id'" },
        { { trace_id = TID:upper() }, "field 'trace_id'" },
        { { trace_id = ("0"):rep(32) }, "field 'trace_id'" },
        { { start = 0 / 0 }, "field 'start'" },
        { { start = -1 }, "field 'start'" },
        { { start = "now" }, "field 'start'" },
        { { client_addr = "" }, "field 'client_addr'" },
        { { client_addr = 80 }, "field 'client_addr'" },
      }
      for _, case in ipairs(bad) do
        raises("bad argument #2 to 'with_request_info' (" .. case[2], E.with_request_info, bg, case[1])
      end
      raises("bad argument #2 to 'with_request_info' (table expected, got string)", E.with_request_info, bg, "r")
      raises("bad argument #1 to 'with_request_info' (context expected, got table)", E.with_request_info, {}, {})
      raises("bad argument #1 to 'request_info' (context expected, got nil)", E.request_info)
    end)
  end)

  describe("copy_values", function()
    it("carries the listed values onto another context, not its cancellation", function()
      local k1, k2, k3 = context.key("k1"), context.key("k2"), context.key("k3")
      local req, cancel = context.with_timeout(bg, 10)
      req = context.with_value(context.with_value(context.with_value(req, k1, "one"), k2, "two"), k3, "three")
      local job = E.copy_values(bg, req, { k1, k2, context.key("absent") })
      assert.are.equal("one", job:value(k1))
      assert.are.equal("two", job:value(k2))
      assert.is_nil(job:value(k3))
      assert.is_nil(job:deadline())
      cancel()
      assert.is_not_nil(req:err())
      assert.is_nil(job:err())
    end)

    it("keeps base's cancellation and values", function()
      local k, kb = context.key("k"), context.key("kb")
      local base, bcancel = context.with_cancel(context.with_value(bg, kb, "base"))
      local src = context.with_value(bg, k, 1)
      local ctx = E.copy_values(base, src, { k })
      assert.are.equal("base", ctx:value(kb))
      assert.are.equal(1, ctx:value(k))
      bcancel()
      assert.are.equal(context.canceled, ctx:err())
    end)

    it("copies the request info and the trace by default", function()
      local req, cancel = trace.extract({ traceparent = TP, ["x-request-id"] = "r-9" })
      req = E.with_request_info(req, { user_id = "u" })
      local job = E.copy_values(context.without_cancel(req), req)
      local job2 = E.copy_values(bg, req)
      cancel()
      for _, c in ipairs({ job, job2 }) do
        assert.is_nil(c:err())
        assert.are.equal(TID, c:value(trace.TRACE_ID))
        assert.are.equal("r-9", c:value(trace.REQUEST_ID))
        assert.are.equal("u", E.request_info(c).user_id)
        assert.are.equal("u", E.log_fields(c).user_id)
      end
    end)

    it("rejects bad arguments", function()
      raises("bad argument #1 to 'copy_values' (context expected, got nil)", E.copy_values, nil, bg, {})
      raises("bad argument #2 to 'copy_values' (context expected, got number)", E.copy_values, bg, 1, {})
      raises("bad argument #3 to 'copy_values' (list of keys expected, got string)", E.copy_values, bg, bg, "k")
      raises("bad argument #3 to 'copy_values' (keys[2] is NaN)", E.copy_values, bg, bg, { 1, 0 / 0 })
    end)
  end)

  describe("policy", function()
    -- remaining() is what a timeout of `timeout` s made during the test can
    -- have left (spec/helpers.lua): a pause of the machine cannot fail it
    local t_start
    before_each(function() t_start = helpers.now() end)
    local function within(ctx, timeout)
      helpers.remaining_near(ctx, timeout, t_start)
    end

    it("applies the default timeout when the parent has no deadline", function()
      local p = E.policy{ default_timeout = 2, max_timeout = 5 }
      local ctx, cancel, t, source = p:with(bg)
      within(ctx, 2)
      assert.are.equal(2, t)
      assert.are.equal("default", source)
      cancel()
      assert.are.equal(context.canceled, ctx:err())
    end)

    it("leaves a parent's deadline alone when it is within the max", function()
      local p = E.policy{ default_timeout = 2, max_timeout = 5 }
      local parent, pc = context.with_timeout(bg, 3)
      local ctx, cancel, t = p:with(parent)
      within(ctx, 3)
      assert.is_nil(t)
      cancel()
      assert.are.equal(context.canceled, ctx:err())
      assert.is_nil(parent:err())
      pc()
    end)

    it("clamps to the max: a parent without a deadline, or with a later one", function()
      local p = E.policy{ max_timeout = 1 }
      local a, _, t, source = p:with(bg)
      within(a, 1)
      assert.are.equal(1, t)
      assert.are.equal("max", source)
      local parent = context.with_timeout(bg, 100)
      within((p:with(parent)), 1)
      local near = context.with_timeout(bg, 0.5)
      local c, _, tn = p:with(near)
      within(c, 0.5)
      assert.is_nil(tn)
    end)

    it("applies an operation's timeout even under a parent deadline; the earlier one wins", function()
      local p = E.policy{ default_timeout = 10, max_timeout = 60, operations = { db = 0.5, upload = 30 } }
      local parent = context.with_timeout(bg, 5)
      local ctx, _, t, source = p:with(parent, "db")
      within(ctx, 0.5)
      assert.are.equal(0.5, t)
      assert.are.equal("operation", source)
      within((p:with(parent, "upload")), 5)
      within((p:with(bg, "upload")), 30)
      within((p:with(bg, "unknown")), 10)
    end)

    it("uses the first matching rule, which sees the parent and the operation", function()
      local calls = {}
      local premium = context.key("premium")
      local p = E.policy{
        default_timeout = 1, max_timeout = 60, operations = { report = 2 },
        rules = {
          { name = "premium", when = function(ctx, op) calls[#calls + 1] = op; return ctx:value(premium) end, timeout = 20 },
          { when = function() return true end, timeout = 3 },
          { when = function() error("never reached") end, timeout = 4 },
        },
      }
      local vip = context.with_value(bg, premium, true)
      local ctx, _, t, source = p:with(vip, "report")
      within(ctx, 20)
      assert.are.equal(20, t)
      assert.are.equal("rule", source)
      assert.are.same({ "report" }, calls)
      within((p:with(bg, "report")), 3)
      within((p:with(bg)), 3)
    end)

    it("without settings gives a plain cancellable child", function()
      local p = E.policy{}
      local ctx, cancel, t = p:with(bg, "x")
      assert.is_nil(ctx:deadline())
      assert.is_nil(t)
      cancel()
      assert.are.equal(context.canceled, ctx:err())
    end)

    it("validates, naming the field", function()
      local bad = {
        { { default_timeout = -1 }, "default_timeout must be a positive finite number of seconds, got -1" },
        { { default_timeout = 0 }, "default_timeout must be" },
        { { default_timeout = 0 / 0 }, "default_timeout must be" },
        { { default_timeout = math.huge }, "default_timeout must be" },
        { { default_timeout = "30" }, "default_timeout must be" },
        { { max_timeout = -5 }, "max_timeout must be" },
        { { default_timeout = 90, max_timeout = 60 }, "default_timeout (90) exceeds max_timeout (60)" },
        { { defualt_timeout = 30 }, "unknown field \"defualt_timeout\"" },
        { { operations = 5 }, "operations must be a table" },
        { { operations = { db = 0 } }, "operations[\"db\"] must be" },
        { { operations = { [1] = 5 } }, "operations: names must be non-empty strings" },
        { { max_timeout = 10, operations = { db = 20 } }, "operations[\"db\"] (20) exceeds max_timeout (10)" },
        { { rules = 1 }, "rules must be a list" },
        { { rules = { x = {} } }, "rules must be a list" },
        { { rules = { 5 } }, "rules[1] must be a table" },
        { { rules = { { timeout = 1 } } }, "rules[1].when must be a function" },
        { { rules = { { when = print } } }, "rules[1].timeout must be" },
        { { rules = { { when = print, timeout = 1, extra = 1 } } }, "rules[1]: unknown field \"extra\"" },
        { { max_timeout = 5, rules = { { when = print, timeout = 1 }, { when = print, timeout = 9 } } },
          "rules[2].timeout (9) exceeds max_timeout (5)" },
      }
      for _, case in ipairs(bad) do
        raises("bad argument #1 to 'policy' (" .. case[2], E.policy, case[1])
      end
      raises("bad argument #1 to 'policy' (table expected, got nil)", E.policy)
      local callable = setmetatable({}, { __call = function() return true end })
      assert.is_truthy(E.policy{ rules = { { when = callable, timeout = 1 } } })
    end)

    it("update replaces the settings after validating them; a failed update changes nothing", function()
      local p = E.policy{ default_timeout = 1, max_timeout = 2, operations = { a = 1 } }
      local before = p:settings()
      raises("bad argument #1 to 'update' (default_timeout (9) exceeds max_timeout (5))",
        p.update, p, { default_timeout = 9, max_timeout = 5 })
      raises("bad argument #1 to 'update' (operations[\"b\"] must be", p.update, p,
        { default_timeout = 1, operations = { a = 1, b = -1 } })
      assert.are.same(before, p:settings())
      assert.are.equal(p, p:update{ default_timeout = 3, max_timeout = 4 })
      assert.are.same({ default_timeout = 3, max_timeout = 4, operations = {}, rules = {} }, p:settings())
      within((p:with(bg, "a")), 3)
    end)

    it("settings gives a copy", function()
      local p = E.policy{ default_timeout = 1, operations = { a = 1 } }
      local s = p:settings()
      s.default_timeout = 100
      s.operations.a = 100
      assert.are.equal(1, p:settings().default_timeout)
      assert.are.equal(1, p:settings().operations.a)
    end)

    it("a with() in progress keeps the settings it started with", function()
      local p
      p = E.policy{ default_timeout = 1, rules = {
        { when = function()
            p:update{ default_timeout = 9, operations = { x = 9 } }
            return false
          end, timeout = 5 },
      } }
      local ctx, _, t = p:with(bg, "x")
      within(ctx, 1)
      assert.are.equal(1, t)
      within((p:with(bg, "x")), 9)
    end)

    it("rejects bad arguments to with", function()
      local p = E.policy{ default_timeout = 1 }
      raises("bad argument #1 to 'with' (context expected, got nil)", p.with, p)
      raises("bad argument #2 to 'with' (string or nil expected, got number)", p.with, p, bg, 5)
      raises("calling 'with' on bad self", p.with, bg)
    end)
  end)
end)
