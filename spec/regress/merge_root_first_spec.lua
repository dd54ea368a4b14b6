-- merge_root_first_spec.lua — on Lua 5.1 and LuaJIT a context keeps its
-- cause and keep set in its own user-value table; the cancel and timer
-- children of a root are made without one, and get one when a slot is
-- first set. That rule looked at the parent only: a merge whose first input
-- is a root has that root as its parent, so the first slot set on it
-- replaced the table that holds its inputs, and the next walk of its chain
-- (cause, origin, value) read nil as a context: a segmentation fault
-- (found by tools/fuzz_ngx.lua on LuaJIT, seed 547). A value context below
-- a root lost its key and value the same way.
local context = require "lcontext"
local core = require "lcontext.core"
local bg = context.background()

describe("a merge whose first input is a root", function()
  it("keeps its inputs when a keep set or a cause is recorded on it", function()
    local a, cancel_a = context.with_cancel(bg)
    local m = context.merge(bg, a)
    local stop = context.after_func(m, function() end) -- a keep set on m
    cancel_a("x")
    assert.are.equal("x", m:cause())
    assert.is_true(rawequal(context.origin(m), a))
    stop()
    local v = context.with_value(bg, "k", "v")
    local m2, cancel_m2 = context.merge(context.todo(), v)
    cancel_m2("own") -- a cause recorded on the merge itself
    assert.are.equal("own", m2:cause())
    assert.are.equal("v", m2:value("k"))
  end)

  it("a value context below a root keeps its key and value once watched", function()
    local v = context.with_value(bg, "k", "v")
    local h = core._watch(v, function() end) -- a keep set on v
    assert.are.equal("v", v:value("k"))
    if h then core._unwatch(h) end
  end)
end)
