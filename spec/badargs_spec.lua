local context = require "lcontext"
local h = require "spec.helpers"

-- Bad arguments raise a Lua error that names the function and argument, as
-- luaL_argerror does (README, "Asking"). Expected form:
--   bad argument #N to 'NAME' (...)
-- (NAME may carry a prefix such as "lcontext."). Function-form calls must
-- give the exact argument number; method-form calls may count `self` or not
-- (luaL_argerror does not count it), so they accept N-1 or N.
-- Every call is a statement inside a closure, never a tail call: a tail call
-- hides the callee's name from luaL_argerror.

local bg = context.background()
local NAN, INF = h.NAN, h.INF

local _, a_cancel = context.with_cancel(bg)

local not_contexts = {
  { "nil", nil },
  { "an empty table", {} },
  { "a table with context methods", { err = function() end, is_done = function() return false end } },
  { "a number", 42 },
  { "a string", "context.Background" },
  { "true", true },
  { "a function", print },
  { "the module table", context },
  { "a cancel object", a_cancel },
  { "a key object", context.key("k") },
  { "the canceled sentinel", context.canceled },
  { "a coroutine", coroutine.create(function() end) },
  { "a foreign userdata (io.stdout)", io.stdout },
}

local bad_durations = {
  { "nil", nil },
  { "NaN", NAN },
  { "-NaN", -NAN },
  { "math.huge", INF },
  { "-math.huge", -INF },
  { "a non-numeric string", "soon" },
  { "an empty string", "" },
  { "a table", {} },
  { "true", true },
  { "a context", bg },
}

