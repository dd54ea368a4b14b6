-- Regression: on Lua 5.1 and LuaJIT a cause that refers to
-- its own context kept the context alive for ever: causes were kept in a
-- weak-keyed side table, and those runtimes' weak tables are not
-- ephemerons (a value that refers to its key keeps the key). 1000 of 1000
-- contexts cancelled with cancel({ ctx = c }) survived a full collection.
-- (Lua 5.3 and 5.4 always passed; the test runs on every runtime.)
local context = require "lcontext"
local h = require "spec.helpers"
local bg = context.background()

describe("regress: a cause that refers to its own context", function()
  it("does not keep the context alive", function()
    local seen = h.weak()
    for i = 1, 1000 do
      local c, cancel = context.with_cancel(bg)
      cancel({ ctx = c })
      assert(c:cause().ctx == c) -- the cause is kept while c lives
      seen[i] = c
    end
    h.full_gc()
    assert.are.equal(0, h.count(seen))
  end)

  it("nor does one that refers to it through a closure, or a child", function()
    local seen = h.weak()
    for i = 1, 500 do
      local c, cancel = context.with_cancel_cause(bg)
      local child = c:with_cancel()
      cancel(function() return c, child end)
      seen[i] = c
      seen[500 + i] = child
    end
    h.full_gc()
    assert.are.equal(0, h.count(seen))
  end)
end)
