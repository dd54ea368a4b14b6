-- external_spec.lua — the core's hooks for runtimes that suspend their own
-- way (the OpenResty backend): core._watch / _unwatch / _advance /
-- _next_wakeup, used without libev's loop.
local context = require "lcontext"
local core = require "lcontext.core"
local bg = context.background()

local function busy(secs)
  local t = context.now()
  while context.now() - t < secs do end
end

describe("external watches", function()
  it("are told after a cancel completes, with the handle, once", function()
    local ctx, cancel = bg:with_cancel()
    local seen, h = {}, nil
    h = core._watch(ctx:with_value("k", 1), function(handle)
      seen[#seen + 1] = handle
      assert.is_truthy(ctx:err()) -- the cancel is complete when told
    end)
    assert.is_truthy(h)
    cancel()
    assert.are.same({ h }, seen)
    cancel()
    assert.are.equal(1, #seen)
    assert.is_false(core._unwatch(h))
  end)

  it("are not made for a context that is done already", function()
    local ctx, cancel = bg:with_cancel()
    cancel()
    assert.is_nil(core._watch(ctx, function() end))
  end)

  it("put deadlines in the wheel; _advance fires them, never early", function()
    local start = context.now()
    local ctx = context.with_timeout(bg, 0.02)
    local told = 0
    local h = core._watch(ctx, function() told = told + 1 end)
    -- never later than the deadline; it may be earlier (a wake-up the wheel
    -- needs to move timers, or at once when its clock lags behind)
    local wake = core._next_wakeup()
    assert.is_true(wake >= 0 and wake <= 0.021)
    core._advance()
    -- not yet (unless the machine paused past the deadline meanwhile)
    if context.now() - start < 0.018 then assert.are.equal(0, told) end
    busy(0.025)
    core._advance()
    assert.are.equal(1, told)
    assert.are.equal(context.deadline_exceeded, ctx:err())
    assert.is_nil(core._next_wakeup())
    assert.is_false(core._unwatch(h))
  end)

  it("can be unwatched, which takes the deadline out of the wheel", function()
    local ctx, cancel = context.with_timeout(bg, 30)
    local h = core._watch(ctx, function() error("must not be called") end)
    assert.is_truthy(core._next_wakeup())
    assert.is_true(core._unwatch(h))
    assert.is_nil(core._next_wakeup())
    cancel()
    assert.has_error(function() core._unwatch({}) end)
  end)

  it("report an error in the function and go on", function()
    local ctx, cancel = bg:with_cancel()
    local other = false
    core._watch(ctx, function() error("boom") end)
    core._watch(ctx, function() other = true end)
    cancel() -- the error goes to stderr; the second watch still runs
    assert.is_true(other)
  end)

  it("weak ones live only while something could cancel their context", function()
    if not require("spec.helpers").EPHEMERONS then
      pending("needs ephemeron tables (Lua 5.2+): on 5.1 and LuaJIT a weak watch "
        .. "lives until it is called or unwatched")
      return
    end
    local function round()
      for _ = 1, 5000 do
        local c = bg:with_cancel() -- its cancel is dropped at once
        core._watch(c, function() end, "weak")
      end
      collectgarbage(); collectgarbage()
      return collectgarbage("count")
    end
    local first = round()
    local third = (round() and round())
    assert.is_true(third - first < 300, ("retained %.0f KB"):format(third - first))
    -- and a weak one still fires when an ancestor's cancel is kept
    local root, cancel = bg:with_cancel()
    local told = 0
    for _ = 1, 50 do core._watch(root:with_cancel():with_value("k", 1), function() told = told + 1 end, "weak") end
    collectgarbage(); collectgarbage()
    cancel()
    assert.are.equal(50, told)
  end)

  it("are told when err() notices a passed deadline", function()
    local ctx = context.with_timeout(bg, 0.05)
    local told = 0
    if not core._watch(ctx, function() told = told + 1 end) then
      return -- a pause of the machine passed the deadline before the watch
    end
    busy(0.06)
    assert.are.equal(0, told) -- nobody has looked yet
    assert.are.equal(context.deadline_exceeded, ctx:err())
    assert.are.equal(1, told)
  end)
end)
