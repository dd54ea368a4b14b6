-- trace_spec.lua — lcontext.trace: W3C trace context (traceparent,
-- tracestate), x-request-id and deadline propagation (docs/observability.md).
-- The header vectors follow the cases of the W3C trace-context test suite,
-- restated here as tables.
local context = require "lcontext"
local trace = require "lcontext.trace"
local helpers = require "spec.helpers"

local bg = context.background()
-- fewer random rounds under valgrind and the GC-stress run (same checks)
local ROUNDS = require("spec.sched_helpers").SLOW and 200 or 2000

local TID = "4bf92f3577b34da6a3ce929d0e0e4736"
local PID = "00f067aa0ba902b7"
local ZERO32, ZERO16 = ("0"):rep(32), ("0"):rep(16)

local function tp(version, trace_id, parent_id, flags, rest)
  return (version or "00") .. "-" .. (trace_id or TID) .. "-" .. (parent_id or PID)
    .. "-" .. (flags or "01") .. (rest or "")
end

-- raises an error whose message matches pat (plain text)
local function raises(pat, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching " .. pat)
  err = tostring(err)
  assert(err:find(pat, 1, true), ("error %q does not contain %q"):format(err, pat))
end

local function extract(headers, parent, opts)
  local ctx, cancel, info = trace.extract(headers, parent, opts)
  return ctx, cancel, info
end

describe("lcontext.trace", function()
  it("is a separate module, not merged into lcontext", function()
    assert.is_nil(context.inject)
    assert.is_nil(context.extract)
    assert.are.equal("function", type(trace.inject))
    assert.are.equal("function", type(trace.extract))
    assert.are.equal(trace, require "lcontext.trace")
  end)

  describe("traceparent: valid headers", function()
    local valid = {
      { "version 00, sampled", tp(), 1 },
      { "version 00, not sampled", tp("00", nil, nil, "00"), 0 },
      { "unknown flags are kept only as the sampled bit", tp("00", nil, nil, "ff"), 1 },
      { "unknown flags without the sampled bit", tp("00", nil, nil, "fe"), 0 },
      { "a later version of exactly 55 characters", tp("cc"), 1 },
      { "a later version followed by '-' and more", tp("cc", nil, nil, "01", "-what-comes-next"), 1 },
      { "version 01 with an extra field", tp("01", nil, nil, "00", "-ab"), 0 },
      { "version fe (the highest valid one)", tp("fe"), 1 },
      { "leading spaces and tabs", " \t " .. tp(), 1 },
      { "trailing spaces and tabs", tp() .. "\t \t", 1 },
    }
    for _, case in ipairs(valid) do
      it(case[1], function()
        local ctx, cancel, info = extract({ traceparent = case[2] })
        assert.are.equal(TID, info.trace_id)
        assert.are.equal(PID, info.span_id)
        assert.are.equal(case[3], info.flags)
        assert.are.equal(case[3] == 1, info.sampled)
        assert.is_false(info.restarted)
        assert.is_nil(info.problems)
        assert.are.equal(TID, ctx:value(trace.TRACE_ID))
        assert.are.equal(PID, ctx:value(trace.SPAN_ID))
        cancel()
      end)
    end

    for _, name in ipairs({ "traceparent", "TRACEPARENT", "TraceParent", "tRaCePaReNt" }) do
      it("header name " .. name .. " (names are case-insensitive)", function()
        local _, _, info = extract({ [name] = tp() })
        assert.are.equal(TID, info.trace_id)
      end)
    end

    it("a list with one value", function()
      local _, _, info = extract({ traceparent = { tp() } })
      assert.are.equal(TID, info.trace_id)
    end)
  end)

  describe("traceparent: invalid headers restart the trace", function()
    local bad = {
      { "version ff", tp("ff") },
      { "a one-digit version", "0-" .. TID .. "-" .. PID .. "-01" },
      { "a three-digit version", "000-" .. TID .. "-" .. PID .. "-01" },
      { "a four-digit version", "0000-" .. TID .. "-" .. PID .. "-01" },
      { "version with an illegal character first", tp(".0") },
      { "version with an illegal character second", tp("0.") },
      { "uppercase version", tp("0A") },
      { "non-hex version", tp("0g") },
      { "trace-id all zeros", tp(nil, ZERO32) },
      { "trace-id uppercase", tp(nil, TID:upper()) },
      { "trace-id with an illegal character first", tp(nil, "." .. TID:sub(2)) },
      { "trace-id with an illegal character last", tp(nil, TID:sub(1, 31) .. ".") },
      { "trace-id one digit short", tp(nil, TID:sub(2)) },
      { "trace-id one digit long", tp(nil, TID .. "a") },
      { "parent-id all zeros", tp(nil, nil, ZERO16) },
      { "parent-id uppercase", tp(nil, nil, "00F067AA0BA902B7") },
      { "parent-id with an illegal character first", tp(nil, nil, "." .. PID:sub(2)) },
      { "parent-id with an illegal character last", tp(nil, nil, PID:sub(1, 15) .. ".") },
      { "parent-id one digit short", tp(nil, nil, PID:sub(2)) },
      { "parent-id one digit long", tp(nil, nil, PID .. "a") },
      { "flags with an illegal character", tp(nil, nil, nil, ".0") },
      { "flags uppercase", tp(nil, nil, nil, "0A") },
      { "flags one digit", tp(nil, nil, nil, "0") },
      { "flags three digits", tp(nil, nil, nil, "011") },
      { "version 00 with a trailing '-'", tp("00", nil, nil, "01", "-") },
      { "version 00 with trailing data", tp("00", nil, nil, "01", "-what-comes-next") },
      { "version 00 with trailing junk", tp("00", nil, nil, "01", "x") },
      { "a later version followed by data without '-'", tp("cc", nil, nil, "01", ".what-comes-next") },
      { "a later version shorter than 55 characters", "cc-" .. TID .. "-" .. PID .. "-1" },
      { "'_' in place of '-'", "00_" .. TID .. "_" .. PID .. "_01" },
      { "fields out of place", "00-" .. PID .. "-" .. TID .. "-01" },
      { "a space inside", "00 -" .. TID .. "-" .. PID .. "-01" },
      { "the empty string", "" },
      { "only whitespace", "   " },
    }
    for _, case in ipairs(bad) do
      it(case[1], function()
        local ctx, cancel, info = extract({ traceparent = case[2], tracestate = "foo=1" })
        assert.is_true(info.restarted)
        assert.is_string(info.problems.traceparent)
        assert.are_not.equal(TID, info.trace_id)
        assert.is_true(trace.parse_traceparent(tp(nil, info.trace_id, info.span_id)) ~= nil)
        -- an invalid traceparent drops tracestate
        assert.is_nil(ctx:value(trace.TRACESTATE))
        assert.is_string(info.problems.tracestate)
        cancel()
      end)
    end

    it("two traceparent headers (a list of two)", function()
      local _, _, info = extract({ traceparent = { tp(), tp() } })
      assert.is_true(info.restarted)
      assert.truthy(info.problems.traceparent:find("duplicate", 1, true))
    end)

    it("two traceparent headers (two spellings)", function()
      local _, _, info = extract({ traceparent = tp(), TraceParent = tp() })
      assert.is_true(info.restarted)
      assert.truthy(info.problems.traceparent:find("duplicate", 1, true))
    end)

    it("header names that only look alike are not traceparent", function()
      for _, name in ipairs({ "trace-parent", "trace.parent", "traceparent " }) do
        local _, _, info = extract({ [name] = tp() })
        assert.is_true(info.restarted, name)
        assert.is_nil(info.problems, name)
      end
    end)

    it("a missing traceparent starts a trace, sampled unless told otherwise", function()
      local ctx, _, info = extract({})
      assert.is_true(info.restarted)
      assert.is_nil(info.problems)
      assert.are.equal(1, info.flags)
      assert.are.equal(info.trace_id, ctx:value(trace.TRACE_ID))
      local _, _, info2 = extract({}, nil, { sampled = false })
      assert.are.equal(0, info2.flags)
      assert.are_not.equal(info.trace_id, info2.trace_id)
    end)

    it("new_trace = false leaves the context without a trace", function()
      local ctx, _, info = extract({ traceparent = tp("ff") }, nil, { new_trace = false, request_id = false })
      assert.is_nil(ctx:value(trace.TRACE_ID))
      assert.is_nil(ctx:value(trace.SPAN_ID))
      assert.is_nil(info.trace_id)
      assert.is_false(info.restarted)
      assert.is_string(info.problems.traceparent)
      assert.is_nil(trace.info(ctx))
    end)
  end)

  describe("parse_traceparent", function()
    it("gives the fields and the version", function()
      local p = trace.parse_traceparent(tp("cc", nil, nil, "03", "-x"))
      assert.are.same({ version = "cc", trace_id = TID, parent_id = PID, flags = 3 }, p)
    end)
    it("gives nil and a reason", function()
      local p, why = trace.parse_traceparent(tp("ff"))
      assert.is_nil(p)
      assert.truthy(why:find("ff", 1, true))
      assert.is_nil((trace.parse_traceparent(42)))
    end)
  end)

  it("info.problems says what docs/observability.md's example says", function()
    local tp = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    local _, _, info = trace.extract({ traceparent = tp, tracestate = "FOO=1" })
    assert.are.equal('invalid key "FOO"', info.problems.tracestate)
    assert.are.equal("0af7651916cd43dd8448eb211c80319c", info.trace_id)
    _, _, info = trace.extract({ traceparent = "00-0af7...-00f0...-01", tracestate = "k=1" })
    assert.are.equal("too short", info.problems.traceparent)
    assert.are.equal("dropped with the traceparent", info.problems.tracestate)
    assert.is_true(info.restarted)
  end)

  describe("tracestate", function()
    local function state(ts, more)
      local headers = { traceparent = tp(), tracestate = ts }
      for k, v in pairs(more or {}) do headers[k] = v end
      local ctx, _, info = extract(headers)
      assert.are.equal(TID, info.trace_id)
      return ctx:value(trace.TRACESTATE), info.problems and info.problems.tracestate
    end

    local function members(n, from)
      local t = {}
      for i = from or 1, n do t[#t + 1] = ("k%02d=v%02d"):format(i, i) end
      return table.concat(t, ",")
    end

    local ALL_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
    local ALL_VALUE_CHARS = {}
    for b = 0x20, 0x7e do
      if b ~= 0x2c and b ~= 0x3d then ALL_VALUE_CHARS[#ALL_VALUE_CHARS + 1] = string.char(b) end
    end
    ALL_VALUE_CHARS = table.concat(ALL_VALUE_CHARS) -- ends with "~", starts with " "

    local valid = {
      { "one member", "foo=1", "foo=1" },
      { "two members", "foo=1,bar=2", "foo=1,bar=2" },
      { "spaces and tabs around members", " foo=1 ,\tbar=2\t, baz=3", "foo=1,bar=2,baz=3" },
      { "empty members are skipped", ",,foo=1,, ,\t,bar=2,", "foo=1,bar=2" },
      { "every character a key may have", ALL_KEY_CHARS .. "=1", ALL_KEY_CHARS .. "=1" },
      { "every character a value may have", "foo=" .. ALL_VALUE_CHARS:sub(2), "foo=" .. ALL_VALUE_CHARS:sub(2) },
      { "a value starting with a space", "foo= x", "foo= x" },
      { "a value with inner spaces", "foo=a b c", "foo=a b c" },
      { "a tenant@system key", "tenant@vendor=1", "tenant@vendor=1" },
      { "a tenant id may start with a digit", "0tenant@vendor=1", "0tenant@vendor=1" },
      { "a system id of 14 characters", "t@" .. ("s"):rep(14) .. "=1", "t@" .. ("s"):rep(14) .. "=1" },
      { "a tenant id of 241 characters", ("t"):rep(241) .. "@s=1", ("t"):rep(241) .. "@s=1" },
      { "a key of 256 characters", ("k"):rep(256) .. "=1", ("k"):rep(256) .. "=1" },
      { "a value of 256 characters", "k=" .. ("v"):rep(256), "k=" .. ("v"):rep(256) },
      { "32 members", members(32), members(32) },
      { "32 members and empty ones", members(32) .. ",,,", members(32) },
    }
    for _, case in ipairs(valid) do
      it("valid: " .. case[1], function()
        local s, problem = state(case[2])
        assert.is_nil(problem)
        assert.are.equal(case[3], s)
      end)
    end

    it("valid: several headers are joined in order", function()
      assert.are.equal("foo=1,bar=2,baz=3", (state({ "foo=1", "bar=2,baz=3" })))
    end)

    it("valid: 32 members over two headers", function()
      assert.are.equal(members(32), (state({ members(16), members(32, 17) })))
    end)

    it("valid: the header name is case-insensitive", function()
      local headers = { traceparent = tp(), TraceState = "foo=1" }
      local ctx = extract(headers)
      assert.are.equal("foo=1", ctx:value(trace.TRACESTATE))
    end)

    it("valid: an empty header is accepted and gives no tracestate", function()
      local s, problem = state("")
      assert.is_nil(s)
      assert.is_nil(problem)
      local s2, problem2 = state({ "", " " })
      assert.is_nil(s2)
      assert.is_nil(problem2)
    end)

    local invalid = {
      { "a space before '='", "foo =1" },
      { "an uppercase key", "FOO=1" },
      { "a '.' in the key", "foo.bar=1" },
      { "a key starting with a digit", "1foo=1" },
      { "a key starting with '_'", "_foo=1" },
      { "an empty key", "=1" },
      { "'@' first", "@foo=1" },
      { "'@' last", "foo@=1" },
      { "two '@' together", "foo@@bar=1" },
      { "two '@'", "foo@bar@baz=1" },
      { "a system id starting with a digit", "foo@1bar=1" },
      { "a system id of 15 characters", "t@" .. ("s"):rep(15) .. "=1" },
      { "a tenant id of 242 characters", ("t"):rep(242) .. "@s=1" },
      { "a key of 257 characters", ("k"):rep(257) .. "=1" },
      { "no '='", "foo" },
      { "an empty value", "foo=" },
      { "'=' in the value", "foo=a=b" },
      { "a control character in the value", "foo=a\1b" },
      { "a tab inside the value", "foo=a\tb" },
      { "a non-ASCII byte in the value", "foo=caf\195\169" },
      { "a value of 257 characters", "k=" .. ("v"):rep(257) },
      { "one bad member among good ones", "foo=1,BAR=2,baz=3" },
      { "a repeated key with the same value", "foo=1,foo=1" },
      { "a repeated key with another value", "foo=1,foo=2" },
      { "33 members", members(33) },
    }
    for _, case in ipairs(invalid) do
      it("invalid (the whole header is dropped): " .. case[1], function()
        local s, problem = state(case[2])
        assert.is_nil(s)
        assert.is_string(problem)
      end)
    end

    it("invalid: a key repeated across two headers", function()
      local s, problem = state({ "foo=1", "foo=2" })
      assert.is_nil(s)
      assert.truthy(problem:find("duplicate", 1, true))
    end)

    it("invalid: 33 members over two headers", function()
      local s, problem = state({ members(16), members(33, 17) })
      assert.is_nil(s)
      assert.truthy(problem:find("32", 1, true))
    end)

    it("a dropped tracestate leaves the traceparent in place", function()
      local ctx, _, info = extract({ traceparent = tp(), tracestate = "FOO=1" })
      assert.are.equal(TID, info.trace_id)
      assert.is_false(info.restarted)
      assert.is_nil(ctx:value(trace.TRACESTATE))
    end)

    it("parse_tracestate gives the members in order", function()
      assert.are.same({ { key = "a", value = "1" }, { key = "b@c", value = "x y" } },
        trace.parse_tracestate(" a=1 ,, b@c=x y "))
      assert.are.same({}, trace.parse_tracestate(""))
      local m, why = trace.parse_tracestate("a=1,a=2")
      assert.is_nil(m)
      assert.is_string(why)
    end)

    it("with_tracestate puts the updated member first, drops the rightmost past 32", function()
      local ctx = extract({ traceparent = tp(), tracestate = "a=1,b=2,c=3" })
      local c2 = trace.with_tracestate(ctx, "b", "9")
      assert.are.equal("b=9,a=1,c=3", c2:value(trace.TRACESTATE))
      local c3 = trace.with_tracestate(c2, "new", "x")
      assert.are.equal("new=x,b=9,a=1,c=3", c3:value(trace.TRACESTATE))
      local c4 = trace.with_tracestate(c3, "a", nil)
      assert.are.equal("new=x,b=9,c=3", c4:value(trace.TRACESTATE))
      assert.are.same({ { key = "new", value = "x" }, { key = "b", value = "9" }, { key = "c", value = "3" } },
        trace.tracestate(c4))
      local full = extract({ traceparent = tp(), tracestate = members(32) })
      local c5 = trace.with_tracestate(full, "z", "1")
      local list = trace.tracestate(c5)
      assert.are.equal(32, #list)
      assert.are.equal("z", list[1].key)
      assert.are.equal("k31", list[32].key)
      assert.are.same({}, trace.tracestate(bg))
      raises("bad argument #2 to 'with_tracestate'", trace.with_tracestate, ctx, "BAD", "1")
      raises("bad argument #3 to 'with_tracestate'", trace.with_tracestate, ctx, "ok", "a,b")
      raises("bad argument #3 to 'with_tracestate'", trace.with_tracestate, ctx, "ok", "ends with space ")
      raises("bad argument #3 to 'with_tracestate'", trace.with_tracestate, ctx, "ok", "")
    end)
  end)

  describe("x-request-id", function()
    it("is carried from extract to inject", function()
      local ctx = extract({ ["X-Request-ID"] = "req-42" })
      assert.are.equal("req-42", ctx:value(trace.REQUEST_ID))
      assert.are.equal("req-42", trace.inject(ctx)["x-request-id"])
    end)

    it("is made when missing or invalid, unless request_id = false", function()
      local cases = {
        { {} , nil },
        { { ["x-request-id"] = "has space" }, "x-request-id" },
        { { ["x-request-id"] = "" }, "x-request-id" },
        { { ["x-request-id"] = ("r"):rep(201) }, "x-request-id" },
        { { ["x-request-id"] = { "a", "b" } }, "x-request-id" },
        { { ["x-request-id"] = "a", ["X-Request-Id"] = "a" }, "x-request-id" },
      }
      for i, case in ipairs(cases) do
        local ctx, _, info = extract(case[1])
        local rid = ctx:value(trace.REQUEST_ID)
        assert.is_truthy(rid and rid:match("^%x+$") and #rid == 32, "case " .. i)
        assert.are.equal(rid, info.request_id)
        if case[2] then assert.is_string(info.problems[case[2]], "case " .. i) end
        local ctx2 = extract(case[1], nil, { request_id = false })
        assert.is_nil(ctx2:value(trace.REQUEST_ID), "case " .. i)
      end
      assert.are.equal(("r"):rep(200), extract({ ["x-request-id"] = ("r"):rep(200) }):value(trace.REQUEST_ID))
    end)
  end)

  describe("grpc-timeout", function()
    local formats = {
      { 1e-9, "1n" },
      { 5e-10, "1n" },           -- a positive time is never written as zero
      { 1e-300, "1n" },
      { 0.05, "50000000n" },
      { 0.0999999, "99999900n" },
      { 0.1, "100000u" },       -- 100000000n would be 9 digits
      { 0.2, "200000u" },
      { 2.007, "2007000u" },    -- 2.007 * 1e6 is 2007000.0000000002: float noise, not time
      { 0.000123, "123000n" },  -- likewise 123000.00000000001
      { 0.123456789, "123457u" },
      { 1, "1000000u" },
      { 1.0000005, "1000001u" }, -- rounded up
      { 30, "30000000u" },
      { 99.999999, "99999999u" },
      { 100, "100000m" },
      { 99999.999, "99999999m" },
      { 100000, "100000S" },
      { 99999999, "99999999S" },
      { 1e8, "1666667M" },       -- rounded up from 1666666.67
      { 6e9, "1666667H" },
      { 1e20, "99999999H" },    -- the most the format can say
      { math.huge, "99999999H" },
      { 0, "0n" },              -- the deadline has passed
      { -5, "0n" },
    }
    for _, case in ipairs(formats) do
      it(("format_timeout(%s) = %s"):format(case[1], case[2]), function()
        assert.are.equal(case[2], trace.format_timeout(case[1]))
      end)
    end

    it("format_timeout: at most 8 digits, the finest unit that fits, never less than given", function()
      local units = { "n", "u", "m", "S", "M", "H" }
      local size = { n = 1e-9, u = 1e-6, m = 1e-3, S = 1, M = 60, H = 3600 }
      local finer = { u = "n", m = "u", S = "m", M = "S", H = "M" }
      local rng = 12345
      local function rand() rng = (rng * 1103515245 + 12345) % 2147483648; return rng / 2147483648 end
      for _ = 1, ROUNDS do
        local x = 10 ^ (rand() * 16 - 9) -- 1 ns to 10^7 s
        local s = trace.format_timeout(x)
        local digits, unit = s:match("^(%d+)([HMSmun])$")
        assert.is_truthy(digits, s)
        assert.is_true(#digits <= 8, s)
        local v = tonumber(digits) * size[unit]
        assert.is_true(v >= x * (1 - 1e-12), ("%s for %.17g is less than given"):format(s, x))
        assert.is_true(v - x <= size[unit] * (1 + 1e-9), ("%s for %.17g rounds up by more than a unit"):format(s, x))
        if finer[unit] then
          assert.is_true(x / size[finer[unit]] > 99999999 * (1 - 1e-12),
            ("%s for %.17g: a finer unit would fit"):format(s, x))
        end
        assert.are.equal(v, trace.parse_timeout(s))
      end
      assert.are.same(units, { "n", "u", "m", "S", "M", "H" })
    end)

    local parses = {
      { "1H", 3600 }, { "2M", 120 }, { "3S", 3 }, { "250m", 0.25 }, { "100u", 1e-4 }, { "5n", 5e-9 },
      { "00000001S", 1 }, { "99999999S", 99999999 }, { "0n", 0 },
    }
    for _, case in ipairs(parses) do
      it(("parse_timeout(%q) = %s"):format(case[1], case[2]), function()
        local v = trace.parse_timeout(case[1])
        assert.is_true(math.abs(v - case[2]) <= case[2] * 1e-12, tostring(v))
      end)
    end

    for _, s in ipairs({ "123456789m", "1.5S", "-1S", "+1S", "1s", "1h", "1", "S", "", " 5S", "5S ", "5 S", "0x10S", "5SS" }) do
      it(("parse_timeout(%q) is invalid"):format(s), function()
        local v, why = trace.parse_timeout(s)
        assert.is_nil(v)
        assert.is_string(why)
      end)
    end
  end)

  describe("extract: deadline propagation", function()
    it("turns grpc-timeout into a child with that timeout minus the reserve", function()
      local start = helpers.now()
      local ctx, cancel, info = extract({ ["grpc-timeout"] = "1S" }, nil, { reserve = 0.1 })
      helpers.remaining_near(ctx, 0.9, start)
      assert.are.equal(1, info.timeout)
      assert.is_nil(ctx:err())
      cancel()
      assert.are.equal(context.canceled, ctx:err())
    end)

    it("takes 5 ms off by default", function()
      assert.are.equal(0.005, trace.DEFAULT_RESERVE)
      local start = helpers.now()
      helpers.remaining_near(extract({ ["grpc-timeout"] = "1S" }), 0.995, start)
      helpers.remaining_near(extract({ ["grpc-timeout"] = "1S" }, nil, { reserve = 0 }), 1, start)
    end)

    it("reads x-request-timeout-ms, and takes the smaller of the two", function()
      local start = helpers.now()
      local ctx, _, info = extract({ ["X-Request-Timeout-Ms"] = "750" }, nil, { reserve = 0 })
      helpers.remaining_near(ctx, 0.75, start)
      assert.are.equal(0.75, info.timeout)
      local c2, _, i2 = extract({ ["grpc-timeout"] = "10S", ["x-request-timeout-ms"] = "500" }, nil, { reserve = 0 })
      assert.is_true(c2:remaining() <= 0.5)
      assert.are.equal(0.5, i2.timeout)
      local c3, _, i3 = extract({ ["grpc-timeout"] = "300m", ["x-request-timeout-ms"] = "5000" }, nil, { reserve = 0 })
      assert.is_true(c3:remaining() <= 0.3)
      assert.are.equal(0.3, i3.timeout)
    end)

    it("accepts spaces and tabs around the values", function()
      local start = helpers.now()
      local ctx = extract({ ["grpc-timeout"] = " \t2S\t" }, nil, { reserve = 0 })
      helpers.remaining_near(ctx, 2, start)
    end)

    it("ignores malformed and repeated timeout headers, keeping a valid one", function()
      local ctx, _, info = extract({ ["grpc-timeout"] = "1.5S", ["x-request-timeout-ms"] = "400" }, nil, { reserve = 0 })
      assert.is_true(ctx:remaining() <= 0.4)
      assert.is_string(info.problems["grpc-timeout"])
      local c2, _, i2 = extract({ ["grpc-timeout"] = { "1S", "1S" } })
      assert.is_nil(c2:deadline())
      assert.truthy(i2.problems["grpc-timeout"]:find("duplicate", 1, true))
      local c3, _, i3 = extract({ ["x-request-timeout-ms"] = "12.5" })
      assert.is_nil(c3:deadline())
      assert.is_string(i3.problems["x-request-timeout-ms"])
      local c4 = extract({ ["x-request-timeout-ms"] = "-5" })
      assert.is_nil(c4:deadline())
    end)

    it("gives an already expired context when the time left is no more than the reserve", function()
      for _, h in ipairs({ { ["grpc-timeout"] = "5m" }, { ["grpc-timeout"] = "0n" }, { ["x-request-timeout-ms"] = "0" } }) do
        local ctx = extract(h, nil, { reserve = 0.005 })
        assert.are.equal(context.deadline_exceeded, ctx:err())
      end
    end)

    it("clamps to max_timeout", function()
      local start = helpers.now()
      local ctx = extract({ ["grpc-timeout"] = "1H" }, nil, { max_timeout = 2, reserve = 0 })
      helpers.remaining_near(ctx, 2, start)
    end)

    it("never outlives the parent", function()
      local parent, pcancel = context.with_timeout(bg, 0.3)
      local ctx = extract({ ["grpc-timeout"] = "10S" }, parent)
      assert.is_true(ctx:remaining() <= 0.3)
      pcancel()
      assert.are.equal(context.canceled, ctx:err())
    end)

    it("without a timeout header gives a cancellable child of the parent, no deadline", function()
      local parent, pcancel = context.with_cancel(bg)
      local ctx, cancel, info = extract({}, parent)
      assert.is_nil(ctx:deadline())
      assert.is_nil(info.timeout)
      cancel()
      assert.are.equal(context.canceled, ctx:err())
      assert.is_nil(parent:err())
      pcancel()
    end)

    it("keeps the parent's values", function()
      local k = context.key("tenant")
      local parent = context.with_value(bg, k, "acme")
      local ctx = extract({ traceparent = tp() }, parent)
      assert.are.equal("acme", ctx:value(k))
    end)
  end)

  describe("inject", function()
    it("writes a child span of the current one: same trace, new span id each hop", function()
      local ctx = extract({ traceparent = tp(), tracestate = "foo=1", ["x-request-id"] = "r1" })
      local h1, s1 = trace.inject(ctx, {})
      local h2, s2 = trace.inject(ctx)
      local p1 = assert(trace.parse_traceparent(h1.traceparent))
      local p2 = assert(trace.parse_traceparent(h2.traceparent))
      assert.are.equal("00", p1.version)
      assert.are.equal(TID, p1.trace_id)
      assert.are.equal(TID, p2.trace_id)
      assert.are.equal(s1, p1.parent_id)
      assert.are.equal(s2, p2.parent_id)
      assert.are_not.equal(PID, s1)
      assert.are_not.equal(s1, s2)
      assert.are.equal(1, p1.flags)
      assert.are.equal("foo=1", h1.tracestate)
      assert.are.equal("r1", h1["x-request-id"])
      assert.are.equal(55, #h1.traceparent)
    end)

    it("keeps only the sampled flag, and an unsampled trace stays unsampled", function()
      local ctx = extract({ traceparent = tp(nil, nil, nil, "00") })
      assert.truthy(trace.inject(ctx).traceparent:match("%-00$"))
      local ctx2 = extract({ traceparent = tp(nil, nil, nil, "ff") })
      assert.truthy(trace.inject(ctx2).traceparent:match("%-01$"))
    end)

    it("writes version 00 even when a later version came in", function()
      local ctx = extract({ traceparent = tp("cc", nil, nil, "01", "-more") })
      local p = assert(trace.parse_traceparent(trace.inject(ctx).traceparent))
      assert.are.equal("00", p.version)
      assert.are.equal(TID, p.trace_id)
    end)

    it("without a trace in ctx starts one, with no tracestate", function()
      local h = trace.inject(bg)
      local p = assert(trace.parse_traceparent(h.traceparent))
      assert.is_nil(h.tracestate)
      assert.is_nil(h["x-request-id"])
      assert.are_not.equal(p.trace_id, trace.parse_traceparent(trace.inject(bg).traceparent).trace_id)
    end)

    it("writes the time left, rounded up, in both deadline headers", function()
      local ctx, cancel = context.with_timeout(bg, 2)
      local before = ctx:remaining()
      local h = trace.inject(ctx)
      local after = ctx:remaining()
      local g = assert(trace.parse_timeout(h["grpc-timeout"]))
      assert.truthy(h["grpc-timeout"]:match("^%d+u$"))
      assert.is_true(g >= after and g <= before + 1e-6, ("%s not in [%s, %s]"):format(g, after, before))
      local ms = tonumber(h["x-request-timeout-ms"])
      assert.are.equal(helpers.math_type(ms), "integer")
      assert.is_true(ms / 1000 >= after and ms / 1000 <= before + 0.001)
      cancel()
    end)

    it("writes zero for a passed deadline", function()
      local ctx = context.with_timeout(bg, 0)
      local h = trace.inject(ctx)
      assert.are.equal("0n", h["grpc-timeout"])
      assert.are.equal("0", h["x-request-timeout-ms"])
    end)

    it("replaces any spelling of its headers, and drops stale deadline headers", function()
      local h = { TraceParent = "junk", TRACESTATE = "junk", ["GRPC-Timeout"] = "5S",
                  ["X-Request-Timeout-Ms"] = "5000", ["X-Request-Id"] = "old", other = "kept" }
      local out = trace.inject(bg, h)
      assert.are.equal(h, out)
      assert.is_nil(h.TraceParent)
      assert.is_nil(h.TRACESTATE)
      assert.is_nil(h["GRPC-Timeout"])
      assert.is_nil(h["X-Request-Timeout-Ms"])
      assert.is_nil(h["X-Request-Id"])
      assert.is_nil(h["grpc-timeout"])
      assert.are.equal("kept", h.other)
      assert.is_truthy(trace.parse_traceparent(h.traceparent))
    end)

    it("round-trips: the receiver continues the trace and ends before the sender", function()
      local a = trace.start(bg, { request_id = "req-7" })
      local actx, acancel = context.with_timeout(a, 1)
      local t0 = context.now()
      local headers, span = trace.inject(actx)
      local bctx, bcancel, info = trace.extract(headers)
      -- the header carries a relative budget: the time it spent in transit
      -- (here between inject and extract; long under valgrind) comes back
      local transit = context.now() - t0
      assert.are.equal(actx:value(trace.TRACE_ID), info.trace_id)
      assert.are.equal(span, info.span_id)
      assert.are.equal("req-7", info.request_id)
      assert.is_true(bctx:deadline() <= actx:deadline() - 0.004 + transit,
        ("receiver deadline %.6f not before sender's %.6f (transit %.6f)")
          :format(bctx:deadline(), actx:deadline(), transit))
      bcancel()
      acancel()
    end)
  end)

  describe("keys and info", function()
    it("the keys reject malformed values at with_value", function()
      local cases = {
        { trace.TRACE_ID, "xyz", "trace_id" }, { trace.TRACE_ID, ZERO32, "trace_id" },
        { trace.TRACE_ID, TID:upper(), "trace_id" }, { trace.SPAN_ID, ZERO16, "span_id" },
        { trace.SPAN_ID, 42, "span_id" }, { trace.PARENT_SPAN_ID, "abc", "parent_span_id" },
        { trace.TRACE_FLAGS, 256, "trace_flags" }, { trace.TRACE_FLAGS, 1.5, "trace_flags" },
        { trace.TRACESTATE, "FOO=1", "tracestate" }, { trace.TRACESTATE, 1, "tracestate" },
        { trace.REQUEST_ID, "a b", "request_id" }, { trace.REQUEST_ID, "", "request_id" },
      }
      for _, c in ipairs(cases) do
        raises("bad argument #3 to 'with_value' (invalid value for key '" .. c[3] .. "'",
          context.with_value, bg, c[1], c[2])
      end
      assert.are.equal(TID, context.with_value(bg, trace.TRACE_ID, TID):value(trace.TRACE_ID))
      assert.are.equal("trace_id", tostring(trace.TRACE_ID))
    end)

    it("info reads them all, and is nil for a context without trace or request id", function()
      assert.is_nil(trace.info(bg))
      local ctx = extract({ traceparent = tp(), tracestate = "a=1", ["x-request-id"] = "r" })
      assert.are.same({ trace_id = TID, span_id = PID, flags = 1, sampled = true,
                        tracestate = "a=1", request_id = "r" }, trace.info(ctx))
    end)

    it("start roots a new trace; new_span makes a child span", function()
      local root = trace.start(bg, { sampled = false, request_id = false })
      local i = trace.info(root)
      assert.are.equal(0, i.flags)
      assert.is_false(i.sampled)
      assert.is_nil(i.request_id)
      local child, sid = trace.new_span(root)
      local ci = trace.info(child)
      assert.are.equal(i.trace_id, ci.trace_id)
      assert.are.equal(sid, ci.span_id)
      assert.are.equal(i.span_id, ci.parent_span_id)
      local orphan = trace.new_span(bg)
      assert.is_truthy(trace.info(orphan).trace_id)
      assert.is_nil(trace.info(orphan).parent_span_id)
      local r = trace.start(bg)
      assert.are.equal(32, #trace.info(r).request_id)
      raises("bad argument #2 to 'start'", trace.start, bg, { request_id = "a b" })
    end)

    it("ids are well formed and do not repeat", function()
      local seen = {}
      for _ = 1, ROUNDS do
        local t, s = trace.new_trace_id(), trace.new_span_id()
        assert.truthy(#t == 32 and not t:find("[^0-9a-f]") and t:find("[^0]"))
        assert.truthy(#s == 16 and not s:find("[^0-9a-f]") and s:find("[^0]"))
        assert.is_nil(seen[t])
        assert.is_nil(seen[s])
        seen[t], seen[s] = true, true
      end
    end)

    it("ids work without /dev/urandom (seeded from math.random)", function()
      local open = io.open
      io.open = function(name, ...)
        if name == "/dev/urandom" then return nil, "no such file" end
        return open(name, ...)
      end
      local ok, fresh = pcall(function()
        local m = dofile(package.searchpath("lcontext.trace", package.path))
        return { m.new_trace_id(), m.new_trace_id(), m.new_span_id() }
      end)
      io.open = open
      assert.is_true(ok, tostring(fresh))
      assert.truthy(#fresh[1] == 32 and not fresh[1]:find("[^0-9a-f]"))
      assert.are_not.equal(fresh[1], fresh[2])
      assert.are.equal(16, #fresh[3])
    end)
  end)

  describe("bad arguments", function()
    it("are reported at the caller, naming the function and argument", function()
      raises("bad argument #1 to 'extract' (table expected, got nil)", trace.extract)
      raises("bad argument #2 to 'extract' (context expected, got string)", trace.extract, {}, "x")
      raises("bad argument #3 to 'extract' (table expected, got number)", trace.extract, {}, bg, 5)
      raises("bad argument #3 to 'extract' (reserve", trace.extract, {}, bg, { reserve = -1 })
      raises("bad argument #3 to 'extract' (reserve", trace.extract, {}, bg, { reserve = 0 / 0 })
      raises("bad argument #3 to 'extract' (max_timeout", trace.extract, {}, bg, { max_timeout = 0 })
      raises("bad argument #1 to 'extract' (header 'traceparent' must be a string or a list of strings, got number)",
        trace.extract, { traceparent = 5 })
      raises("item 2 is a boolean", trace.extract, { tracestate = { "a=1", true } })
      raises("bad argument #1 to 'inject' (context expected, got nil)", trace.inject)
      raises("bad argument #2 to 'inject' (table expected, got string)", trace.inject, bg, "x")
      raises("bad argument #1 to 'info'", trace.info, {})
      raises("bad argument #1 to 'format_timeout'", trace.format_timeout, "1")
      raises("bad argument #1 to 'format_timeout'", trace.format_timeout, 0 / 0)
      local ok, err = pcall(trace.extract, nil)
      assert.is_false(ok)
      assert.truthy(err:find("trace_spec.lua", 1, true) or err:find("^bad argument"), err)
    end)

    it("headers this module does not read may hold anything", function()
      local ctx = extract({ traceparent = tp(), ["content-length"] = 12, other = { 1, 2 }, "not a header" })
      assert.are.equal(TID, ctx:value(trace.TRACE_ID))
    end)
  end)
end)
