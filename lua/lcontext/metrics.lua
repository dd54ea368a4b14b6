--- lcontext.metrics: Prometheus exposition, per-operation timeout
-- monitoring, and leak tracking (context.debug), on top of the figures the
-- C core keeps (context.metrics()).
return function(context)
  local core = require "lcontext.core"
  local now = context.now
  local fmt, concat, sort = string.format, table.concat, table.sort
  local mtype = math.type -- compat: nil before 5.3, where "%.17g" writes integral values exactly

  local M = {}

  -- {==== sources: figures other modules add to metrics_text ==========

  local sources = {}

  --- context.metrics_source(name, fn): fn() returns a list of metric
  -- families { name =, help =, type = "counter"|"gauge", samples =
  -- { {labels = {k = v}, value = n}, ... } } added to metrics_text().
  function M.metrics_source(name, fn)
    if type(name) ~= "string" then
      error(("bad argument #1 to 'metrics_source' (string expected, got %s)"):format(type(name)), 2)
    end
    if fn ~= nil and type(fn) ~= "function" then
      error(("bad argument #2 to 'metrics_source' (function or nil expected, got %s)"):format(type(fn)), 2)
    end
    sources[name] = fn
  end

  -- ====}

  -- {==== operations: per-operation timeout tracking, as metrics ======

  local operations = {}

  local Op = {}
  Op.__index = Op

  --- op:start(parent, seconds) -> ctx, done. done() records how the
  -- operation ended, and cancels ctx. Outcomes: "finished" (done before
  -- the context ended), "timed_out" (it ended by a deadline), "canceled".
  -- A finished operation that used more than 95% of its budget is a close
  -- call; one that used less than half is counted as generous.
  function Op:start(parent, seconds)
    local ctx, cancel = context.with_timeout(parent, seconds)
    local clock = self.clock or now -- op.clock: an injectable clock (tests)
    local t0 = clock()
    local budget = ctx:remaining() or seconds
    local recorded = false
    local function done()
      if recorded then return end
      recorded = true
      local err = ctx:err()
      local used = clock() - t0
      if err == context.deadline_exceeded then
        self.timed_out = self.timed_out + 1
      elseif err == context.canceled then
        self.canceled = self.canceled + 1
      else
        self.finished = self.finished + 1
        if budget > 0 and used >= 0.95 * budget then self.close_calls = self.close_calls + 1 end
        if budget > 0 and used < 0.5 * budget then self.generous = self.generous + 1 end
      end
      self.seconds = self.seconds + used
      cancel()
    end
    return ctx, done
  end

  function Op:counts()
    return {
      finished = self.finished, timed_out = self.timed_out, canceled = self.canceled,
      close_calls = self.close_calls, generous = self.generous, seconds = self.seconds,
    }
  end

  --- context.operation(name) -> the tracker of that operation (one per name)
  function M.operation(name)
    if type(name) ~= "string" or name == "" then
      error(("bad argument #1 to 'operation' (non-empty string expected, got %s)"):format(
        type(name) == "string" and "empty string" or type(name)), 2)
    end
    local op = operations[name]
    if not op then
      op = setmetatable({ name = name, finished = 0, timed_out = 0, canceled = 0,
        close_calls = 0, generous = 0, seconds = 0 }, Op)
      operations[name] = op
    end
    return op
  end

  -- ====}

  -- {==== Prometheus text exposition ===================================

  local function esc(v)
    return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
  end

  local function num(v)
    if v == math.huge then return "+Inf" end
    if mtype and mtype(v) == "integer" then return tostring(v) end
    return fmt("%.17g", v)
  end

  local function labels(l)
    if not l or next(l) == nil then return "" end
    local keys = {}
    for k in pairs(l) do keys[#keys + 1] = k end
    sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = fmt('%s="%s"', k, esc(l[k])) end
    return "{" .. concat(parts, ",") .. "}"
  end

  local function family(out, name, help, typ, samples)
    out[#out + 1] = fmt("# HELP %s %s", name, help)
    out[#out + 1] = fmt("# TYPE %s %s", name, typ)
    for _, s in ipairs(samples) do
      out[#out + 1] = fmt("%s%s %s", s.name or name, labels(s.labels), num(s.value))
    end
  end

  local function histogram(out, name, help, h)
    local samples, cum = {}, 0
    for i, b in ipairs(h.bounds) do
      cum = cum + h.counts[i]
      samples[#samples + 1] = { name = name .. "_bucket", labels = { le = num(b) }, value = cum }
    end
    cum = cum + h.counts[#h.bounds + 1]
    samples[#samples + 1] = { name = name .. "_bucket", labels = { le = "+Inf" }, value = cum }
    samples[#samples + 1] = { name = name .. "_sum", value = h.sum }
    samples[#samples + 1] = { name = name .. "_count", value = h.count }
    family(out, name, help, "histogram", samples)
  end

  --- context.metrics_text() -> the metrics in Prometheus text format
  function M.metrics_text()
    local m = context.metrics()
    local out = {}
    family(out, "lcontext_contexts_created_total",
      "Cancellable contexts made (with_cancel, with_timeout, with_deadline, merge).",
      "counter", { { value = m.created } })
    family(out, "lcontext_contexts_active",
      "Cancellable contexts made and not yet done or collected.",
      "gauge", { { value = m.active } })
    family(out, "lcontext_contexts_done_total",
      "Contexts done, by reason, and by whether their own cancel or timer ended them or they inherited it.",
      "counter", {
        { labels = { reason = "canceled", origin = "own" }, value = m.canceled_own },
        { labels = { reason = "canceled", origin = "inherited" }, value = m.canceled_inherited },
        { labels = { reason = "deadline_exceeded", origin = "own" }, value = m.deadline_exceeded_own },
        { labels = { reason = "deadline_exceeded", origin = "inherited" }, value = m.deadline_exceeded_inherited },
      })
    family(out, "lcontext_contexts_collected_uncanceled_total",
      "Contexts reclaimed by the garbage collector without ever being cancelled (all of them while tracking is on; those linked below a parent otherwise).",
      "counter", { { value = m.collected_uncanceled } })
    family(out, "lcontext_context_depth_max",
      "The deepest context chain made so far.", "gauge", { { value = m.depth_max } })
    family(out, "lcontext_timers_pending",
      "Deadlines and sleeps in the timer wheel (only those something waits on).",
      "gauge", { { value = m.timers_pending } })
    family(out, "lcontext_timers_fired_total",
      "Deadlines fired by the timer wheel.", "counter", { { value = m.timers_fired } })
    family(out, "lcontext_tasks", "Tasks not yet finished.", "gauge", { { value = m.tasks } })
    family(out, "lcontext_tasks_waiting", "Tasks suspended in a wait.", "gauge",
      { { value = m.tasks_waiting } })
    family(out, "lcontext_tasks_resumed_total", "Task resumptions by the loop.", "counter",
      { { value = m.tasks_resumed } })
    family(out, "lcontext_callbacks_pending", "after_func callbacks not yet run or stopped.",
      "gauge", { { value = m.callbacks_pending } })
    histogram(out, "lcontext_context_lifetime_seconds",
      "How long contexts ran, from made to done (recorded while histograms are on).",
      m.lifetime)
    histogram(out, "lcontext_deadline_lateness_seconds",
      "How late the timer wheel fired deadlines.", m.lateness)

    local names = {}
    for name in pairs(operations) do names[#names + 1] = name end
    sort(names)
    if #names > 0 then
      local outcomes, close, generous, secs = {}, {}, {}, {}
      for _, name in ipairs(names) do
        local op = operations[name]
        for _, o in ipairs({ "finished", "timed_out", "canceled" }) do
          outcomes[#outcomes + 1] = { labels = { operation = name, outcome = o }, value = op[o] }
        end
        close[#close + 1] = { labels = { operation = name }, value = op.close_calls }
        generous[#generous + 1] = { labels = { operation = name }, value = op.generous }
        secs[#secs + 1] = { labels = { operation = name }, value = op.seconds }
      end
      family(out, "lcontext_operations_total", "Tracked operations, by how they ended.",
        "counter", outcomes)
      family(out, "lcontext_operation_close_calls_total",
        "Operations that finished after using more than 95% of their budget.", "counter", close)
      family(out, "lcontext_operation_generous_total",
        "Operations that finished using less than half of their budget.", "counter", generous)
      family(out, "lcontext_operation_seconds_total", "Time spent in tracked operations.",
        "counter", secs)
    end

    -- the helpers' own figures (group, retry, breaker)
    for _, h in ipairs({ "_metrics_group", "_metrics_retry", "_metrics_breaker" }) do
      local f = rawget(context, h)
      if f then
        for _, fam in ipairs(f()) do family(out, fam.name, fam.help, fam.type, fam.samples) end
      end
    end

    local snames = {}
    for name in pairs(sources) do snames[#snames + 1] = name end
    sort(snames)
    for _, sname in ipairs(snames) do
      local ok, fams = pcall(sources[sname])
      if ok and type(fams) == "table" then
        for _, f in ipairs(fams) do family(out, f.name, f.help, f.type, f.samples) end
      end
    end
    out[#out + 1] = ""
    return concat(out, "\n")
  end

  -- ====}

  -- {==== leak tracking ================================================

  local debug_ = {}

  --- context.debug.track([on]) -> was it on. While on, lcontext remembers
  -- where each cancellable context is made (a traceback) and counts those
  -- collected without ever being cancelled.
  debug_.track = function(on) return core._track(on) end

  --- context.debug.histograms([on]) -> were they on. Lifetime histograms
  -- cost one clock read per context.
  debug_.histograms = function(on) return core._histograms(on) end

  --- context.debug.leaks([min_age]) -> list of { ctx, site, age, kind,
  -- deadline } for tracked contexts still running and older than min_age
  -- seconds (default 0), oldest first.
  debug_.leaks = function(min_age)
    if min_age ~= nil and (type(min_age) ~= "number" or min_age ~= min_age) then
      error(("bad argument #1 to 'leaks' (number expected, got %s)"):format(type(min_age)), 2)
    end
    min_age = min_age or 0
    local t = now()
    local list = {}
    for ctx, rec in pairs(core._tracked()) do
      local age = t - rec.created
      if not ctx:is_done() and age >= min_age then
        list[#list + 1] = { ctx = ctx, site = rec.site, age = age,
          kind = (core._kind(ctx)), deadline = ctx:deadline() }
      end
    end
    sort(list, function(a, b) return a.age > b.age end)
    return list
  end

  M.debug = debug_

  -- ====}

  return M
end
