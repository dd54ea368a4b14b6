-- context.breaker (docs/resilience.md): consecutive and failure-ratio
-- modes, cooldown and half-open probes (at most half_open_max, re-armed when
-- one hangs or is cancelled), generations, what counts as a failure,
-- on_state_change, the two-step allow()/done(err), the state store.
--
-- Time is virtual (context.virtual_clock, docs/testing.md): the breakers
-- read the default clock, context.now, and the tests move it with
-- clock:advance, or let autojump run timeouts at once; so cooldowns and
-- timeouts are exact to the millisecond and take no real time. The store
-- tests keep an injected clock (a breaker given a clock keeps it).
local context = require "lcontext"
local h = require "spec.helpers"

local bg = context.background()
local canceled, deadline_exceeded = context.canceled, context.deadline_exceeded
local OPEN = context.breaker_open

-- no task error goes unnoticed; every test leaves the scheduler idle
local guard_start, guard_check = require("spec.sched_helpers").task_guard()
-- the virtual clock of the test, uninstalled before the idle guard runs
local vclock
local function virtual(opts)
  vclock = context.virtual_clock(opts)
  return vclock
end
before_each(guard_start)
after_each(function()
  if vclock then vclock:uninstall(); vclock = nil end
  guard_check()
end)

-- a breaker on the default clock (context.now), made virtual: returns the
-- breaker, the clock (clock:advance(s) moves time) and its state changes
local function make(opts)
  local clock = virtual()
  local changes = {}
  opts = opts or {}
  opts.on_state_change = function(from, to) changes[#changes + 1] = from .. ">" .. to end
  return context.breaker(opts), clock, changes
end

local function fail(br, err) return assert(br:allow())(err or "boom") end
local function succeed(br) return assert(br:allow())(nil) end

describe("context.breaker_open", function()
  it("is a unique, read-only sentinel that prints as the breaker's refusal", function()
    assert.are.equal("circuit breaker is open", tostring(OPEN))
    h.is(OPEN, require("lcontext").breaker_open)
    assert.is_false(pcall(function() OPEN.x = 1 end))
    assert.are.equal("context.breaker_open", getmetatable(OPEN))
    assert.is_false(pcall(setmetatable, OPEN, {}))
  end)
end)

describe("context.breaker, consecutive mode", function()
  it("starts closed and lets calls through, passing results on", function()
    local br = make()
    assert.are.equal("closed", br:state())
    local r = table.pack(br:call(bg, function(ctx, a, b) return a + b, nil, ctx end, 1, 2))
    assert.are.equal(3, r.n)
    assert.are.same({ 3, nil, bg }, { r[1], r[2], r[3] })
  end)

  it("opens after `threshold` consecutive failures; a success resets the run", function()
    local br, _, changes = make { threshold = 3 }
    fail(br); fail(br); succeed(br); fail(br); fail(br)
    assert.are.equal("closed", br:state())
    assert.are.equal(2, br:counts().consecutive_failures)
    fail(br)
    assert.are.equal("open", br:state())
    assert.are.same({ "closed>open" }, changes)
  end)

  it("defaults to 5 consecutive failures and a 30 s cooldown", function()
    local br, clock = make()
    for _ = 1, 4 do fail(br) end
    assert.are.equal("closed", br:state())
    fail(br)
    assert.are.equal("open", br:state())
    clock:advance(29.999)
    assert.are.equal("open", br:state())
    clock:advance(0.001)
    assert.are.equal("half_open", br:state())
  end)

  it("while open: nil, breaker_open, fn not called, rejections counted", function()
    local br = make { threshold = 1 }
    fail(br)
    local called = false
    local r = table.pack(br:call(bg, function() called = true end))
    assert.are.equal(2, r.n)
    assert.is_nil(r[1])
    h.is(r[2], OPEN, "err")
    assert.is_false(called)
    local done, err = br:allow()
    assert.is_nil(done)
    h.is(err, OPEN, "allow's err")
    assert.are.equal(2, br:counts().rejected)
  end)

  it("after the cooldown: half-open, one probe at a time; its success closes", function()
    local br, clock, changes = make { threshold = 1, cooldown = 10 }
    fail(br)
    clock:advance(10)
    local probe = assert(br:allow())
    assert.are.equal("half_open", br:state())
    local second, err = br:allow()
    assert.is_nil(second, "a second probe was let through")
    h.is(err, OPEN)
    assert.are.equal(1, br:counts().probes)
    assert.is_true(probe(nil))
    assert.are.equal("closed", br:state())
    assert.are.same({ "closed>open", "open>half_open", "half_open>closed" }, changes)
  end)

  it("a failed probe opens it again, for a whole new cooldown", function()
    local br, clock, changes = make { threshold = 1, cooldown = 10 }
    fail(br)
    clock:advance(10)
    assert.is_true(fail(br))
    assert.are.equal("open", br:state())
    clock:advance(9.999)
    assert.are.equal("open", br:state())
    clock:advance(0.001)
    assert.are.equal("half_open", br:state())
    assert.are.same({ "closed>open", "open>half_open", "half_open>open", "open>half_open" },
      changes)
  end)

  it("half_open_max probes at once; success_threshold successes to close", function()
    local br, clock = make { threshold = 1, cooldown = 1, half_open_max = 2,
      success_threshold = 2 }
    fail(br)
    clock:advance(1)
    local p1, p2 = assert(br:allow()), assert(br:allow())
    assert.is_nil((br:allow()))
    assert.are.equal(2, br:counts().probes)
    assert.is_true(p1(nil))
    assert.are.equal("half_open", br:state(), "one success is not enough")
    local p3 = assert(br:allow(), "the finished probe's slot is free again")
    assert.is_true(p2(nil))
    assert.are.equal("closed", br:state())
    assert.is_false(p3(nil), "a probe of the half-open generation counts no more")
  end)

  it("re-arms the slot of a probe that hangs past probe_timeout; its late verdict is ignored",
    function()
      local br, clock = make { threshold = 1, cooldown = 1, probe_timeout = 5 }
      fail(br)
      clock:advance(1)
      local hung = assert(br:allow())
      clock:advance(4.999)
      assert.is_nil((br:allow()), "the slot was re-armed early")
      clock:advance(0.001)
      local fresh = assert(br:allow(), "the slot was not re-armed")
      assert.is_false(hung("late failure"), "a re-armed probe's verdict counted")
      assert.are.equal("half_open", br:state())
      assert.is_true(fresh(nil))
      assert.are.equal("closed", br:state())
    end)

  it("a probe cancelled without a verdict gives its slot back at once", function()
    local br, clock = make { threshold = 1, cooldown = 1 }
    fail(br)
    clock:advance(1)
    local p = assert(br:allow())
    assert.is_false(p(canceled), "a cancellation is no verdict")
    assert.are.equal("half_open", br:state())
    assert.is_truthy(br:allow(), "slot still held")
  end)

  it("ignores results from an older generation", function()
    local br, clock = make { threshold = 2, cooldown = 1 }
    local old1, old2 = assert(br:allow()), assert(br:allow())
    fail(br); fail(br)                       -- opens: a new generation
    assert.is_false(old1("failure from before"), "counted across a state change")
    clock:advance(1)
    assert.is_true(succeed(br))              -- half-open probe: closes
    assert.are.equal("closed", br:state())
    assert.is_false(old2("failure from two generations ago"))
    assert.are.equal(0, br:counts().failures)
    assert.are.equal(3, br:counts().generation)
  end)

  it("a token reports once", function()
    local br = make { threshold = 2 }
    local done = assert(br:allow())
    assert.is_true(done("x"))
    assert.is_false(done("x"))
    assert.are.equal(1, br:counts().failures)
  end)

  it("cancellations never count: done(canceled), fn returning or raising canceled", function()
    local br = make { threshold = 1 }
    assert.is_false(assert(br:allow())(canceled))
    assert.are.same({ nil, canceled }, { br:call(bg, function() return nil, canceled end) })
    assert.is_false(pcall(br.call, br, bg, function() error(canceled) end))
    assert.are.equal("closed", br:state())
    assert.are.equal(0, br:counts().failures)
  end)

  it("a failure seen after the caller cancelled does not count", function()
    local br = make { threshold = 1 }
    local ctx, cancel = context.with_cancel(bg)
    local r = { br:call(ctx, function() cancel(); return nil, "connection reset" end) }
    assert.are.same({ nil, "connection reset" }, r)
    assert.are.equal("closed", br:state())
    -- and a call made with a done context is not made at all
    local called = false
    assert.are.same({ nil, canceled }, { br:call(ctx, function() called = true end) })
    assert.is_false(called)
    assert.are.equal(1, br:counts().requests, "only the first call was let through")
  end)

  it("the call's own timeout counts as a failure", function()
    local clock = virtual { autojump = true }
    local br = context.breaker { threshold = 1, timeout = 0.005 }
    local seen
    local r = { br:call(bg, function(ctx)
      seen = ctx:remaining()
      local _, err = context.sleep(ctx, 5)
      return nil, err
    end) }
    assert.are.same({ nil, deadline_exceeded }, r)
    h.near(seen, 0.005, 1e-12, "remaining at the start of the call")
    assert.are.equal(0.005, clock:now(), "ended by the 5 ms timeout, not the 5 s sleep")
    assert.are.equal("open", br:state())
  end)

  it("an expiry of the caller's deadline counts as a failure too", function()
    local clock = virtual { autojump = true }
    local br = context.breaker { threshold = 1 }
    local ctx = context.with_timeout(bg, 0.1)
    local r = { br:call(ctx, function(c) return nil, (select(2, context.sleep(c, 5))) end) }
    assert.are.same({ nil, deadline_exceeded }, r)
    assert.are.equal(0.1, clock:now(), "ended by the caller's deadline")
    assert.are.equal("open", br:state())
  end)

  it("a raised error counts as a failure and is raised again, as it was", function()
    local br = make { threshold = 1 }
    local obj = {}
    local ok, err = pcall(br.call, br, bg, function() error(obj) end)
    assert.is_false(ok)
    h.is(err, obj, "re-raised")
    assert.are.equal("open", br:state())
  end)

  it("is_failure(err) false: the error is a success for the breaker", function()
    local br = make { threshold = 2, is_failure = function(err) return err ~= "404" end }
    fail(br)
    assert.are.same({ nil, "404" }, { br:call(bg, function() return nil, "404" end) })
    fail(br)
    assert.are.equal("closed", br:state(), "404 broke the run")
    fail(br)
    assert.are.equal("open", br:state())
  end)

  it("a probe cancelled by its caller in a task gives the slot back", function()
    local clock = virtual { autojump = true }
    local br = context.breaker { threshold = 1, cooldown = 0.001, probe_timeout = 10 }
    fail(br)
    context.sleep(bg, 0.001) -- exactly the cooldown
    assert.are.equal(0.001, clock:now())
    local ctx, cancel = context.with_cancel(bg)
    local t = context.go(function()
      return br:call(ctx, function(c) return nil, c:done() end)
    end)
    context.go(function() context.sleep(bg, 0.001); cancel() end):wait()
    assert.are.same({ nil, canceled }, { t:wait() })
    assert.are.equal(0.002, clock:now())
    assert.are.equal("half_open", br:state())
    assert.are.same({ "fine" }, { br:call(bg, function() return "fine" end) })
    assert.are.equal("closed", br:state())
  end)

  it("counts since the last state change", function()
    local br, clock = make { threshold = 3, cooldown = 1 }
    succeed(br); fail(br)
    local c = br:counts()
    assert.are.same({ 2, 1, 1, 0, 1, 0 }, { c.requests, c.successes, c.failures,
      c.consecutive_successes, c.consecutive_failures, c.rejected })
    fail(br); fail(br)
    assert.is_nil((br:allow()))
    c = br:counts()
    assert.are.same({ "open", 0, 0, 0, 1 }, { c.state, c.requests, c.successes,
      c.failures, c.rejected })
    clock:advance(1)
    assert.are.equal(0, br:counts().rejected)
  end)

  it("reset() closes it at once, telling on_state_change", function()
    local br, _, changes = make { threshold = 1 }
    fail(br)
    br:reset()
    assert.are.equal("closed", br:state())
    assert.are.same({ "closed>open", "open>closed" }, changes)
    br:reset()
    assert.are.same({ "closed>open", "open>closed" }, changes, "no change, no call")
  end)

  it("tostring names it and its state", function()
    local br = make { name = "payments" }
    assert.are.equal("context.breaker(payments: closed)", tostring(br))
  end)
end)

describe("context.breaker, ratio mode", function()
  it("opens when failures reach failure_ratio of at least min_throughput calls", function()
    local br, _, changes = make { failure_ratio = 0.5, min_throughput = 10 }
    for _ = 1, 9 do fail(br) end
    assert.are.equal("closed", br:state(), "opened below min_throughput")
    for _ = 1, 4 do succeed(br) end
    -- 13 calls, 9 failures
    fail(br)
    assert.are.equal("open", br:state())
    assert.are.same({ "closed>open" }, changes)
  end)

  it("stays closed below the ratio", function()
    local br = make { failure_ratio = 0.5, min_throughput = 10 }
    for _ = 1, 6 do succeed(br) end
    for _ = 1, 5 do fail(br) end -- 5 / 11
    assert.are.equal("closed", br:state())
    fail(br)                     -- 6 / 12
    assert.are.equal("open", br:state())
  end)

  it("counts only the rolling window", function()
    local br, clock = make { failure_ratio = 0.5, min_throughput = 10, window = 10,
      buckets = 10 }
    for _ = 1, 5 do fail(br) end
    clock:advance(5)
    local c = br:counts()
    assert.are.same({ 5, 5 }, { c.window_requests, c.window_failures })
    clock:advance(5.5) -- the first bucket has left the window
    c = br:counts()
    assert.are.same({ 0, 0 }, { c.window_requests, c.window_failures })
    for _ = 1, 5 do fail(br) end
    assert.are.equal("closed", br:state(), "counted failures older than the window")
    clock:advance(3)
    for _ = 1, 5 do fail(br) end
    assert.are.equal("open", br:state())
  end)

  it("half-open and closing work as in consecutive mode, with a fresh window", function()
    local br, clock = make { failure_ratio = 0.5, min_throughput = 2, cooldown = 1 }
    fail(br); fail(br)
    assert.are.equal("open", br:state())
    clock:advance(1)
    assert.is_true(succeed(br))
    assert.are.equal("closed", br:state())
    assert.are.equal(0, br:counts().window_requests)
    fail(br)
    assert.are.equal("closed", br:state(), "one failure in a fresh window")
  end)
end)

describe("context.breaker state store", function()
  it("breaker_store: get/set/add/incr/delete with ttls on its clock", function()
    local t = 0
    local st = context.breaker_store(function() return t end)
    assert.is_nil(st:get("a"))
    assert.is_true(st:add("a", 1, 5))
    assert.is_false((st:add("a", 2)))
    assert.are.equal(1, st:get("a"))
    t = 5
    assert.is_nil(st:get("a"), "expired")
    assert.is_true(st:add("a", 3))
    assert.are.equal(4, st:incr("a", 1, 0))
    assert.are.equal(10, st:incr("b", 10, 0))
    assert.is_nil((st:incr("c", 1)))
    st:set("s", "open")
    assert.are.equal("open", st:get("s"))
    st:delete("s")
    assert.is_nil(st:get("s"))
  end)

  it("breakers with one store and one name share their state", function()
    local t = 0
    local clock = function() return t end
    local store = context.breaker_store(clock)
    local a = context.breaker { store = store, name = "db", threshold = 2, clock = clock }
    local b = context.breaker { store = store, name = "db", threshold = 2, clock = clock }
    local other = context.breaker { store = store, name = "cache", threshold = 2, clock = clock }
    fail(a); fail(b)
    assert.are.equal("open", a:state())
    assert.are.equal("open", b:state())
    assert.are.equal("closed", other:state())
  end)

  it("uses only the documented methods of a custom store", function()
    local t = 0
    local inner = context.breaker_store(function() return t end)
    local used = {}
    local store = {}
    for _, m in ipairs({ "get", "set", "add", "incr", "delete" }) do
      store[m] = function(_, ...)
        used[m] = true
        return inner[m](inner, ...)
      end
    end
    local br = context.breaker { store = store, threshold = 1, cooldown = 1,
      clock = function() return t end }
    fail(br)
    t = 1.5
    assert.are.equal("half_open", br:state())
    succeed(br)
    assert.are.equal("closed", br:state())
    assert.are.same({ get = true, set = true, add = true, incr = true, delete = true }, used)
    for k, v in pairs(inner.data) do
      assert.are.equal("breaker:", k:sub(1, 8), "key outside the name's prefix")
      assert.is_true(type(v) == "number" or type(v) == "string", "value of " .. k)
    end
  end)

  it("rejects a store without the interface", function()
    h.argerr(1, "breaker", function() context.breaker { store = { get = print } } end)
  end)
end)

describe("context.breaker_open", function()
  it("prints and concatenates as its message", function()
    local bo = context.breaker_open
    assert.are.equal("circuit breaker is open", tostring(bo))
    assert.are.equal("call failed: circuit breaker is open", "call failed: " .. bo)
    assert.are.equal("circuit breaker is open (2)", bo .. " (" .. 2 .. ")")
  end)
end)

describe("context.breaker arguments", function()
  it("names bad arguments and options", function()
    h.argerr(1, "breaker", function() context.breaker(5) end)
    h.argerr(1, "breaker", function() context.breaker { threshold = 0 } end)
    h.argerr(1, "breaker", function() context.breaker { threshold = 1.5 } end)
    h.argerr(1, "breaker", function() context.breaker { cooldown = -1 } end)
    h.argerr(1, "breaker", function() context.breaker { cooldown = 0 / 0 } end)
    h.argerr(1, "breaker", function() context.breaker { half_open_max = 0 } end)
    h.argerr(1, "breaker", function() context.breaker { mode = "percent" } end)
    h.argerr(1, "breaker", function() context.breaker { failure_ratio = 1.5 } end)
    h.argerr(1, "breaker", function() context.breaker { failure_ratio = 0 } end)
    h.argerr(1, "breaker", function() context.breaker { is_failure = 1 } end)
    h.argerr(1, "breaker", function() context.breaker { on_state_change = "x" } end)
    h.argerr(1, "breaker", function() context.breaker { clock = 0 } end)
    h.argerr(1, "breaker", function() context.breaker { name = 1 } end)
    h.argerr(1, "breaker", function() context.breaker { timeout = 0 } end)
    local br = context.breaker()
    h.argerr(1, "call", function() br:call(nil, print) end)
    h.argerr(2, "call", function() br:call(bg, nil) end)
    local ok, msg = pcall(br.call, {}, bg, print)
    assert.is_false(ok)
    assert.is_truthy(msg:find("bad self", 1, true), msg)
    h.argerr(1, "breaker_store", function() context.breaker_store(5) end)
  end)
end)