describe("bad arguments", function()
  describe("a parent that is not a context", function()
    for _, b in ipairs(not_contexts) do
      local v = b[2]
      it("(" .. b[1] .. ") is rejected by every function", function()
        h.argerr(1, "with_cancel", function() context.with_cancel(v) end)
        h.argerr(1, "with_cancel_cause", function() context.with_cancel_cause(v) end)
        h.argerr(1, "with_timeout", function() context.with_timeout(v, 1) end)
        h.argerr(1, "with_deadline", function() context.with_deadline(v, os.time() + 1) end)
        h.argerr(1, "with_value", function() context.with_value(v, "k", 1) end)
        h.argerr(1, "without_cancel", function() context.without_cancel(v) end)
        h.argerr(1, "merge", function() context.merge(v, bg) end)
        h.argerr(2, "merge", function() context.merge(bg, v) end)
        h.argerr(3, "merge", function() context.merge(bg, context.todo(), v) end)
        h.argerr(1, "cause", function() context.cause(v) end)
        h.argerr(1, "origin", function() context.origin(v) end)
      end)

      it("(" .. b[1] .. ") is rejected as self by every method", function()
        -- field calls (not `:`): the bad value is argument #1
        h.argerr(1, "with_cancel", function() bg.with_cancel(v) end)
        h.argerr(1, "with_timeout", function() bg.with_timeout(v, 1) end)
        h.argerr(1, "merge", function() bg.merge(v, bg) end)
        h.argerr(1, "err", function() bg.err(v) end)
        h.argerr(1, "is_done", function() bg.is_done(v) end)
        h.argerr(1, "deadline", function() bg.deadline(v) end)
        h.argerr(1, "remaining", function() bg.remaining(v) end)
        h.argerr(1, "value", function() bg.value(v, "k") end)
        h.argerr(1, "cause", function() bg.cause(v) end)
        h.argerr(1, "check", function() bg.check(v) end)
      end)
    end

    it("is rejected in method form when passed to merge", function()
      h.argerr({ 1, 2 }, "merge", function() bg:merge({}) end)
      h.argerr({ 1, 2 }, "merge", function() bg:merge(nil) end)
      h.argerr({ 2, 3 }, "merge", function() bg:merge(bg, 5) end)
    end)
  end)

  describe("a bad duration", function()
    for _, b in ipairs(bad_durations) do
      local v = b[2]
      it("(" .. b[1] .. ") is rejected by with_timeout", function()
        h.argerr(2, "with_timeout", function() context.with_timeout(bg, v) end)
        h.argerr(2, "with_timeout", function() context.with_timeout(bg, v, "cause") end)
        h.argerr({ 1, 2 }, "with_timeout", function() bg:with_timeout(v) end)
      end)
    end
  end)

  describe("a bad deadline", function()
    for _, b in ipairs(bad_durations) do
      local v = b[2]
      it("(" .. b[1] .. ") is rejected by with_deadline", function()
        h.argerr(2, "with_deadline", function() context.with_deadline(bg, v) end)
        h.argerr(2, "with_deadline", function() context.with_deadline(bg, v, "cause") end)
        h.argerr({ 1, 2 }, "with_deadline", function() bg:with_deadline(v) end)
      end)
    end
  end)

  describe("a bad key", function()
    it("(nil) is rejected by with_value", function()
      h.argerr(2, "with_value", function() context.with_value(bg, nil, 1) end)
      h.argerr({ 1, 2 }, "with_value", function() bg:with_value(nil, 1) end)
    end)

    it("(NaN) is rejected by with_value", function()
      h.argerr(2, "with_value", function() context.with_value(bg, NAN, 1) end)
      h.argerr(2, "with_value", function() context.with_value(bg, -NAN, 1) end)
      h.argerr({ 1, 2 }, "with_value", function() bg:with_value(NAN, 1) end)
    end)
  end)

  describe("a bad key name", function()
    for _, b in ipairs { { "a table", {} }, { "a function", print } } do
      it("(" .. b[1] .. ") is rejected by context.key", function()
        local v = b[2]
        h.argerr(1, "key", function() context.key(v) end)
      end)
    end
  end)

  it("leave the parent usable", function()
    local p, cancel = context.with_cancel(bg)
    for _ = 1, 100 do
      pcall(function() context.with_timeout(p, NAN) end)
      pcall(function() context.with_value(p, nil, 1) end)
      pcall(function() context.merge(p, {}) end)
    end
    assert.is_nil(p:err())
    local c = context.with_cancel(p)
    cancel()
    h.is(c:err(), context.canceled, "child err()")
  end)

  describe("extreme but valid numbers", function()
    it("a huge timeout is accepted or rejected by name, never wraps around", function()
      for _, s in ipairs { 1e300, 2^63, 2^62, 1e12, h.maxinteger } do
        local ok, ctx = pcall(function() local c = context.with_timeout(bg, s); return c end)
        if ok then
          assert.is_nil(ctx:err(), "with_timeout(bg, " .. s .. ") is done at once")
          assert.is_false(ctx:is_done())
          local r = ctx:remaining()
          assert.is_true(r == nil or r > 1e6, "remaining() = " .. tostring(r))
        else
          assert.is_true(h.names_arg(ctx, 2, "with_timeout"), tostring(ctx))
        end
      end
    end)

    it("a far deadline is accepted or rejected by name, never wraps around", function()
      for _, d in ipairs { 1e300, 2^63, 1e15, h.maxinteger } do
        local ok, ctx = pcall(function() local c = context.with_deadline(bg, d); return c end)
        if ok then
          assert.is_nil(ctx:err(), "with_deadline(bg, " .. d .. ") is done at once")
        else
          assert.is_true(h.names_arg(ctx, 2, "with_deadline"), tostring(ctx))
        end
      end
    end)

    it("a hugely negative timeout or deadline is done at once (or rejected by name)", function()
      for _, s in ipairs { -1e300, -2^63, h.mininteger, -1e12 } do
        local ok, ctx = pcall(function() local c = context.with_timeout(bg, s); return c end)
        if ok then
          h.is(ctx:err(), context.deadline_exceeded, "with_timeout(bg, " .. s .. ")")
        else
          assert.is_true(h.names_arg(ctx, 2, "with_timeout"), tostring(ctx))
        end
        ok, ctx = pcall(function() local c = context.with_deadline(bg, s); return c end)
        if ok then
          h.is(ctx:err(), context.deadline_exceeded, "with_deadline(bg, " .. s .. ")")
        else
          assert.is_true(h.names_arg(ctx, 2, "with_deadline"), tostring(ctx))
        end
      end
    end)

    it("integer durations work like floats", function()
      local a = context.with_timeout(bg, 10)
      local b = context.with_timeout(bg, 10.0)
      h.near(a:deadline(), b:deadline(), 0.25, "deadline()")
      h.is(context.with_timeout(bg, 0):err(), context.deadline_exceeded, "integer 0")
      h.is(context.with_timeout(bg, -1):err(), context.deadline_exceeded, "integer -1")
    end)
  end)

  it("never crash, whatever the arguments (fuzz)", function()
    local junk = {
      NAN, INF, -INF, 0, -1, 1, 0.5, 1e300, -1e300, h.mininteger, h.maxinteger,
      "", "x", "10", string.rep("y", 100), {}, true, false, print, a_cancel,
      context.key("j"), context.canceled, context.deadline_exceeded, bg, io.stdout,
      coroutine.create(function() end), setmetatable({}, { __index = function() error("boom") end }),
    }
    -- Each call site is compiled with the literal name, so that luaL_argerror
    -- can name the function (a dynamic `context[name]` would show as '?').
    local fns, methods = {}, {}
    for _, name in ipairs {
      "with_cancel", "with_cancel_cause", "with_timeout", "with_deadline", "with_value",
      "without_cancel", "merge", "key", "cause", "origin", "is_canceled", "is_deadline_exceeded",
    } do
      fns[name] = assert(h.load("local context, a1, a2, a3 = ...\n context." .. name .. "(a1, a2, a3)"))
    end
    for _, name in ipairs { "err", "is_done", "deadline", "remaining", "value", "cause", "check" } do
      methods[name] = assert(h.load("local ctx, a1, a2 = ...\n ctx:" .. name .. "(a1, a2)"))
    end
    local rng = 12345
    local function pick()
      rng = (rng * 1103515245 + 12345) % 2147483648
      local i = math.floor(rng / 256) % (#junk + 1) -- (rng >> 8): 5.1 has no >>
      if i == 0 then return nil end
      return junk[i]
    end
    local calls, errors = 0, 0
    for round = 1, 300 do
      local a1, a2, a3 = pick(), pick(), pick()
      for name, f in pairs(fns) do
        local ok, e = pcall(f, context, a1, a2, a3)
        calls = calls + 1
        if not ok then
          errors = errors + 1
          assert.is_true(tostring(e):find("'[^']*" .. name .. "'") ~= nil,
            ("context.%s(%s, %s, %s) raised an error not naming it: %s"):format(
              name, tostring(a1), tostring(a2), tostring(a3), tostring(e)))
        end
      end
      local ctxs = { bg, (context.with_cancel(bg)), (context.with_timeout(bg, round % 2 == 0 and 0 or 10)) }
      local ctx = ctxs[round % 3 + 1]
      for name, f in pairs(methods) do
        local ok, e = pcall(f, ctx, a1, a2)
        calls = calls + 1
        if not ok and name ~= "check" then
          errors = errors + 1
          assert.is_true(tostring(e):find("'[^']*" .. name .. "'") ~= nil,
            ("ctx:%s(%s, %s) raised an error not naming it: %s"):format(
              name, tostring(a1), tostring(a2), tostring(e)))
        end
      end
    end
    assert.is_true(calls > 0 and errors > 0)
    collectgarbage()
  end)
end)
