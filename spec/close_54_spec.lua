-- Lua 5.4 only: to-be-closed variables (`local x <close> = ...`) exist from
-- Lua 5.4 on; the syntax does not parse on 5.3, 5.1 or LuaJIT, where a
-- cancel is called explicitly instead. These tests were moved here from the
-- spec files that run on every runtime (errors, merge, patterns_adaptive,
-- patterns_scope, signal); cancel as <close> for every kind of context is
-- in derive_54_spec.lua.
local context = require "lcontext"
local h = require "spec.helpers"
local P = require "spec.patterns_helpers"

local bg = context.background()
local C, DE = context.canceled, context.deadline_exceeded

describe("error sentinels (<close>)", function()
  for _, s in ipairs { { "canceled", C }, { "deadline_exceeded", DE } } do
    it(s[1] .. " survives a <close> variable's __close as the same object", function()
      local ok, e = pcall(function()
        local x <close> = setmetatable({}, { __close = function() end })
        error(s[2])
      end)
      assert.is_false(ok)
      h.is(e, s[2], "through a <close> variable")
    end)
  end
end)

describe("context.merge (<close>)", function()
  it("supports <close> on its cancel", function()
    local a = context.with_cancel(bg)
    local saved
    do
      local m, cancel <close> = context.merge(a, bg)
      saved = m
    end
    h.is(saved:err(), context.canceled)
    assert.is_nil(a:err())
  end)
end)

describe("context.adaptive_timeout (<close>)", function()
  before_each(P.setup)
  after_each(P.teardown)

  it("records on <close> as well", function()
    local clock, set = P.fake_clock(0)
    local at = context.adaptive_timeout { base = 1, max = 10, clock = clock, min_samples = 1, multiplier = 10 }
    do
      local _, cancel <close> = at:with_timeout(bg)
      set(0.25)
    end
    h.near(at:timeout(), 2.5, 1e-12, "learned from the closed one")
  end)
end)

describe("context.scope (<close>)", function()
  before_each(P.setup)
  after_each(P.teardown)

  it("a scope in a <close> variable is closed at the end of the block", function()
    local kept
    do
      local s2 <close> = context.scope(bg)
      kept = s2:start("x")
      assert.is_nil(kept:err())
    end
    h.is(kept:err(), C, "<close> closed the scope")
  end)
end)

describe("context.signal (<close>)", function()
  it("returns a cancel function usable with <close>", function()
    local ctx
    do
      local c, cancel <close> = context.signal(bg, "USR1")
      ctx = c
    end
    h.is(ctx:err(), C, "err() after the block")
    context.run()
  end)
end)

describe("context.group (<close>)", function()
  it("cancels the members and waits for them when the block ends", function()
    local ended, gctx
    do
      local g <close>, c = context.group(bg, { policy = "supervise" })
      gctx = c
      g:go(function(ctx)
        ctx:done()
        context.sleep(bg, 0.002) -- still waited for
        ended = ctx:cause()
      end)
    end
    h.is(ended, C, "the member ended before the block did")
    h.is(gctx:err(), C, "gctx after the block")
  end)

  it("in a task, a raise that leaves the block is the cause; the wait yields in __close", function()
    local obj = { "left by error" }
    local t = context.go(function()
      local ended
      local ok, err = pcall(function()
        local g <close> = context.group(bg)
        g:go(function(ctx)
          ctx:done()
          context.sleep(bg, 0.002)
          ended = ctx:cause()
        end)
        context.sleep(bg, 0.001)
        error(obj)
      end)
      return ok, err, ended
    end)
    local ok, err, ended = t:wait()
    assert.is_false(ok)
    h.is(err, obj, "the error")
    h.is(ended, obj, "the member's cause")
  end)
end)
