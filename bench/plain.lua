-- bench/plain.lua: the subset of lcontext's API that the benchmark uses,
-- written in plain Lua (tables and closures, no C of its own), the way a
-- Lua library without a C core would do it. It is the "plain Lua" baseline
-- of `make bench`: not deliberately slow, not tuned for the benchmark either.
--
--   background()                      the root: never done, no values
--   with_cancel(parent)         -> ctx, cancel
--   with_timeout(parent, secs)  -> ctx, cancel
--   with_deadline(parent, t)    -> ctx, cancel   (t on the same clock as now())
--   with_value(parent, k, v)    -> ctx
--   ctx:err(), ctx:value(k), ctx:deadline()
--   poll()                      fires the deadlines that have passed
--   now()                       the clock deadlines are measured on
--
-- Structure: a cancelable context keeps its children in a table used as a
-- set (created on first use); a child registers with the nearest cancelable
-- ancestor, skipping value contexts, as Go's context does. Deadlines are
-- kept in a binary min-heap of contexts, so pending deadlines really are
-- registered somewhere; cancel removes its context from the heap. err()
-- also compares the deadline with the clock, so a passed deadline is seen
-- even when nobody calls poll().

local M = {}

-- The clock: monotonic when luasystem is there, else LuaSocket's wall clock,
-- else whole seconds.
local now
do
  local ok, system = pcall(require, "system")
  if ok and type(system) == "table" and system.monotime then
    now = system.monotime
  else
    local ok2, socket = pcall(require, "socket")
    if ok2 and type(socket) == "table" and socket.gettime then
      now = socket.gettime
    else
      now = os.time
    end
  end
end
M.now = now

local function sentinel(msg, fields)
  local e = fields or {}
  return setmetatable(e, { __tostring = function() return msg end })
end
M.canceled = sentinel("context canceled")
M.deadline_exceeded = sentinel("context deadline exceeded", { timeout = true })
local canceled, deadline_exceeded = M.canceled, M.deadline_exceeded

-- {==== timer heap ===================================================
-- heap[1..n] are contexts ordered by ctx._deadline; ctx._hidx is the
-- context's position in heap (nil when not in it).

local heap, hn = {}, 0

local function sift_up(i)
  local c = heap[i]
  local d = c._deadline
  while i > 1 do
    local p = math.floor(i / 2)
    local pc = heap[p]
    if pc._deadline <= d then break end
    heap[i] = pc; pc._hidx = i
    i = p
  end
  heap[i] = c; c._hidx = i
end

local function sift_down(i)
  local c = heap[i]
  local d = c._deadline
  while true do
    local l = 2 * i
    if l > hn then break end
    local m, md = l, heap[l]._deadline
    local r = l + 1
    if r <= hn and heap[r]._deadline < md then m, md = r, heap[r]._deadline end
    if d <= md then break end
    local mc = heap[m]
    heap[i] = mc; mc._hidx = i
    i = m
  end
  heap[i] = c; c._hidx = i
end

local function heap_push(c)
  hn = hn + 1
  heap[hn] = c
  sift_up(hn)
end

local function heap_remove(c)
  local i = c._hidx
  c._hidx = nil
  local last = heap[hn]
  heap[hn] = nil
  hn = hn - 1
  if i <= hn then
    heap[i] = last; last._hidx = i
    if i > 1 and heap[math.floor(i / 2)]._deadline > last._deadline then
      sift_up(i)
    else
      sift_down(i)
    end
  end
end

-- ====}

-- {==== contexts =====================================================

local Context = {}
Context.__index = Context
Context.__name = "plain.Context"

-- Fields of a context table:
--   _parent     the parent context (nil for background)
--   _canceler   the nearest cancelable context: itself, or an ancestor's
--               (nil when there is none: background, or values over it)
--   _err        nil while running; the sentinel once done (cancelables only)
--   _children   set of cancelable descendants registered here, or nil
--   _deadline   the effective deadline (inherited), or nil
--   _key, _val  for value contexts
--   _hidx       position in the timer heap

local background = setmetatable({}, Context)
function M.background() return background end

local function cancel(c, err, detach)
  if c._err then return end
  c._err = err
  if c._hidx then heap_remove(c) end
  local children = c._children
  if children then
    c._children = nil
    for child in pairs(children) do cancel(child, err, false) end
  end
  if detach then
    local p = c._parent._canceler
    if p then
      local siblings = p._children
      if siblings then siblings[c] = nil end
    end
  end
end

function Context:err()
  local c = self._canceler
  if not c then return nil end
  local err = c._err
  if err then return err end
  local d = c._deadline
  if d and now() >= d then
    -- The deadline passed but nobody polled the timers yet.
    cancel(c, deadline_exceeded, true)
    return c._err
  end
  return nil
end

function Context:value(key)
  local c = self
  repeat
    if c._key == key then return c._val end
    c = c._parent
  until c == nil
  return nil
end

function Context:deadline() return self._deadline end

local function new_cancelable(parent, deadline)
  if getmetatable(parent) ~= Context then
    error("bad argument #1 (context expected, got " .. type(parent) .. ")", 3)
  end
  -- The fields every cancelable context uses are named up front, so that
  -- the table is sized for them once (_children and _hidx come when needed).
  local c = setmetatable({
    _parent = parent, _canceler = nil, _deadline = parent._deadline, _err = nil,
  }, Context)
  c._canceler = c
  local p = parent._canceler
  local perr = p and p._err
  if perr then
    c._err = perr
  elseif p then
    local children = p._children
    if not children then children = {}; p._children = children end
    children[c] = true
  end
  if deadline and not c._err and (not c._deadline or deadline < c._deadline) then
    c._deadline = deadline
    if deadline <= now() then
      cancel(c, deadline_exceeded, true)
    else
      heap_push(c)
    end
  end
  return c, function() cancel(c, canceled, true) end
end

function M.with_cancel(parent)
  return new_cancelable(parent, nil)
end

function M.with_deadline(parent, t)
  return new_cancelable(parent, t)
end

function M.with_timeout(parent, seconds)
  return new_cancelable(parent, now() + seconds)
end

function M.with_value(parent, key, val)
  if getmetatable(parent) ~= Context then
    error("bad argument #1 to 'with_value' (context expected)", 2)
  end
  if key == nil then error("bad argument #2 to 'with_value' (key expected)", 2) end
  return setmetatable({
    _parent = parent, _canceler = parent._canceler, _deadline = parent._deadline,
    _key = key, _val = val,
  }, Context)
end

Context.with_cancel = M.with_cancel
Context.with_timeout = M.with_timeout
Context.with_deadline = M.with_deadline
Context.with_value = M.with_value

-- Fires every deadline that has passed; returns how many fired.
function M.poll()
  local t, fired = now(), 0
  while hn > 0 and heap[1]._deadline <= t do
    cancel(heap[1], deadline_exceeded, true)
    fired = fired + 1
  end
  return fired
end

-- Number of deadlines registered (for tests).
function M.pending() return hn end

-- ====}

return M
