local B = require "spec.backend"
local context = require "lcontext"
local h = require "spec.helpers"

-- ctx:done(), the parts that need no task: from the main thread it runs the
-- loop until ctx is done; from a coroutine that the scheduler does not own
-- it raises an error saying so (README, "Scheduler"; tasks are
-- spec/sched_spec.lua's).
-- Every context waited on here ends by itself within 50 ms.
--
-- Backend-neutral (spec/backend.lua): in nginx the "main thread" is the
-- request's light thread, whose waits suspend it (the same results); a
-- foreign coroutine is libev's notion only (see below).

local bg = context.background()
local DE = context.deadline_exceeded

describe("ctx:done() from the main thread", function()
  it("returns err() at once for a context that is already done", function()
    local ctx, cancel = context.with_cancel_cause(bg)
    cancel("why")
    local start = h.now()
    h.is(ctx:done(), context.canceled, "done()")
    h.is(context.with_timeout(bg, 0):done(), DE, "done() of an expired context")
    assert.is_true(h.now() - start < 1)
  end)

  it("runs the loop until a timeout fires, and returns deadline_exceeded", function()
    local start = h.now()
    local ctx = context.with_timeout(bg, 0.05)
    h.is(ctx:done(), DE, "done()")
    local elapsed = h.now() - start
    assert.is_true(elapsed >= 0.05 - 1e-3, "returned after " .. elapsed .. " s")
    assert.is_true(elapsed < 5, "returned after " .. elapsed .. " s")
    h.is(ctx:err(), DE, "err()")
  end)

  it("waits for an ancestor's deadline", function()
    local start = h.now()
    local parent = context.with_timeout(bg, 0.04)
    local child = context.with_value(context.with_cancel(parent), "k", 1)
    h.is(child:done(), DE, "done()")
    assert.is_true(h.now() - start >= 0.04 - 1e-3)
    h.is(context.origin(child), parent, "origin")
  end)

  it("waits for a merge input's deadline", function()
    local start = h.now()
    local m = context.merge(context.with_cancel(bg), (context.with_timeout(bg, 0.04, "slow")))
    h.is(m:done(), DE, "done()")
    h.is(m:cause(), "slow", "cause()")
    assert.is_true(h.now() - start >= 0.04 - 1e-3)
  end)
end)

describe("ctx:done() from a coroutine the scheduler does not own", function()
  B.it_libev("raises an error instead of waiting or yielding",
    "in nginx, a coroutine.create coroutine run from a light thread can wait: ngx_lua's "
    .. "coroutines suspend their light thread on a semaphore wait, so ctx:done() waits "
    .. "there and returns the context's err (every coroutine is lcontext.ngx's to wait in)",
    function()
    -- (if done() wrongly ran the loop here, it would return after 0.5 s)
    local ctx = context.with_timeout(bg, 0.5)
    local co = coroutine.create(function() return "returned", ctx:done() end)
    local ok, msg = coroutine.resume(co)
    assert.is_false(ok, "done() in a foreign coroutine did not raise: " .. tostring(msg))
    assert.are.equal("dead", coroutine.status(co))
    assert.is_truthy(msg ~= nil and tostring(msg) ~= "", "empty error")
  end)

  if B.ngx then
    -- what nginx does instead (docs/openresty.md, "Good to know")
    it("in nginx: waits in the coroutine, which suspends its light thread", function()
      local start = h.now()
      local ctx = context.with_timeout(bg, 0.05)
      local co = coroutine.create(function() return "returned", ctx:done() end)
      local ok, r, err = coroutine.resume(co)
      assert.is_true(ok, tostring(r))
      assert.are.equal("returned", r)
      h.is(err, DE, "done()")
      assert.are.equal("dead", coroutine.status(co))
      assert.is_true(h.now() - start >= 0.05 - 1e-3)
    end)
  end
end)
