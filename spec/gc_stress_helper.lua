-- Loaded by busted (--helper) for the aggressive-GC run of the suite: a GC
-- step every few hundred VM instructions, so a value the C code forgot to
-- anchor is collected under it and the run crashes or misbehaves.
local function step() collectgarbage("step") end
debug.sethook(step, "", 200)
local create = coroutine.create
-- hooks are per coroutine: give every new coroutine the same hook
coroutine.create = function(f)
  local co = create(f)
  debug.sethook(co, step, "", 200)
  return co
end
local wrap = coroutine.wrap
coroutine.wrap = function(f)
  local co = coroutine.create(f)
  return function(...)
    local r = table.pack(coroutine.resume(co, ...))
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end
end
local _ = wrap
