local context = require "lcontext"
local h = require "spec.helpers"

-- A mixed workload (derive, cancel, value lookups, merge, dropped references)
-- with a full collectgarbage() between every operation, checked against a
-- plain-Lua model of Go's semantics. A missing GC anchor (a parent, value,
-- cause, merge input or cancel target that only the C side points to) shows
-- up here as a crash, a wrong value or a wrong err/cause/origin.
--
-- The model never holds real lcontext objects, values or causes strongly:
-- values and causes are fresh tables { tag = n } that only the contexts
-- reference, and real contexts are remembered only in a weak table.

local bg, todo = context.background(), context.todo()
local C, DE = context.canceled, context.deadline_exceeded

local OPS = tonumber(os.getenv("STRESS_OPS")) or 2000

-- A with_cancel child whose cancel is a <close> variable, collected before
-- the block ends; returns the child. `<close>` exists from Lua 5.4 on (it
-- would not parse elsewhere: compiled from a string there); on the other
-- runtimes the block calls cancel at its end, so that the operation (and the
-- workload's random sequence) stays the same.
local closed_block
if h.LUA54 then
  closed_block = assert(load([[
    local with_cancel, parent = ...
    local ctx, cancel <close> = with_cancel(parent)
    collectgarbage()
    return ctx
  ]], "=closed_block"))
  local f = closed_block
  closed_block = function(parent) return f(context.with_cancel, parent) end
else
  closed_block = function(parent)
    local ctx, cancel = context.with_cancel(parent)
    collectgarbage()
    cancel()
    return ctx
  end
end

local function run_workload(seed)
  math.randomseed(seed)
  local rand = math.random

  local keys = {
    { "a string", "alpha" },
    { "an integer", 7 },
    { "a float", 7.5 },
    { "true", true },
    { "a key object", context.key("k1") },
    { "another key object named alike", context.key("k1") },
    { "a table", {} },
    { "a long string", "long" }, -- looked up with a freshly built 60-char string
  }
  local function key_value(i)
    if keys[i][2] == "long" then return table.concat { string.rep("L", 58), "z", tostring(i) } end
    return keys[i][2]
  end

  local nodes = {}        -- every model node ever made
  local reg = setmetatable({}, { __mode = "v" }) -- node id -> real context (weak)
  local creg = setmetatable({}, { __mode = "v" }) -- cancel id -> real cancel (weak)
  local live = {}         -- { node = n, ctx = real } : references the test keeps
  local cancels = {}      -- { node = n, cancel = real, causey = bool }
  local next_tag = 0
  local op = 0

  local function fail(fmt, ...)
    error(("op %d (seed %d): " .. fmt):format(op, seed, ...), 2)
  end

  local function new_node(kind, parents)
    local n = { id = #nodes + 1, kind = kind, parents = parents, children = {}, done = false }
    nodes[#nodes + 1] = n
    if kind ~= "without_cancel" then
      for _, p in ipairs(parents) do p.children[#p.children + 1] = n end
    end
    return n
  end

  -- Go's propagation: everything reachable through `children` that is not
  -- done yet becomes done with the same err, cause and origin.
  local function model_cancel(node, err, cause)
    local stack = { node }
    while #stack > 0 do
      local n = table.remove(stack)
      if not n.done then
        n.done, n.err, n.cause, n.origin = true, err, cause, node
        for _, c in ipairs(n.children) do stack[#stack + 1] = c end
      end
    end
  end

  -- inherit the state of a done parent at creation
  local function inherit(n, parents)
    for _, p in ipairs(parents) do
      if p.done then
        n.done, n.err, n.cause, n.origin = true, p.err, p.cause, p.origin
        return true
      end
    end
    return false
  end

  local function model_value(n, ki)
    if n.kind == "root" then return nil end
    if n.kind == "with_value" and n.key == ki then return n.tag end
    for _, p in ipairs(n.parents) do
      local v = model_value(p, ki)
      if v ~= nil then return v end
    end
    return nil
  end

  local function model_deadline(parents)
    local d
    for _, p in ipairs(parents) do
      if p.deadline and (d == nil or p.deadline < d) then d = p.deadline end
    end
    return d
  end

  -- "merge#35(with_value#20(bg), without_cancel#3(...))", for failure messages
  local function describe_node(n, depth)
    depth = depth or 0
    if n.kind == "root" then return n.id == 0 and "bg" or "todo" end
    if depth > 6 then return n.kind .. "#" .. n.id .. "(...)" end
    local ps = {}
    for i, p in ipairs(n.parents) do ps[i] = describe_node(p, depth + 1) end
    return ("%s#%d%s(%s)"):format(n.kind, n.id, n.done and "!" or "", table.concat(ps, ", "))
  end

  local function same_cause(actual, expected)
    if expected == C or expected == DE then return rawequal(actual, expected) end
    return type(actual) == "table" and actual.tag == expected
  end

  local function verify(n, ctx, where)
    local e = ctx:err()
    if n.done then
      if not rawequal(e, n.err) then fail("%s node %d (%s): err() = %s, want %s", where, n.id, n.kind, tostring(e), tostring(n.err)) end
      if ctx:is_done() ~= true then fail("%s node %d: is_done() not true", where, n.id) end
      local c = ctx:cause()
      if not same_cause(c, n.cause) then fail("%s node %d (%s): wrong cause() %s", where, n.id, n.kind, tostring(c)) end
      if not same_cause(context.cause(ctx), n.cause) then fail("%s node %d: wrong context.cause()", where, n.id) end
      local o = context.origin(ctx)
      local want = reg[n.origin.id]
      if o == nil then fail("%s node %d: origin() is nil", where, n.id) end
      if want ~= nil and not rawequal(o, want) then
        fail("%s node %d (%s): origin() is %s, want node %d (%s)", where, n.id, n.kind, tostring(o), n.origin.id, tostring(want))
      end
      local ok, raised = pcall(ctx.check, ctx)
      if ok or not rawequal(raised, n.err) then fail("%s node %d: check() did not raise err()", where, n.id) end
    else
      if e ~= nil then fail("%s node %d (%s): err() = %s, want nil", where, n.id, n.kind, tostring(e)) end
      if ctx:is_done() ~= false then fail("%s node %d: is_done() not false", where, n.id) end
      if ctx:cause() ~= nil then fail("%s node %d: cause() not nil", where, n.id) end
      if context.origin(ctx) ~= nil then fail("%s node %d: origin() not nil", where, n.id) end
      if not rawequal(ctx:check(), ctx) then fail("%s node %d: check() did not return ctx", where, n.id) end
    end
    for ki = 1, #keys do
      local want = model_value(n, ki)
      local got = ctx:value(key_value(ki))
      if want == nil then
        if got ~= nil then fail("%s node %d: value(%s) = %s, want nil", where, n.id, keys[ki][1], tostring(got)) end
      elseif type(got) ~= "table" or got.tag ~= want then
        fail("%s node %d (%s): value(%s) = %s, want tag %d", where, n.id, n.kind, keys[ki][1],
          type(got) == "table" and ("tag " .. tostring(got.tag)) or tostring(got), want)
      end
    end
    local d = ctx:deadline()
    if n.deadline == nil then
      if d ~= nil then fail("%s node %s: deadline() = %s, want nil", where, describe_node(n), tostring(d)) end
    elseif type(d) ~= "number" or math.abs(d - n.deadline) > 1e-3 then
      fail("%s node %s: deadline() = %s, want %.6f", where, describe_node(n), tostring(d), n.deadline)
    end
  end

  local root_nodes = {
    { node = { id = 0, kind = "root", parents = {}, children = {}, done = false }, ctx = bg },
    { node = { id = -1, kind = "root", parents = {}, children = {}, done = false }, ctx = todo },
  }

  local function pick_parent()
    if #live == 0 or rand() < 0.1 then return root_nodes[rand(2)] end
    return live[rand(#live)]
  end

  local function new_cause()
    next_tag = next_tag + 1
    return next_tag, { tag = next_tag }
  end

  local function add(n, ctx, cancel, causey)
    reg[n.id] = ctx
    live[#live + 1] = { node = n, ctx = ctx }
    if cancel ~= nil then
      creg[n.id] = cancel
      cancels[#cancels + 1] = { node = n, cancel = cancel, causey = causey }
    end
  end

  local function own_deadline(n, parents, actual, want_own, exactish)
    -- Go: a deadline later than the parent's is ignored.
    local pd = model_deadline(parents)
    if type(actual) ~= "number" then fail("%s node %d: deadline() = %s", n.kind, n.id, tostring(actual)) end
    if pd and pd < want_own - 1 then
      if math.abs(actual - pd) > 1e-3 then fail("%s node %d: deadline %.6f, want the parent's %.6f", n.kind, n.id, actual, pd) end
    elseif not pd or pd > want_own + 1 then
      if math.abs(actual - want_own) > exactish then fail("%s node %d: deadline %.6f, want %.6f", n.kind, n.id, actual, want_own) end
    end
    n.deadline = actual
  end

  local derive = {
    function() -- with_cancel
      local p = pick_parent()
      local ctx, cancel = context.with_cancel(p.ctx)
      local n = new_node("with_cancel", { p.node })
      inherit(n, n.parents)
      n.deadline = p.node.deadline
      add(n, ctx, cancel, false)
    end,
    function() -- with_cancel_cause (method form)
      local p = pick_parent()
      local ctx, cancel = p.ctx:with_cancel_cause()
      local n = new_node("with_cancel_cause", { p.node })
      inherit(n, n.parents)
      n.deadline = p.node.deadline
      add(n, ctx, cancel, true)
    end,
    function() -- with_timeout, long
      local p = pick_parent()
      local secs = ({ 1000, 2000, 3000 })[rand(3)]
      local want = h.now() + secs
      local ctx, cancel
      if rand() < 0.5 then
        local _, cause = new_cause() -- never reported: the timeout never fires here
        ctx, cancel = context.with_timeout(p.ctx, secs, cause)
        local n = new_node("with_timeout", { p.node })
        inherit(n, n.parents)
        own_deadline(n, n.parents, ctx:deadline(), want, 2)
        add(n, ctx, cancel, false)
      else
        ctx, cancel = p.ctx:with_timeout(secs)
        local n = new_node("with_timeout", { p.node })
        inherit(n, n.parents)
        own_deadline(n, n.parents, ctx:deadline(), want, 2)
        add(n, ctx, cancel, false)
      end
    end,
    function() -- with_deadline, long
      local p = pick_parent()
      local d = os.time() + ({ 1500, 2500 })[rand(2)] + 0.25
      local ctx, cancel = context.with_deadline(p.ctx, d)
      local n = new_node("with_deadline", { p.node })
      inherit(n, n.parents)
      own_deadline(n, n.parents, ctx:deadline(), d, 1e-3)
      add(n, ctx, cancel, false)
    end,
    function() -- with_timeout 0 / past deadline, maybe with a cause
      local p = pick_parent()
      local tag, cause
      if rand() < 0.5 then tag, cause = new_cause() end
      local ctx, cancel
      local want = h.now()
      if rand() < 0.5 then
        ctx, cancel = context.with_timeout(p.ctx, 0, cause)
      else
        want = os.time() - 5
        ctx, cancel = context.with_deadline(p.ctx, want, cause)
      end
      local n = new_node("expired", { p.node })
      if not inherit(n, n.parents) then
        n.done, n.err, n.cause, n.origin = true, DE, tag or DE, n
      end
      own_deadline(n, n.parents, ctx:deadline(), want, 1)
      add(n, ctx, cancel, false)
    end,
    function() -- with_value
      local p = pick_parent()
      local ki = rand(#keys)
      next_tag = next_tag + 1
      local ctx
      if rand() < 0.5 then
        ctx = context.with_value(p.ctx, key_value(ki), { tag = next_tag })
      else
        ctx = p.ctx:with_value(key_value(ki), { tag = next_tag })
      end
      local n = new_node("with_value", { p.node })
      n.key, n.tag = ki, next_tag
      inherit(n, n.parents)
      n.deadline = p.node.deadline
      add(n, ctx, nil)
    end,
    function() -- without_cancel
      local p = pick_parent()
      local ctx = context.without_cancel(p.ctx)
      local n = new_node("without_cancel", { p.node })
      add(n, ctx, nil)
    end,
    function() -- merge of 2 or 3
      local k = rand(2, 3)
      local ins, ctxs, ndone = {}, {}, 0
      for i = 1, k do
        local p = pick_parent()
        ins[i], ctxs[i] = p.node, p.ctx
        if p.node.done then ndone = ndone + 1 end
      end
      if ndone > 1 then return end -- which done input wins is not specified
      local ctx, cancel
      if rand() < 0.5 then ctx, cancel = context.merge(table.unpack(ctxs, 1, k))
      else ctx, cancel = ctxs[1]:merge(table.unpack(ctxs, 2, k)) end
      local n = new_node("merge", ins)
      inherit(n, ins)
      n.deadline = model_deadline(ins)
      add(n, ctx, cancel, false)
    end,
    function() -- with_cancel whose cancel is a <close> variable (5.4)
      local p = pick_parent()
      local n = new_node("closed", { p.node })
      inherit(n, n.parents)
      n.deadline = p.node.deadline
      local kept = closed_block(p.ctx)
      model_cancel(n, C, C)
      add(n, kept, nil)
    end,
  }

  local function do_cancel()
    if #cancels == 0 then return end
    local e = cancels[rand(#cancels)]
    if e.causey and rand() < 0.7 then
      local tag, cause = new_cause()
      e.cancel(cause)
      model_cancel(e.node, C, tag)
    else
      e.cancel()
      model_cancel(e.node, C, C)
    end
  end

  local function drop(list)
    if #list == 0 then return end
    local i = rand(#list)
    list[i] = list[#list]
    list[#list] = nil
  end

  local function verify_random_live()
    if #live == 0 then return end
    local e = live[rand(#live)]
    verify(e.node, e.ctx, "live")
  end

  local function verify_random_dropped()
    if #nodes == 0 then return end
    local n = nodes[rand(#nodes)]
    local ctx = reg[n.id]
    if ctx ~= nil then verify(n, ctx, "still-reachable") end
  end

  for i = 1, OPS do
    op = i
    local r = rand()
    if r < 0.40 then
      derive[rand(#derive)]()
    elseif r < 0.52 then
      do_cancel()
    elseif r < 0.62 + (#live > 200 and 0.15 or 0) then
      drop(live)
    elseif r < 0.70 then
      drop(cancels)
    elseif r < 0.90 then
      verify_random_live()
    else
      verify_random_dropped()
    end
    collectgarbage()
    if i % 500 == 0 then
      for _, e in ipairs(live) do verify(e.node, e.ctx, "sweep") end
      for _, e in ipairs(root_nodes) do verify(e.node, e.ctx, "root") end
    end
  end

  -- cancel everything still cancellable, check, then drop it all
  for _, e in ipairs(cancels) do e.cancel(); model_cancel(e.node, C, C) end
  collectgarbage()
  for _, e in ipairs(live) do verify(e.node, e.ctx, "final") end
  -- drop it all: empty the lists that hold the real objects (returning
  -- would drop them too, but LuaJIT's compiled traces may keep the
  -- closures of this function, and so these lists, alive a while)
  for i = #live, 1, -1 do live[i] = nil end
  for i = #cancels, 1, -1 do cancels[i] = nil end
  return reg, creg, #nodes
end

describe("GC stress", function()
  it(("keeps Go semantics over %d mixed operations with a full GC after each"):format(OPS), function()
    local reg, creg, made = run_workload(tonumber(os.getenv("STRESS_SEED")) or 20240611)
    assert.is_true(made > OPS / 5, "too few contexts made: " .. made)
    h.full_gc()
    local left, cleft = h.count(reg), h.count(creg)
    assert.are.equal(0, left, left .. " of " .. made .. " contexts were not collected")
    assert.are.equal(0, cleft, cleft .. " cancel objects were not collected")
    assert.is_nil(bg:err())
    assert.is_nil(todo:err())
  end)
end)
