-- Regression: README says every function that takes a
-- context is also a method (`context.with_cancel(ctx)` is
-- `ctx:with_cancel()`), but after_func, sleep, wait_fd, signal, group,
-- retry, hedge and the patterns' functions were not methods.
local context = require "lcontext"
local bg = context.background()

-- the module's functions whose first argument is a context, found by what
-- they say when it is not one (run, step and on_error take a mode, a
-- timeout, a handler: left out, calling them would run the loop)
local function context_first()
  local found = {}
  for name, f in pairs(context) do
    if type(f) == "function" and name:sub(1, 1) ~= "_" and name ~= "run"
        and name ~= "step" and name ~= "on_error" then
      local ok, err = pcall(f, io.stdout)
      if not ok and tostring(err):find("bad argument #1 to '[^']*' %(context expected") then
        found[#found + 1] = name
      end
    end
  end
  table.sort(found)
  return found
end

describe("regress: context-first functions are methods", function()
  it("every one of them", function()
    local names = context_first()
    local missing = {}
    for _, name in ipairs(names) do
      if type(bg[name]) ~= "function" then missing[#missing + 1] = name end
    end
    assert.are.same({}, missing)
    -- the list is the real one (the README's and the helpers')
    for _, name in ipairs { "with_cancel", "merge", "cause", "origin", "after_func", "sleep",
        "wait_fd", "signal", "group", "retry", "hedge", "split", "scope", "fallback",
        "with_min_timeout", "classify_timeout", "log_fields" } do
      local seen = false
      for _, n in ipairs(names) do seen = seen or n == name end
      assert.is_true(seen, name .. " was not found taking a context first")
    end
  end)

  it("do what the functions do", function()
    local ctx, cancel = bg:with_cancel()
    assert.is_true(ctx:sleep(0.001))
    local ran = false
    local stop = ctx:after_func(function() ran = true end)
    assert.are.equal("function", type(stop))
    local g, gctx = ctx:group()
    g:go(function(c) return c == gctx end)
    assert.is_nil(g:wait())
    assert.are.equal("ok", ctx:retry(function() return "ok" end, { attempts = 1 }))
    cancel()
    context.run()
    assert.is_true(ran)
    assert.are.equal(context.canceled, select(2, ctx:sleep(1)))
  end)

  it("leave the older methods alone", function()
    local k = context.key("k")
    local ctx, cancel = bg:with_value(k, 42):with_cancel()
    assert.are.equal(42, ctx:value(k))
    cancel()
    assert.are.equal(context.canceled, ctx:done())
  end)
end)
