-- bench/plain_check.lua: checks that the plain-Lua baseline (bench/plain.lua)
-- does what lcontext does for the figures it stands in for, so that the
-- comparison is between two correct implementations.
--
--   lua5.4 bench/plain_check.lua        (prints "plain.lua: ok")

local dir = (arg and arg[0] or ""):match("^(.*[/\\])") or "./"
local P = dofile(dir .. "plain.lua")

local bg = P.background()
assert(bg:err() == nil and P.background() == bg)

-- cancellation goes down the tree, through value contexts
local a, ca = P.with_cancel(bg)
local v = P.with_value(a, "k", 1)
local b = P.with_cancel(v)
local t = P.with_timeout(b, 3600)
assert(P.pending() == 1)
assert(t:value("k") == 1 and t:value("x") == nil)
ca()
for _, c in ipairs { a, v, b, t } do assert(c:err() == P.canceled) end
assert(P.pending() == 0, "cancel leaves its deadline in the heap")
assert(P.with_cancel(a):err() == P.canceled, "child of a done parent")
ca() -- idempotent

-- deadlines
local x = P.with_timeout(bg, 0.01)
local y, cy = P.with_timeout(bg, 3600)
local z = P.with_timeout(y, 7200)
assert(z:deadline() == y:deadline(), "a later deadline than the parent's is ignored")
assert(x:err() == nil)
local t0 = P.now()
while P.now() - t0 < 0.02 do end
assert(P.poll() == 1 and x:err() == P.deadline_exceeded)
assert(P.with_timeout(bg, 0):err() == P.deadline_exceeded)
local w = P.with_timeout(bg, 0.005)
t0 = P.now()
while P.now() - t0 < 0.01 do end
assert(w:err() == P.deadline_exceeded, "err() notices a passed deadline without poll()")
cy()
assert(z:err() == P.canceled and P.pending() == 0)

-- the heap stays a heap under random pushes and removals
local heap
local function find(f, seen)
  seen = seen or {}
  if seen[f] then return nil end
  seen[f] = true
  for i = 1, math.huge do
    local name, val = debug.getupvalue(f, i)
    if not name then return nil end
    if name == "heap" then return val end
    if type(val) == "function" then
      local r = find(val, seen)
      if r then return r end
    end
  end
end
heap = assert(find(P.poll), "timer heap not found")
local function check_heap()
  local n = P.pending()
  for i = 1, n do
    assert(heap[i]._hidx == i, "stale heap index")
    if i > 1 then assert(heap[i // 2]._deadline <= heap[i]._deadline, "heap order") end
  end
  assert(heap[n + 1] == nil)
end
math.randomseed(1)
local live = {}
for r = 1, 30000 do
  if #live > 0 and math.random() < 0.45 then
    local j = math.random(#live)
    live[j][2]()
    live[j] = live[#live]
    live[#live] = nil
  else
    local c, f = P.with_timeout(bg, 100 + math.random() * 1000)
    live[#live + 1] = { c, f }
  end
  if r % 997 == 0 then check_heap() end
end
check_heap()
assert(P.pending() == #live)
for _, p in ipairs(live) do p[2]() end
assert(P.pending() == 0)

print("plain.lua: ok")
