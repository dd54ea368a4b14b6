-- Lua 5.4 only: to-be-closed variables (`local ctx, cancel <close> = ...`)
-- exist from Lua 5.4 on; the syntax does not parse on 5.3, 5.1 or LuaJIT.
-- (Moved from derive_spec.lua, which runs on every runtime.)
local context = require "lcontext"
local h = require "spec.helpers"

local bg = context.background()

-- Every kind of context that comes with its own cancel (as in derive_spec).
local kinds = {
  { name = "with_cancel",
    fn = function(p) return context.with_cancel(p) end,
    method = function(p) return p:with_cancel() end },
  { name = "with_cancel_cause",
    fn = function(p) return context.with_cancel_cause(p) end,
    method = function(p) return p:with_cancel_cause() end },
  { name = "with_timeout",
    fn = function(p) return context.with_timeout(p, 3600) end,
    method = function(p) return p:with_timeout(3600) end },
  { name = "with_deadline",
    fn = function(p) return context.with_deadline(p, os.time() + 3600) end,
    method = function(p) return p:with_deadline(os.time() + 3600) end },
  { name = "merge",
    fn = function(p) return context.merge(p, context.todo()) end,
    method = function(p) return p:merge(context.todo()) end },
}

local function running(ctx, what)
  assert(ctx ~= nil, (what or "ctx") .. " is nil")
  if ctx:err() ~= nil then
    error((what or "ctx") .. " should be running, err() = " .. tostring(ctx:err()), 2)
  end
  assert(ctx:is_done() == false, (what or "ctx") .. ": is_done() should be false")
  assert(ctx:cause() == nil, (what or "ctx") .. ": cause() should be nil")
end

local function done_with(ctx, err, cause, what)
  what = what or "ctx"
  h.is(ctx:err(), err, what .. " err()")
  assert(ctx:is_done() == true, what .. ": is_done() should be true")
  h.is(ctx:cause(), cause, what .. " cause()")
  h.is(context.cause(ctx), cause, what .. " context.cause()")
end

describe("deriving", function()
  for _, kind in ipairs(kinds) do
    for _, form in ipairs { "fn", "method" } do
      describe(kind.name .. " (" .. (form == "fn" and "context." .. kind.name .. "(parent)"
          or "parent:" .. kind.name .. "()") .. ")", function()
        local make = kind[form]

        it("cancel supports <close>", function()
          local saved, inner
          do
            local ctx, cancel <close> = make(bg)
            saved = ctx
            inner = context.with_cancel(ctx)
            running(ctx)
          end
          done_with(saved, context.canceled, context.canceled)
          done_with(inner, context.canceled, context.canceled, "child")
        end)

        it("<close> also cancels when the block exits with an error", function()
          local saved
          local ok, err = pcall(function()
            local ctx, cancel <close> = make(bg)
            saved = ctx
            error("boom", 0)
          end)
          assert.is_false(ok)
          assert.are.equal("boom", err) -- __close must not replace the error
          h.is(saved:err(), context.canceled, "err()")
          assert.is_true(saved:is_done())
        end)
      end)
    end
  end
end)
