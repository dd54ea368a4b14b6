local context = require "lcontext"
local h = require "spec.helpers"
local B = require "spec.backend"

-- The errors (README, "Asking"): context.canceled, context.deadline_exceeded,
-- context.is_canceled, context.is_deadline_exceeded.

local bg = context.background()
local C, DE = context.canceled, context.deadline_exceeded

describe("error sentinels", function()
  it("exist and are distinct", function()
    assert.is_not_nil(C)
    assert.is_not_nil(DE)
    assert.is_false(rawequal(C, DE))
    assert.is_false(C == DE)
    assert.is_true(C == context.canceled)
    assert.is_true(DE == context.deadline_exceeded)
  end)

  it("are not plain strings (unique objects)", function()
    assert.are_not.equal("string", type(C))
    assert.are_not.equal("string", type(DE))
    assert.is_false(C == "context canceled")
    assert.is_false(DE == "context deadline exceeded")
  end)

  it("print as Go's messages", function()
    assert.are.equal("context canceled", tostring(C))
    assert.are.equal("context deadline exceeded", tostring(DE))
  end)

  it("concatenate as their messages, on either side", function()
    local a, cancel = context.with_cancel(bg)
    cancel()
    assert.are.equal("failed: context canceled", "failed: " .. a:err())
    assert.are.equal("context deadline exceeded (after 2 s)", DE .. " (after " .. 2 .. " s)")
    assert.are.equal("1context canceled", 1 .. C)
    assert.are.equal("context canceledcontext deadline exceeded", C .. DE)
    assert.are.equal("circuit breaker is open: context canceled", context.breaker_open .. ": " .. C)
  end)

  it("deadline_exceeded.timeout is true, canceled's is not", function()
    assert.is_true(DE.timeout == true)
    assert.is_falsy(C.timeout)
  end)

  it("are the very objects that err() returns", function()
    local a, cancel = context.with_cancel(bg)
    cancel()
    h.is(a:err(), C, "err() after cancel")
    h.is(context.with_timeout(bg, 0):err(), DE, "err() after a timeout")
    assert.is_true(a:err() == C)
  end)

  for _, s in ipairs { { "canceled", C }, { "deadline_exceeded", DE } } do
    describe(s[1], function()
      it("survives error() and pcall as the same object", function()
        local ok, e = pcall(error, s[2])
        assert.is_false(ok)
        h.is(e, s[2], "pcall(error, sentinel)")
        ok, e = pcall(function() error(s[2], 2) end)
        assert.is_false(ok)
        h.is(e, s[2], "error(sentinel, 2)")
        -- through a <close> variable: spec/close_54_spec.lua (Lua 5.4 only)
      end)

      it("survives xpcall and a coroutine", function()
        local ok, e = xpcall(function() error(s[2]) end, function(m) return m end)
        assert.is_false(ok)
        h.is(e, s[2], "xpcall")
        local co = coroutine.create(function() error(s[2]) end)
        ok, e = coroutine.resume(co)
        assert.is_false(ok)
        h.is(e, s[2], "coroutine.resume")
      end)

      B.it_libev("survives coroutine.wrap", "ngx_lua's coroutine.wrap hands an error raised "
        .. "in the wrapped coroutine to its scheduler, which aborts the request's light "
        .. "thread: pcall never sees it (ngx_lua behaviour, for any error value)", function()
        local ok, e = pcall(coroutine.wrap(function() error(s[2]) end))
        assert.is_false(ok)
        h.is(e, s[2], "coroutine.wrap")
      end)
    end)
  end
end)

describe("context.is_canceled / context.is_deadline_exceeded", function()
  it("recognise their sentinel", function()
    assert.are.equal(true, context.is_canceled(C))
    assert.are.equal(true, context.is_deadline_exceeded(DE))
  end)

  it("reject the other sentinel", function()
    assert.are.equal(false, context.is_canceled(DE))
    assert.are.equal(false, context.is_deadline_exceeded(C))
  end)

  local others = {
    { "nil", nil }, { "false", false }, { "true", true }, { "0", 0 },
    { "the message string (canceled)", "context canceled" },
    { "the message string (deadline)", "context deadline exceeded" },
    { "another string", "boom" }, { "a table", {} },
    { "a table with timeout = true", { timeout = true } },
    { "a context", bg }, { "a function", print },
  }
  for _, o in ipairs(others) do
    it("return false for " .. o[1], function()
      assert.are.equal(false, context.is_canceled(o[2]))
      assert.are.equal(false, context.is_deadline_exceeded(o[2]))
    end)
  end

  it("recognise what err() and pcall(ctx.check) give back", function()
    local a, cancel = context.with_cancel(bg)
    cancel()
    assert.are.equal(true, context.is_canceled(a:err()))
    assert.are.equal(false, context.is_deadline_exceeded(a:err()))
    local _, e = pcall(a.check, a)
    assert.are.equal(true, context.is_canceled(e))
    local t = context.with_timeout(bg, -1)
    _, e = pcall(t.check, t)
    assert.are.equal(true, context.is_deadline_exceeded(e))
    assert.are.equal(false, context.is_canceled(e))
  end)
end)
