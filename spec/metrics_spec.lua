-- metrics_spec.lua — context.metrics(), metrics_text(), operations, leak tracking.
-- Runs unchanged on lcontext.ngx (spec/ngx/shared.sh): the same names and
-- figures there (plus its ngx_* ones); B.run() drains where context.run()
-- is not available.
local context = require "lcontext"
local B = require "spec.backend"
local bg = context.background()

local function delta(f)
  local a = context.metrics()
  f()
  local b = context.metrics()
  local d = {}
  for k, v in pairs(b) do
    if type(v) == "number" then d[k] = v - a[k] end
  end
  return d, b
end

describe("context.metrics", function()
  it("counts contexts made and how they ended, own or inherited", function()
    local d = delta(function()
      local a, ca = bg:with_cancel()
      local b = a:with_cancel()            -- inherits a's cancel
      local t = a:with_timeout(0)          -- already expired: its own deadline
      local u = t:with_cancel()            -- inherits t's
      ca()
      local _ = b, u
    end)
    assert.are.equal(4, d.created)
    assert.are.equal(1, d.canceled_own)
    assert.are.equal(1, d.canceled_inherited)
    assert.are.equal(1, d.deadline_exceeded_own)
    assert.are.equal(1, d.deadline_exceeded_inherited)
    assert.are.equal(2, d.canceled)
    assert.are.equal(2, d.deadline_exceeded)
  end)

  it("counts active contexts, the deepest chain, and value contexts do not count", function()
    local keep = {}
    local d, m = delta(function()
      local c = bg
      for i = 1, 30 do c = c:with_value("k", i) end
      keep[1], keep[2] = c:with_cancel()
    end)
    assert.are.equal(1, d.created)
    assert.are.equal(1, d.active)
    assert.is_true(m.depth_max >= 31)
    keep[2]()
    assert.are.equal(m.active - 1, context.metrics().active)
  end)

  it("counts timers fired, waiting tasks and pending callbacks", function()
    local ctx = context.with_timeout(bg, 0.2)
    local stop = context.after_func(ctx, function() end)
    local t = context.go(function() ctx:done() end)
    context.sleep(bg, 0.01) -- the task starts and waits meanwhile
    local m = context.metrics()
    assert.are.equal(1, m.tasks_waiting)
    assert.is_true(m.callbacks_pending >= 1)
    assert.are.equal(1, m.timers_pending)
    local fired = m.timers_fired
    t:wait()
    B.run() -- the callback runs
    m = context.metrics()
    assert.are.equal(fired + 1, m.timers_fired)
    assert.are.equal(0, m.tasks_waiting)
    assert.are.equal(0, m.timers_pending)
    assert.is_false(stop())
  end)

  it("has the same figures on every backend; idle, no task and no wait", function()
    B.run()
    B.idle("before the figures")
    local m = context.metrics()
    for _, k in ipairs { "created", "active", "canceled", "canceled_own", "canceled_inherited",
        "deadline_exceeded", "deadline_exceeded_own", "deadline_exceeded_inherited",
        "depth_max", "collected_uncanceled", "timers_fired", "timers_pending", "tasks",
        "tasks_waiting", "tasks_resumed", "callbacks_pending", "fd_waits",
        "signal_contexts" } do
      assert.are.equal("number", type(m[k]), k)
    end
    assert.are.equal("boolean", type(m.histograms))
    assert.are.equal("boolean", type(m.tracking))
    assert.are.equal("table", type(m.lifetime))
    assert.are.equal("table", type(m.lateness))
    assert.are.equal(0, m.tasks)
    assert.are.equal(0, m.tasks_waiting)
    assert.are.equal(0, m.fd_waits)
    assert.are.equal(0, m.signal_contexts)
    local text = context.metrics_text()
    for _, name in ipairs { "lcontext_contexts_created_total", "lcontext_contexts_active",
        "lcontext_contexts_done_total", "lcontext_contexts_collected_uncanceled_total",
        "lcontext_context_depth_max", "lcontext_timers_fired_total", "lcontext_timers_pending",
        "lcontext_tasks", "lcontext_tasks_waiting", "lcontext_tasks_resumed_total",
        "lcontext_callbacks_pending", "lcontext_deadline_lateness_seconds",
        "lcontext_context_lifetime_seconds", "lcontext_groups_total",
        "lcontext_group_tasks_total", "lcontext_retry_calls_total" } do
      assert.is_truthy(text:find("# TYPE " .. name .. " ", 1, true), name)
    end
    assert.matches("\nlcontext_tasks 0\n", text)
    assert.matches("\nlcontext_tasks_waiting 0\n", text)
  end)

  it("records lifetimes only while histograms are on, and deadline lateness", function()
    local was = context.debug.histograms(false)
    local n0 = context.metrics().lifetime.count
    local _, c1 = bg:with_cancel(); c1()
    assert.are.equal(n0, context.metrics().lifetime.count)
    context.debug.histograms(true)
    local _, c2 = bg:with_cancel(); c2()
    assert.are.equal(n0 + 1, context.metrics().lifetime.count)
    context.debug.histograms(was)
    local l0 = context.metrics().lateness.count
    -- (long enough to be fired by the wheel, not noticed late by done())
    context.with_timeout(bg, 0.1):done()
    local h = context.metrics().lateness
    assert.are.equal(l0 + 1, h.count)
    assert.are.equal(#h.bounds + 1, #h.counts)
  end)
end)

describe("context.metrics_text", function()
  it("is Prometheus text with HELP and TYPE for every family", function()
    local text = context.metrics_text()
    local typed = {}
    for name, typ in text:gmatch("# TYPE (%S+) (%S+)") do typed[name] = typ end
    assert.are.equal("counter", typed.lcontext_contexts_created_total)
    assert.are.equal("gauge", typed.lcontext_contexts_active)
    assert.are.equal("histogram", typed.lcontext_deadline_lateness_seconds)
    for name in pairs(typed) do
      assert.is_truthy(text:find("# HELP " .. name .. " ", 1, true), name)
    end
    assert.matches('lcontext_contexts_done_total{origin="own",reason="canceled"} %d+', text)
    assert.matches('lcontext_deadline_lateness_seconds_bucket{le="%+Inf"} %d+', text)
  end)

  it("passes promtool check metrics #promtool", function()
    if not os.execute("command -v promtool >/dev/null 2>&1") then
      pending("promtool is not installed (Debian package prometheus)")
      return
    end
    context.operation("spec.op"):start(bg, 1)
    context.metrics_source("spec", function()
      return { { name = "spec_things_total", help = "Things.", type = "counter",
        samples = { { labels = { kind = 'a "quoted"\nvalue' }, value = 3 } } } }
    end)
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(context.metrics_text())
    f:close()
    local p = io.popen("promtool check metrics < " .. tmp .. " 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    os.remove(tmp)
    context.metrics_source("spec", nil)
    assert.matches("rc=0", out)
  end)
end)

describe("the helpers' figures", function()
  it("group, retry and breaker show up in metrics_text", function()
    local text0 = context.metrics_text()
    local function val(text, pat)
      return tonumber(text:match(pat .. " (%d+)")) or 0
    end
    local g = context.group(bg)
    g:go(function() return nil, "boom" end)
    g:wait()
    context.retry(bg, function() return nil, "flaky" end, { attempts = 2, base = 0.001, jitter = "none" })
    local br = context.breaker({ name = "spec-db", threshold = 1 })
    br:call(bg, function() return nil, "down" end)
    local text = context.metrics_text()
    assert.are.equal(val(text0, 'lcontext_group_tasks_total{outcome="failed"}') + 1,
      val(text, 'lcontext_group_tasks_total{outcome="failed"}'))
    assert.are.equal(val(text0, 'lcontext_retry_gave_up_total{reason="exhausted"}') + 1,
      val(text, 'lcontext_retry_gave_up_total{reason="exhausted"}'))
    assert.are.equal(val(text0, "lcontext_retry_attempts_total") + 2,
      val(text, "lcontext_retry_attempts_total"))
    assert.matches('lcontext_breaker_state{breaker="spec%-db",state="open"} 1', text)
  end)
end)

describe("context.operation", function()
  it("tells finished, timed out, canceled, close calls and generous budgets", function()
    local op = context.operation("spec.outcomes")
    assert.are.equal(op, context.operation("spec.outcomes"))
    local _, done = op:start(bg, 10); done()                  -- generous
    local c2, done2 = op:start(bg, 0.005); c2:done(); done2() -- timed out
    local parent, cancel = bg:with_cancel()
    local _, done3 = op:start(parent, 10); cancel(); done3()   -- canceled
    local fake = 0
    op.clock = function() return fake end      -- an injected clock
    local c4, done4 = op:start(bg, 10)
    fake = 9.7                                  -- 97% of the budget used
    done4()
    op.clock = nil
    local n = op:counts()
    assert.are.equal(1, n.timed_out)
    assert.are.equal(1, n.canceled)
    assert.are.equal(2, n.finished)
    assert.are.equal(1, n.generous)
    assert.are.equal(1, n.close_calls)
    assert.is_truthy(c4:err()) -- done() cancels
    assert.has_error(function() context.operation("") end)
  end)
end)

describe("context.debug", function()
  after_each(function() context.debug.track(false) end)

  it("lists live contexts with their creation site, age, kind and deadline", function()
    context.debug.track(true)
    local keep = {}
    local function make_the_leak()
      keep[1] = context.with_timeout(bg, 60)
    end
    make_the_leak()
    local _, cancel = bg:with_cancel()
    cancel()
    local found
    for _, l in ipairs(context.debug.leaks(0)) do
      if l.ctx == keep[1] then found = l end
    end
    assert.is_truthy(found)
    assert.matches("make_the_leak", found.site)
    assert.are.equal("timer", found.kind)
    assert.is_true(found.age >= 0)
    assert.is_truthy(found.deadline)
    assert.are.equal(0, #context.debug.leaks(3600))
    assert.has_error(function() context.debug.leaks("x") end)
  end)

  it("counts contexts collected without a cancel while tracking", function()
    context.debug.track(true)
    local before = context.metrics().collected_uncanceled
    for _ = 1, 10 do context.with_cancel(bg) end
    local _, c = bg:with_cancel(); c()
    collectgarbage(); collectgarbage()
    assert.is_true(context.metrics().collected_uncanceled >= before + 10)
  end)
end)
